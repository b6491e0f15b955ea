"""`resolve_device`: the one rule that turns a device setting into a `torch.device`."""

from __future__ import annotations

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
