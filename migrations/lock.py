"""The state folder's lock: one process runs a plan at a time, and `status` can tell that one is running.

The lock is an ``flock`` on ``run.lock`` in the plan's state folder, so the kernel releases it when
its process dies, even by SIGKILL: a killed run never leaves a stale lock behind. The file names
the holder (pid, command, start) so that a refusal can say who holds it. Workers on several
machines share a state folder over a network filesystem only where that filesystem honours
``flock`` (docs/scale-out.md).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import PRIVATE_FILE

LOCK_FILE = "run.lock"


def holder(folder: Path) -> str:
    """Who holds (or last held) the lock, for messages: ``pid 4242, migrate, since 2026-12-02T10:00:00+00:00``."""
    try:
        info = json.loads((folder / LOCK_FILE).read_text() or "{}")
        return f"pid {info['pid']}, {info['command']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown process"


@contextmanager
def plan_lock(folder: Path, command: str = "migrate") -> Iterator[None]:
    """Hold an exclusive lock on the plan's state folder so two workers never run one plan.

    Args:
        folder: the plan's state folder (it exists).
        command: what the holder does, shown to a process that is refused.

    Raises:
        MigrationError: another process holds the lock, or the folder cannot hold a lock file.
    """
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as exc:
        raise MigrationError(
            f"cannot create the lock {path}: {exc.strerror or exc} (make {folder} writable, then run again)"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise MigrationError(
                f"another process is running this migration ({holder(folder)}; lock {path}): wait for it to "
                "end, or see `csr-vdb status`"
            ) from exc
        try:
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": since}).encode(), 0)
        except OSError:  # the holder's name is a courtesy: a full disk must not stop the lock
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def plan_locks(folders: Sequence[Path], command: str) -> Iterator[None]:
    """Hold the locks of several state folders (the shards of a split) at once, all or none.

    Raises:
        MigrationError: one of them is held by another process.
    """
    with ExitStack() as stack:
        for folder in folders:
            stack.enter_context(plan_lock(folder, command))
        yield


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
