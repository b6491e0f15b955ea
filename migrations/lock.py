"""The state folder's lock: one process runs a plan at a time, and `status` can tell that one is running."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csr_vdb.errors import MigrationError

LOCK_FILE = "run.lock"


@contextmanager
def plan_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the plan's state folder so two workers never run one plan.

    Raises:
        MigrationError: another process holds the lock.
    """
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise MigrationError(f"another process is running this migration (lock {path})") from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock


def is_locked(folder: Path) -> bool:
    """True while a migration process holds the plan's lock (read-only probe)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
