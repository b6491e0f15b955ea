"""`SparseVectors`: row-aligned k-sparse codes and every conversion the project needs, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from itertools import chain

import numpy as np

from csr_vdb.errors import DataError, describe_rows

# Milvus stores sparse indices as uint32 and reserves 2**32 - 1.
MAX_SPARSE_DIM = 2**32 - 1


@dataclass(frozen=True)
class SparseVectors:
    """A batch of sparse vectors stored as fixed-width rows.

    Row ``i`` is the vector ``sum_j values[i, j] * e_{indices[i, j]}``. Entries whose value is
    exactly 0 are padding and are dropped by every conversion, so rows may hold fewer than
    ``width`` non-zeros.

    Attributes:
        indices: ``[n, width]`` int64 latent ids in ``[0, dim)``.
        values: ``[n, width]`` float32 activations (0 = padding).
        dim: the dimension of the sparse space (the encoder's ``hidden_dim``).
    """

    indices: np.ndarray
    values: np.ndarray
    dim: int

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        val = np.asarray(self.values)
        if idx.ndim != 2 or val.ndim != 2 or idx.shape != val.shape:
            raise DataError(
                f"sparse indices and values must be 2-D and of one shape, got {idx.shape} and {val.shape}"
            )
        if not 0 < int(self.dim) <= MAX_SPARSE_DIM:
            raise DataError(f"sparse dimension must be in 1..{MAX_SPARSE_DIM}, got {self.dim}")
        object.__setattr__(self, "indices", idx.astype(np.int64, copy=False))
        object.__setattr__(self, "values", val.astype(np.float32, copy=False))
        object.__setattr__(self, "dim", int(self.dim))

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def width(self) -> int:
        """Slots per row (the k the codes were made with)."""
        return int(self.indices.shape[1])

    def __getitem__(self, rows: slice | Sequence[int] | np.ndarray) -> SparseVectors:
        return SparseVectors(self.indices[rows], self.values[rows], self.dim)

    def nnz(self) -> np.ndarray:
        """Non-zeros per row, ``[n]``."""
        return (self.values != 0).sum(axis=1)

    def nbytes(self) -> int:
        """Storage of the non-zeros as (uint32 index, float32 value) pairs: 8 bytes each."""
        return int(self.nnz().sum()) * 8

    @staticmethod
    def empty(dim: int, width: int = 0) -> SparseVectors:
        return SparseVectors(np.zeros((0, width), np.int64), np.zeros((0, width), np.float32), dim)

    @staticmethod
    def concat(parts: Sequence[SparseVectors]) -> SparseVectors:
        """Stack batches row-wise; rows are padded to the widest batch."""
        if not parts:
            raise DataError("nothing to concatenate")
        dim = parts[0].dim
        if any(p.dim != dim for p in parts):
            raise DataError("cannot concatenate sparse vectors of different dimensions")
        width = max(p.width for p in parts)
        idx = [np.pad(p.indices, ((0, 0), (0, width - p.width))) for p in parts]
        val = [np.pad(p.values, ((0, 0), (0, width - p.width))) for p in parts]
        return SparseVectors(np.concatenate(idx), np.concatenate(val), dim)

    def canonical(self) -> SparseVectors:
        """Each row's non-zeros sorted by index, padding (index 0, value 0) at the end."""
        key = np.where(self.values != 0, self.indices, np.iinfo(np.int64).max)
        order = np.argsort(key, axis=1, kind="stable")
        idx = np.take_along_axis(self.indices, order, axis=1)
        val = np.take_along_axis(self.values, order, axis=1)
        idx = np.where(val != 0, idx, 0)
        return SparseVectors(idx, val, self.dim)

    def equals(self, other: SparseVectors, atol: float = 0.0) -> bool:
        """Same vectors (ignoring slot order and padding), values within ``atol``."""
        if len(self) != len(other) or self.dim != other.dim:
            return False
        a, b = self.to_scipy(), other.to_scipy()
        if a.nnz != b.nnz or not (a.indptr == b.indptr).all() or not (a.indices == b.indices).all():
            return False
        return bool(np.allclose(a.data, b.data, rtol=0.0, atol=atol))

    # ------------------------------------------------------------- validation
    def invalid_rows(self, allow_empty: bool = False) -> dict[str, list[int]]:
        """Row positions that would be unsafe to hand to a database, grouped by reason."""
        live = self.values != 0
        problems: dict[str, list[int]] = {}
        bad = ~np.isfinite(self.values).all(axis=1)
        if bad.any():
            problems["non-finite value"] = np.flatnonzero(bad).tolist()
        out = (live & ((self.indices < 0) | (self.indices >= self.dim))).any(axis=1)
        if out.any():
            problems[f"index outside [0, {self.dim})"] = np.flatnonzero(out).tolist()
        if not allow_empty:
            empty = ~live.any(axis=1)
            if empty.any():
                problems["no non-zero entry"] = np.flatnonzero(empty).tolist()
        if self.width > 1 and len(self):
            key = np.where(live, self.indices, -1 - np.arange(self.width)[None, :])
            srt = np.sort(key, axis=1)
            dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            if dup.any():
                problems["duplicate index"] = np.flatnonzero(dup).tolist()
        return problems

    def validate(self, ids: Sequence[object] | None = None, allow_empty: bool = False) -> None:
        """Raise `DataError` naming the offending rows (by id when ``ids`` is given).

        Every adapter calls this before a write: Qdrant Edge panics on malformed vectors and
        Milvus rejects empty ones, so nothing malformed may reach an engine.
        """
        problems = self.invalid_rows(allow_empty=allow_empty)
        if not problems:
            return
        reason, rows = next(iter(problems.items()))
        names = [ids[r] for r in rows] if ids is not None else rows
        label = "ids" if ids is not None else "rows"
        raise DataError(f"invalid sparse vectors ({reason}) at {label} {describe_rows(names)}", names)

    # ------------------------------------------------------------ conversions
    @staticmethod
    def from_dense(matrix: np.ndarray, dim: int | None = None) -> SparseVectors:
        """Keep every non-zero of a dense ``[n, dim]`` matrix (rows padded to the widest)."""
        m = np.asarray(matrix, dtype=np.float32)
        if m.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got shape {m.shape}")
        width = max(int((m != 0).sum(axis=1).max(initial=0)), 1)
        order = np.argsort(m == 0, axis=1, kind="stable")[:, :width]
        vals = np.take_along_axis(m, order, axis=1)
        return SparseVectors(np.where(vals != 0, order, 0), vals, dim or m.shape[1])

    def to_dense(self) -> np.ndarray:
        """``[n, dim]`` float32 dense matrix (only sensible for small ``dim``)."""
        out = np.zeros((len(self), self.dim), np.float32)
        rows = np.repeat(np.arange(len(self)), self.width)
        np.add.at(out, (rows, self.indices.ravel()), self.values.ravel())
        return out

    def to_scipy(self):
        """``scipy.sparse.csr_array`` of shape ``[n, dim]`` with sorted indices, zeros dropped."""
        from scipy import sparse as sp

        c = self.canonical()
        live = c.values != 0
        indptr = np.concatenate([[0], np.cumsum(live.sum(axis=1))])
        return sp.csr_array((c.values[live], c.indices[live], indptr), shape=(len(self), self.dim))

    @staticmethod
    def from_scipy(matrix) -> SparseVectors:
        """From any scipy sparse matrix/array."""
        m = matrix.tocsr()
        m.sum_duplicates()
        counts = np.diff(m.indptr)
        width = max(int(counts.max(initial=0)), 1)
        idx = np.zeros((m.shape[0], width), np.int64)
        val = np.zeros((m.shape[0], width), np.float32)
        rows = np.repeat(np.arange(m.shape[0]), counts)
        slots = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
        idx[rows, slots] = m.indices
        val[rows, slots] = m.data
        return SparseVectors(idx, val, m.shape[1])

    def to_torch(self, device: str | None = None):
        """``torch.sparse_csr_tensor`` of shape ``[n, dim]``."""
        import torch

        s = self.to_scipy()
        return torch.sparse_csr_tensor(
            torch.from_numpy(s.indptr.astype(np.int64)),
            torch.from_numpy(s.indices.astype(np.int64)),
            torch.from_numpy(s.data.astype(np.float32)),
            size=s.shape,
            device=device,
        )

    @staticmethod
    def from_torch(tensor) -> SparseVectors:
        """From a torch sparse (COO or CSR) or dense 2-D tensor."""
        t = tensor.detach().cpu()
        if t.layout != __import__("torch").strided:
            t = t.to_dense()
        return SparseVectors.from_dense(t.numpy(), dim=t.shape[1])

    def to_milvus(self) -> list[dict[int, float]]:
        """One ``{index: value}`` dict per row, the format of Milvus SPARSE_FLOAT_VECTOR."""
        out: list[dict[int, float]] = []
        for idx, val in zip(self.indices.tolist(), self.values.tolist()):
            out.append({i: v for i, v in zip(idx, val) if v != 0.0})
        return out

    @staticmethod
    def from_milvus(rows: Iterable[Mapping[int, float]], dim: int) -> SparseVectors:
        """From Milvus sparse rows (dicts, or anything with ``.keys()`` and ``.values()``)."""
        return SparseVectors.from_pairs([(r.keys(), r.values()) for r in rows], dim)

    def to_qdrant(self) -> list[tuple[list[int], list[float]]]:
        """One ``(indices, values)`` pair per row, sorted by index: Qdrant's SparseVector fields."""
        c = self.canonical()
        out: list[tuple[list[int], list[float]]] = []
        for idx, val in zip(c.indices.tolist(), c.values.tolist()):
            keep = [j for j, v in enumerate(val) if v != 0.0]
            out.append(([idx[j] for j in keep], [val[j] for j in keep]))
        return out

    @staticmethod
    def from_qdrant(rows: Iterable[tuple[Sequence[int], Sequence[float]]], dim: int) -> SparseVectors:
        """From ``(indices, values)`` pairs (e.g. ``(v.indices, v.values)`` of Qdrant SparseVectors)."""
        return SparseVectors.from_pairs(list(rows), dim)

    @staticmethod
    def from_pairs(pairs: Sequence[tuple[Iterable[int], Iterable[float]]], dim: int) -> SparseVectors:
        """One row per ``(indices, values)`` pair (any iterables of equal length), padded to the
        longest; one pass over the entries, so that hundreds of rows read back from a database
        become arrays without a Python loop per entry.

        Raises:
            DataError: a pair whose indices and values differ in length.
        """
        return SparseVectors.from_flat(*flat_pairs(pairs), dim)

    @staticmethod
    def from_flat(lengths: np.ndarray, indices: np.ndarray, values: np.ndarray, dim: int) -> SparseVectors:
        """Rows given back to back: row ``r`` holds the next ``lengths[r]`` entries of the flat
        ``indices`` / ``values`` (CSR without the offsets), padded to the longest row.

        Raises:
            DataError: entry counts that do not add up.
        """
        lengths = np.asarray(lengths, np.int64)
        if len(indices) != len(values) or int(lengths.sum()) != len(indices) or (lengths < 0).any():
            raise DataError(f"{len(indices)} indices and {len(values)} values for rows of {int(lengths.sum())} entries")
        width = max(int(lengths.max(initial=0)), 1)
        idx = np.zeros((len(lengths), width), np.int64)
        val = np.zeros((len(lengths), width), np.float32)
        if len(indices):
            live = np.arange(width)[None, :] < lengths[:, None]
            idx[live] = indices
            val[live] = values
        return SparseVectors(idx, val, dim)


def flat_pairs(pairs: Sequence[tuple[Iterable[int], Iterable[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lengths [n] int64, indices int64, values float32)`` of ``(indices, values)`` pairs laid back
    to back (the input of `SparseVectors.from_flat`), in one pass over the entries.

    Raises:
        DataError: a pair whose indices and values differ in length.
    """
    idx_rows = [i if isinstance(i, Sized) else list(i) for i, _ in pairs]
    val_rows = [v if isinstance(v, Sized) else list(v) for _, v in pairs]
    lengths = np.fromiter(map(len, idx_rows), np.int64, len(idx_rows))
    bad = np.flatnonzero(lengths != np.fromiter(map(len, val_rows), np.int64, len(val_rows)))
    if len(bad):
        n = int(bad[0])
        raise DataError(f"sparse row {n} has {len(idx_rows[n])} indices but {len(val_rows[n])} values", [n])
    total = int(lengths.sum())
    flat_idx = np.fromiter(chain.from_iterable(idx_rows), np.int64, total)
    flat_val = np.fromiter(chain.from_iterable(val_rows), np.float32, total)
    return lengths, flat_idx, flat_val
