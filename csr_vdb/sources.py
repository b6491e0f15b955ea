"""Embedding sources the trainer reads (arrays, ``.npy`` memmaps, re-creatable streams) and row bookkeeping.

A source is re-iterable: the trainer reads it once per epoch (plus a first pass for ``b_pre``).
Sources validate rows as they read them, so a bad row is named before it reaches the model.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from csr_vdb.errors import DataError, describe_rows
from csr_vdb.validation import invalid_dense_rows

Batch = np.ndarray | torch.Tensor | tuple[np.ndarray, np.ndarray]
"""What a source yields: ``[m, dim]`` vectors, or ``(vectors, labels [m])``."""

FINGERPRINT_ROWS = 1024
"""Rows (in source order) hashed into the data fingerprint."""


@runtime_checkable
class EmbeddingSource(Protocol):
    """A re-iterable stream of dense embeddings, read once per epoch.

    Attributes:
        dim: embedding dimension.
        n_rows: number of rows, or None when unknown (a database stream).

    ``batches`` yields ``[m, dim]`` float arrays (numpy or torch), or ``(vectors, labels)`` tuples
    when the source carries labels (``positives="labels"``). Batches may be smaller than
    ``batch_size`` (the last one). Sources validate rows as they read them and raise `DataError`
    naming the offending rows.
    """

    dim: int
    n_rows: int | None

    def batches(self, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> Iterator[Batch]: ...


def check_rows(x: np.ndarray, offset: np.ndarray | int, what: str) -> None:
    """Raise DataError naming source rows (``offset`` + position, or explicit row numbers)."""
    problems = invalid_dense_rows(x)
    if not problems:
        return
    reason, rows = next(iter(problems.items()))
    if isinstance(offset, np.ndarray):
        names = [int(offset[r]) for r in rows]
    else:
        names = [int(offset) + r for r in rows]
    raise DataError(f"{what} contain {reason} at rows {describe_rows(names)}", names)


class ArraySource:
    """An in-memory ``[n, dim]`` array (optionally with ``[n]`` labels), reshuffled every epoch.

    Args:
        x: ``[n, dim]`` float16/32/64 numpy array or tensor (kept as given; batches are cast to float32).
        labels: ``[n]`` integer labels for ``positives="labels"``.

    Raises:
        DataError: empty input, not 2-D, NaN/inf or all-zero rows (named), labels of another length.
    """

    def __init__(self, x: np.ndarray | torch.Tensor, labels: np.ndarray | None = None) -> None:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DataError(f"training vectors must be a non-empty 2-D array, got shape {arr.shape}")
        for start in range(0, arr.shape[0], 65536):
            check_rows(np.asarray(arr[start : start + 65536], dtype=np.float32), start, "training vectors")
        self._x = arr
        self._labels = None
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != (arr.shape[0],):
                raise DataError(f"labels must have shape ({arr.shape[0]},), got {lab.shape}")
            self._labels = lab.astype(np.int64)
        self.dim = int(arr.shape[1])
        self.n_rows: int | None = int(arr.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> Iterator[Batch]:
        n = self._x.shape[0]
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else None
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            xb = np.asarray(self._x[sel], dtype=np.float32)
            yield (xb, self._labels[sel]) if self._labels is not None else xb


class NpySource:
    """A ``.npy`` file ``[n, dim]`` (float16/32/64) streamed through a read-only memmap.

    The file is never loaded whole: each epoch reads contiguous blocks of ``block_rows`` rows in a
    random order, ``buffer_blocks`` at a time, shuffles the rows inside that buffer, and tells the
    kernel it may drop the pages already read (so the resident set stays at the buffer size even for
    a file larger than RAM).

    Args:
        path: the ``.npy`` file.
        block_rows: rows per contiguous read.
        buffer_blocks: blocks mixed together before batches are cut.

    Raises:
        DataError: missing/unreadable file, not a 2-D float array; bad rows while streaming.
    """

    def __init__(self, path: str | Path, block_rows: int = 8192, buffer_blocks: int = 8) -> None:
        self.path = Path(path)
        try:
            arr = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read embeddings file {self.path}: {exc}") from exc
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.dtype.kind != "f":
            raise DataError(f"{self.path} must hold a non-empty 2-D float array, got {arr.dtype} {arr.shape}")
        self._arr = arr
        self.dim = int(arr.shape[1])
        self.n_rows: int | None = int(arr.shape[0])
        self.block_rows = max(1, int(block_rows))
        self.buffer_blocks = max(1, int(buffer_blocks))

    def _release(self, start: int, stop: int) -> None:
        """Drop the mapped pages of rows [start, stop) from this process's resident set."""
        mm = getattr(self._arr, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        row_bytes = self._arr.dtype.itemsize * self.dim
        base = self._arr.offset
        lo = (base + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = base + stop * row_bytes
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # pragma: no cover - best effort only
            pass

    def _read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        """Copy rows [start, stop) into ``out`` (float32), validate them, release their pages."""
        np.copyto(out, self._arr[start:stop], casting="unsafe")
        self._release(start, stop)
        check_rows(out, start, f"embeddings in {self.path.name}")

    def batches(self, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> Iterator[Batch]:
        n = self._arr.shape[0]
        starts = np.arange(0, n, self.block_rows)
        rng = np.random.default_rng([seed, epoch])
        if shuffle:
            starts = rng.permutation(starts)
        per = self.buffer_blocks if shuffle else 1
        # one float32 buffer reused for the whole epoch: per-block temporaries fragment the heap of a
        # long run, and the resident set then grows with every refill
        buf = np.empty((per * self.block_rows + batch_size, self.dim), np.float32)
        held = 0
        for g in range(0, len(starts), per):
            for s in starts[g : g + per]:
                s = int(s)
                e = min(s + self.block_rows, n)
                self._read_into(buf[held : held + e - s], s, e)
                held += e - s
            order = rng.permutation(held) if shuffle else np.arange(held)
            full = held // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield buf[order[start : start + batch_size]]  # fancy indexing: a fresh array
            rest = order[full:]
            buf[: rest.size] = buf[rest]
            held = rest.size
        if held:
            yield buf[:held].copy()


class IteratorSource:
    """A stream re-created every epoch by ``factory()`` (e.g. pages read from a database).

    Incoming arrays of any size are re-cut into batches; with ``shuffle`` rows are mixed inside a
    buffer of ``shuffle_buffer`` rows (an approximate shuffle that needs no random access).

    Args:
        factory: returns a fresh iterator of ``[m, dim]`` arrays.
        dim: embedding dimension.
        n_rows: total rows if known (lets the trainer plan steps and k-annealing).
        shuffle_buffer: rows mixed together when shuffling.
    """

    def __init__(
        self,
        factory: Callable[[], Iterator[np.ndarray]],
        dim: int,
        n_rows: int | None = None,
        shuffle_buffer: int = 65536,
    ) -> None:
        if dim <= 0:
            raise DataError(f"dim must be positive, got {dim}")
        self._factory = factory
        self.dim = int(dim)
        self.n_rows = n_rows
        self.shuffle_buffer = max(1, int(shuffle_buffer))

    def batches(self, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([seed, epoch])
        limit = max(self.shuffle_buffer, batch_size) if shuffle else batch_size
        parts: list[np.ndarray] = []
        held = 0
        seen = 0
        for chunk in self._factory():
            if isinstance(chunk, torch.Tensor):
                chunk = chunk.detach().cpu().numpy()
            arr = np.asarray(chunk, dtype=np.float32)
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2 or arr.shape[1] != self.dim:
                raise DataError(f"stream yielded an array of shape {arr.shape}, expected [m, {self.dim}]")
            check_rows(arr, seen, "streamed vectors")
            seen += arr.shape[0]
            parts.append(arr)
            held += arr.shape[0]
            if held >= limit:
                buf = np.concatenate(parts)
                if shuffle:
                    buf = buf[rng.permutation(buf.shape[0])]
                full = buf.shape[0] // batch_size * batch_size
                for start in range(0, full, batch_size):
                    yield buf[start : start + batch_size]
                parts, held = [buf[full:]], buf.shape[0] - full
        if held:
            buf = np.concatenate(parts)
            if shuffle:
                buf = buf[rng.permutation(buf.shape[0])]
            for start in range(0, buf.shape[0], batch_size):
                yield buf[start : start + batch_size]


# ------------------------------------------------------------------ rows
def holdout_mask(x: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``[n]`` bool: rows held out for validation, decided by the row's content (order-independent).

    A stream may be re-read in another order every epoch, so the split hashes each row's values
    (a random projection's fractional digits): the same row always lands on the same side.
    """
    if fraction <= 0:
        return np.zeros(x.shape[0], dtype=bool)
    r = np.random.default_rng([seed, 7919]).standard_normal(x.shape[1])
    u = np.modf(np.abs(x.astype(np.float64) @ r) * 1e6)[0]
    return u < fraction


def data_fingerprint(first_rows: np.ndarray, n_rows: int, dim: int) -> str:
    """sha256 of the first rows (float32 bytes, source order) + row count + dim."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(first_rows, dtype=np.float32).tobytes())
    h.update(f"|n={n_rows}|dim={dim}".encode())
    return h.hexdigest()


def split_batch(batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
    """``(vectors [m, dim] float32, labels [m] or None)`` of a batch a source yielded."""
    if isinstance(batch, tuple):
        x, y = batch
        return as_float32(x), np.asarray(y)
    return as_float32(batch), None


def as_float32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy array or tensor as a float32 numpy array (on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)
