"""Optional native CPU kernels, compiled on first use: `csr_vdb.index.SparseIndex`'s exact sparse
top-k (`topk`), the row-wise top-K selection of TopK training (`row_topk`) and the matching
pursuit of ``doc_codes="pursuit"`` (`pursuit`).

``_topk.c`` (plain C99, next to this file) is compiled with the system C compiler (``$CC`` or
``cc``) into a cache folder and loaded with ctypes. Nothing is downloaded and no Python or torch
headers are needed. When there is no compiler, the build fails, or ``CSR_VDB_NATIVE=0`` is set,
`load` returns None and callers use their pure-torch path (`SparseIndex`: same results; training:
``torch.topk``, same selection up to the order of tied values; pursuit: the same steps in torch,
equal up to float rounding).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

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
                lib.csr_row_topk.restype = ctypes.c_int
                lib.csr_row_topk.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                             ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
                lib.csr_pursuit.restype = ctypes.c_int
                lib.csr_pursuit.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
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


#: Rows per worker thread below which `row_topk` / `pursuit` use fewer threads (a hand-off costs more).
_MIN_ROWS_PER_THREAD = 128
_pool: ThreadPoolExecutor | None = None


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:  # noqa: SLF001 - sized once, grown rarely
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csr-vdb-topk")
        return _pool


def _split_rows(n: int, threads: int | None) -> list[int]:
    workers = max(1, min(threads or torch.get_num_threads(), n // _MIN_ROWS_PER_THREAD))
    return [n * i // workers for i in range(workers + 1)]


def _run_parts(fn, bounds: list[int]) -> list[int]:
    parts = range(len(bounds) - 1)
    return [fn(0)] if len(bounds) == 2 else list(_executor(len(bounds) - 1).map(fn, parts))


def row_topk(lib: ctypes.CDLL, x: torch.Tensor, K: int, k: int, threads: int | None = None) -> torch.Tensor:
    """Positions of each row's ``K`` largest entries, the ``k`` largest first (see ``_topk.c``).

    Args:
        lib: from `load`.
        x: ``[n, h]`` float32 CPU tensor (finite values).
        K: entries kept per row, ``k <= K <= h``.
        k: leading slots holding the ``k`` largest in descending order (ties: smaller position
            first); slots ``k..K-1`` hold the next ones in no particular order.
        threads: worker threads (default ``torch.get_num_threads()``); rows are split evenly.

    Returns:
        ``[n, K]`` int64 tensor.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2:
        raise ValueError("row_topk needs a 2-D float32 CPU tensor")
    x = x.contiguous()
    n, h = x.shape
    if not 1 <= k <= K <= h:
        raise ValueError(f"row_topk needs 1 <= k <= K <= h, got k={k}, K={K}, h={h}")
    out = torch.empty(n, K, dtype=torch.int64)
    bounds = _split_rows(n, threads)

    def part(i: int) -> int:
        a, b = bounds[i], bounds[i + 1]
        return lib.csr_row_topk(b - a, h, x.data_ptr() + a * h * 4, K, k, out.data_ptr() + a * K * 8)

    if any(_run_parts(part, bounds)):
        raise MemoryError("native row top-k could not allocate its buffers")
    return out


def pursuit(
    lib: ctypes.CDLL,
    c0: torch.Tensor,
    cand: torch.Tensor,
    gram: torch.Tensor,
    k: int,
    step_sweeps: int,
    final_sweeps: int,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative matching pursuit of ``csr_vdb.pursuit`` in C (see ``_topk.c``).

    Args:
        lib: from `load`.
        c0: ``[n, C]`` float32 correlations of each row's target with its candidate atoms.
        cand: ``[n, C]`` int64 candidate atom ids.
        gram: ``[h, h]`` float32 Gram matrix of the atoms.
        k: atoms per code (``<= C``).
        step_sweeps / final_sweeps: coordinate-descent sweeps after each step / at the end.
        threads: worker threads (default ``torch.get_num_threads()``).

    Returns:
        ``(indices [n, k] int64, values [n, k] float32 >= 0)``.
    """
    c0 = c0.to(torch.float32).contiguous()
    cand = cand.to(torch.int64).contiguous()
    gram = gram.to(torch.float32).contiguous()
    n, C = c0.shape
    h = gram.shape[0]
    if not 1 <= k <= C or cand.shape != c0.shape or gram.shape != (h, h):
        raise ValueError(f"pursuit needs 1 <= k <= C and matching shapes, got k={k}, c0 {tuple(c0.shape)}")
    idx = torch.empty(n, k, dtype=torch.int64)
    val = torch.empty(n, k, dtype=torch.float32)
    bounds = _split_rows(n, threads)

    def part(i: int) -> int:
        a, b = bounds[i], bounds[i + 1]
        return lib.csr_pursuit(
            b - a, C, c0.data_ptr() + a * C * 4, cand.data_ptr() + a * C * 8, h, gram.data_ptr(),
            k, int(step_sweeps), int(final_sweeps), idx.data_ptr() + a * k * 8, val.data_ptr() + a * k * 4,
        )

    if n and any(_run_parts(part, bounds)):
        raise MemoryError("native pursuit could not allocate its buffers")
    return idx, val
