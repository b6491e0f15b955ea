"""Up-front checks on dense vectors: dimension, NaN/inf and all-zero rows, reported by id."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from csr_vdb.errors import DataError, describe_rows


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
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``[n, d]`` array or raise `DataError`.

    Args:
        x: array-like ``[n, d]`` (a single ``[d]`` vector is promoted to ``[1, d]``).
        dim: required ``d``; ``None`` accepts any.
        ids: names of the rows for the error message (row positions otherwise).
        what: noun used in messages ("vectors", "queries", ...).

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
    problems = invalid_dense_rows(arr)
    if problems:
        reason, rows = next(iter(problems.items()))
        names = [ids[r] for r in rows] if ids is not None else rows
        label = "ids" if ids is not None else "rows"
        raise DataError(f"{what} contain {reason} at {label} {describe_rows(names)}", names)
    return np.ascontiguousarray(arr)
