"""Small file helpers with no heavy imports: checksums, atomic writes, private folders, space probes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MODEL_FILES = ("model.safetensors", "config.json")
"""Files whose bytes define a saved encoder (and so its checksum)."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_checksum(model_dir: str | os.PathLike[str]) -> str:
    """One sha256 over the files of a saved encoder (weights + config), in a fixed order.

    The migration engine records it in the plan and refuses to resume with another model,
    without importing torch.
    """
    h = hashlib.sha256()
    for name in MODEL_FILES:
        p = Path(model_dir) / name
        h.update(name.encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and ``os.replace``.

    A reader (or a process killed at any point) sees the old file or the new one, never a part;
    the file is readable by its owner only (``mkstemp``'s mode 0600), and the folder is synced so
    that the rename itself survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where folders
    cannot be opened for that."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: str | os.PathLike[str], *, own: bool = True) -> Path:
    """Create ``path`` (and missing parents) readable by its owner only, and return it.

    Args:
        path: the folder.
        own: the folder is csr-vdb's own (a state folder): an existing one is made private too.
            With False an existing folder (one a user named) is left as it is.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode goes through the umask
    if own and not missing and path.is_dir() and (path.stat().st_mode & 0o777) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty if absent, readable and writable by its owner only; return it.

    SQLite gives a database's ``-wal`` / ``-shm`` / ``-journal`` files the database file's mode,
    so creating the file this way before SQLite opens it keeps all of them private.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def probe_space(folder: str | os.PathLike[str], nbytes: int) -> None:
    """Write, sync and delete ``nbytes`` in ``folder``: raises the `OSError` a full disk, a quota,
    a file-size limit or a read-only folder would raise later, before anything depends on it."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".space-probe.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            block = b"\0" * min(nbytes, 1 << 20)
            left = nbytes
            while left > 0:
                left -= f.write(block[: min(left, len(block))])
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())
