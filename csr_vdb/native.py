"""Optional native CPU kernel of `csr_vdb.scoring.SparseIndex`, compiled on first use.

``_topk.c`` (plain C99, next to this file) is compiled with the system C compiler (``$CC`` or
``cc``) into a cache folder and loaded with ctypes. Nothing is downloaded and no Python or torch
headers are needed. When there is no compiler, the build fails, or ``CSR_VDB_NATIVE=0`` is set,
`load` returns None and `SparseIndex` uses its pure-torch path (same results).

Cache folder: ``$CSR_VDB_CACHE_DIR/native`` or ``~/.cache/csr-vdb/native``; the library name
carries a hash of the source, the compiler and the flags, and is written atomically (a temporary
name, then a rename), so concurrent first uses and upgrades are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_topk.c")
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared")
_lock = threading.Lock()
_cache: dict[str, object] = {}


def cache_dir() -> Path:
    """Folder holding compiled kernels."""
    base = os.environ.get("CSR_VDB_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "csr-vdb"
    return root / "native"


def disabled() -> bool:
    """``CSR_VDB_NATIVE=0`` (or false/no/off) turns the native kernel off."""
    return os.environ.get("CSR_VDB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it if needed; None when unavailable (logged once at INFO)."""
    if disabled():
        return None
    with _lock:
        if "lib" in _cache:
            return _cache["lib"]  # type: ignore[return-value]
        lib = None
        cc = _compiler()
        if cc is None:
            logger.info("no C compiler found: SparseIndex uses its pure-torch CPU path")
        else:
            key = hashlib.sha256(SOURCE.read_bytes() + cc.encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
            target = cache_dir() / f"csr_topk_{key}.so"
            try:
                if not target.is_file():
                    _build(cc, target)
                lib = ctypes.CDLL(str(target))
                lib.csr_topk.restype = ctypes.c_int
                lib.csr_topk.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
            except (OSError, subprocess.SubprocessError, AttributeError) as exc:
                detail = getattr(exc, "stderr", b"") or b""
                logger.info("native kernel unavailable (%s %s): using the pure-torch CPU path",
                            exc, detail.decode(errors="replace")[:200])
                lib = None
        _cache["lib"] = lib
        return lib


def topk(
    lib: ctypes.CDLL,
    n_rows: int,
    ptr: np.ndarray,
    docs: np.ndarray,
    vals: np.ndarray,
    q_idx: np.ndarray,
    q_val: np.ndarray,
    top_k: int,
    tile_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``q`` queries over one shard's posting lists (see ``_topk.c``).

    Args:
        lib: from `load`.
        n_rows: rows of the shard.
        ptr: ``[h + 1]`` int64 posting offsets; docs: int32 rows; vals: float32 values.
        q_idx / q_val: ``[q, w]`` int64 latents and float32 values (0 = padding).
        top_k: results per query (``<= n_rows``).
        tile_rows: rows scored per cache-resident tile.

    Returns:
        ``(scores [q, top_k] float32, rows [q, top_k] int64)``, best first, ties by smaller row.
    """
    q_idx = np.ascontiguousarray(q_idx, dtype=np.int64)
    q_val = np.ascontiguousarray(q_val, dtype=np.float32)
    nq, qw = q_idx.shape
    scores = np.empty((nq, top_k), np.float32)
    rows = np.empty((nq, top_k), np.int64)
    if nq == 0:
        return scores, rows
    rc = lib.csr_topk(
        n_rows, ptr.ctypes.data, docs.ctypes.data, vals.ctypes.data, nq, qw,
        q_idx.ctypes.data, q_val.ctypes.data, top_k, tile_rows, scores.ctypes.data, rows.ctypes.data,
    )
    if rc != 0:
        raise MemoryError("native top-k kernel could not allocate its buffers")
    return scores, rows
