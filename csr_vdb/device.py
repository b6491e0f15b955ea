"""Where torch work runs: `resolve_device` (the one rule for a device setting) and
`single_intra_op_thread` (torch's thread pool off while the caller parallelises or the work is tiny)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from csr_vdb.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a `torch.device`: ``None`` or ``"auto"`` means CUDA when available, else CPU.

    A device that cannot be used is a setting to fix, so it fails here, before any work, with
    `ConfigError` rather than with a torch error in the middle of a run.

    Raises:
        ConfigError: an unknown device name, or a CUDA device (or index) this machine lacks.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown torch device {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"device {str(device)!r} requested but this machine has {count} CUDA device(s)")
    return dev


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def single_intra_op_thread() -> Iterator[None]:
    """Torch's intra-op threads set to 1 while any caller is inside (restored by the last one out).

    For CPU work that parallelises itself (`csr_vdb.index.SparseIndex`'s worker threads) or that is
    too small to share out (one query's encoding): the pool's threads would oversubscribe the
    cores, and keep spinning after their work, slowing the database call that follows.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)
