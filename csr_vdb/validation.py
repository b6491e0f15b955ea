"""Up-front checks on inputs: dense vectors (dimension, NaN/inf, all-zero rows), codes to score, top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from csr_vdb.errors import ConfigError, DataError, describe_rows
from csr_vdb.sparse import SparseVectors


def invalid_dense_rows(x: np.ndarray) -> dict[str, list[int]]:
    """Row positions of ``x`` (``[n, d]``) that are not usable, grouped by reason."""
    problems: dict[str, list[int]] = {}
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        problems["NaN or inf"] = np.flatnonzero(~finite).tolist()
    zero = ~(np.where(np.isfinite(x), x, 1.0) != 0).any(axis=1)
    if zero.any():
        problems["all-zero vector"] = np.flatnonzero(zero).tolist()
    return problems


def check_dense(
    x: object,
    dim: int | None = None,
    ids: Sequence[object] | None = None,
    what: str = "vectors",
    *,
    validated: bool = False,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``[n, d]`` array or raise `DataError`.

    Args:
        x: array-like ``[n, d]`` (a single ``[d]`` vector is promoted to ``[1, d]``).
        dim: required ``d``; ``None`` accepts any.
        ids: names of the rows for the error message (row positions otherwise).
        what: noun used in messages ("vectors", "queries", ...).
        validated: the caller already checked every row (`invalid_dense_rows`): only the shape is
            checked here, so that each row is scanned once on a path that validates it up front.

    Raises:
        DataError: empty input, wrong dimension, NaN/inf or all-zero rows (naming them).
    """
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} are not numeric: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array [n, dim], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"no {what} given (empty input)")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{what} have dimension {arr.shape[1]}, expected {dim}")
    problems = {} if validated else invalid_dense_rows(arr)
    if problems:
        reason, rows = next(iter(problems.items()))
        names = [ids[r] for r in rows] if ids is not None else rows
        label = "ids" if ids is not None else "rows"
        raise DataError(f"{what} contain {reason} at {label} {describe_rows(names)}", names)
    return np.ascontiguousarray(arr)


def check_codes(codes: SparseVectors, what: str = "codes") -> None:
    """Codes that can be scored: finite values, live indices inside ``[0, dim)`` (rows may be empty).

    Raises:
        DataError: naming the rows (by position) and the reason.
    """
    bad = ~np.isfinite(codes.values).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise DataError(f"{what} contain NaN or inf at rows {describe_rows(rows)}", rows)
    live = codes.values != 0
    out = (live & ((codes.indices < 0) | (codes.indices >= codes.dim))).any(axis=1)
    if out.any():
        rows = np.flatnonzero(out).tolist()
        raise DataError(f"{what} have an index outside [0, {codes.dim}) at rows {describe_rows(rows)}", rows)


def check_top_k(top_k: object) -> int:
    """``top_k`` as a positive int; `ConfigError` otherwise (bools are not counts)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)
