"""Helpers shared by the two Qdrant adapters: id mapping, payload keys, sparse checks, metrics.

Id mapping (both adapters). Qdrant point ids are unsigned integers or UUIDs, while csr-vdb ids
are ``int`` or arbitrary ``str``:

- ``int`` ids are used as point ids unchanged.
- a ``str`` id that is a canonical UUID (lower-case, hyphenated: ``str(uuid.UUID(s)) == s``) is
  used as the point id unchanged, so collections made by other tools keep their ids.
- any other ``str`` id is stored under point id ``uuid5(ID_NAMESPACE, id)`` and the original
  string is kept in the payload under `RESERVED_ID_KEY`; the adapters restore it on every read
  and never return that key. A user payload that already holds the key is refused.

Order of ``iter_dense``: Qdrant scrolls by point id (integers ascending; UUIDs by their 128-bit
value, which is also the order of their canonical strings). For ``str`` collections with mapped
ids the order is therefore the order of the *point ids* (``uuid5`` values), not of the strings.
It is a stable total order over the ids the adapters return, and ``after`` (an id they returned)
is translated to its point id, so paging and resuming are exact. An ``after`` that is not a stored
id is placed by value: an int or UUID at its point id, any other string at the first canonical UUID
above it in string order (so a collection of UUID ids pages exactly like sorted strings).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from csr_vdb.errors import DataError
from csr_vdb.sparse import SparseVectors

RESERVED_ID_KEY = "__csr_vdb_id"
"""Payload key holding the original ``str`` id of a point whose id is not a UUID."""

ID_NAMESPACE = uuid.UUID("6f1c3c52-7f0e-5b43-9a51-3c2d0f0c5a10")
"""Namespace of the ``uuid5`` point ids made from non-UUID ``str`` ids (fixed forever)."""

METRIC_TO_QDRANT = {"cosine": "Cosine", "ip": "Dot", "l2": "Euclid"}
"""csr-vdb metric -> Qdrant distance name (the enum member name in both libraries)."""

QDRANT_TO_METRIC = {v: k for k, v in METRIC_TO_QDRANT.items()}


def is_canonical_uuid(value: str) -> bool:
    """True if ``value`` is a UUID written the way Qdrant returns it (lower-case, hyphenated)."""
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def to_point_id(id_: int | str) -> int | str:
    """The Qdrant point id for a csr-vdb id (see the module docstring)."""
    if isinstance(id_, int):
        return id_
    return id_ if is_canonical_uuid(id_) else str(uuid.uuid5(ID_NAMESPACE, id_))


def needs_reserved_key(id_: int | str) -> bool:
    """True if the id cannot be recovered from its point id alone."""
    return isinstance(id_, str) and not is_canonical_uuid(id_)


def _exact_in_qdrant(value: Any) -> bool:
    """False for values Qdrant cannot keep exactly: NaN/inf (refused) and ints beyond int64
    (silently turned into floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_exact_in_qdrant(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_exact_in_qdrant(v) for v in value)
    return True


def check_payload_keys(payloads: Sequence[dict[str, Any]], ids: Sequence[int | str]) -> None:
    """Refuse payloads that use the reserved id key (it would be overwritten and hidden) or hold
    values Qdrant would not store exactly (NaN/inf, integers outside int64)."""
    bad = [i for i, p in zip(ids, payloads) if RESERVED_ID_KEY in p]
    if bad:
        raise DataError(f"payload key '{RESERVED_ID_KEY}' is reserved by csr-vdb (ids {bad[:5]})", bad)
    bad = [i for i, p in zip(ids, payloads) if not _exact_in_qdrant(p)]
    if bad:
        raise DataError(f"payloads with NaN/inf or integers outside int64 at ids {bad[:5]}", bad)


def stored_payload(id_: int | str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload written to Qdrant: the user's, plus the original id when it is mapped."""
    if needs_reserved_key(id_):
        return {**payload, RESERVED_ID_KEY: id_}
    return payload


def restore(point_id: Any, payload: dict[str, Any] | None) -> tuple[int | str, dict[str, Any]]:
    """Original id and user payload from a point id and its stored payload."""
    payload = dict(payload or {})
    original = payload.pop(RESERVED_ID_KEY, None)
    if original is not None:
        return original, payload
    if isinstance(point_id, int):
        return point_id, payload
    return str(point_id), payload


def sparse_rows(sparse: SparseVectors, ids: Sequence[object] | None = None, *, allow_empty: bool = False):
    """Validated ``(indices, values)`` rows, each sorted by index with equal lengths.

    Qdrant Edge panics (and corrupts its WAL) on a vector whose indices and values differ in
    length and silently accepts NaN and unsorted/duplicate indices, so every sparse vector goes
    through here before it reaches an engine.

    Args:
        sparse: ``[n, width]`` codes.
        ids: names for error messages.
        allow_empty: accept rows without a non-zero (queries).

    Raises:
        DataError: naming the offending ids/rows.
    """
    sparse.validate(ids, allow_empty=allow_empty)
    c = sparse.canonical()  # each row sorted by index, padding (value 0) at the end
    live = c.values != 0
    nnz = live.sum(axis=1)
    # Re-checked on the exact arrays handed to the engine (a malformed vector costs the shard):
    # live entries first, strictly increasing indices, in u32 range, finite values.
    bad = (live[:, 1:] & ~live[:, :-1]).any(axis=1)
    bad |= (live[:, 1:] & (np.diff(c.indices, axis=1) <= 0)).any(axis=1)
    bad |= (live & ((c.indices < 0) | (c.indices >= 2**32 - 1) | ~np.isfinite(c.values))).any(axis=1)
    if bad.any():
        rows_bad = np.flatnonzero(bad).tolist()
        names = [ids[r] for r in rows_bad] if ids is not None else rows_bad
        raise DataError(f"invalid sparse vectors at {'ids' if ids is not None else 'rows'} {names[:5]}", names)
    idx, val = c.indices.tolist(), c.values.tolist()
    return [(i[:m], v[:m]) for i, v, m in zip(idx, val, nnz.tolist())]


def sorted_sparse(indices: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    """A stored sparse vector as ``(indices, values)`` lists in ascending index order (one numpy
    pass: re-scoring fetches hundreds of them per query)."""
    idx = np.asarray(indices, dtype=np.int64)
    val = np.asarray(values, dtype=np.float64)
    order = np.argsort(idx, kind="stable")
    return idx[order].tolist(), val[order].tolist()


def payload_schema(payloads: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Field -> Python type name over a sample of payloads (Qdrant payloads are schemaless)."""
    schema: dict[str, str] = {}
    for p in payloads:
        for k, v in p.items():
            schema.setdefault(k, type(v).__name__)
    return schema


def sort_hits(hits: list, positive_only: bool) -> list:
    """Best first, ties by id (the reference store's order); drop non-positive sparse scores."""
    if positive_only:
        hits = [h for h in hits if h.score > 0]
    return sorted(hits, key=lambda h: (-h.score, h.id))


def l2_score(distance: float) -> float:
    """Qdrant reports Euclidean distance; csr-vdb scores l2 as negative squared distance."""
    return -float(distance) ** 2


def as_float_lists(vectors: np.ndarray) -> list[list[float]]:
    """``[n, d]`` float32 -> nested Python lists for the clients."""
    return np.asarray(vectors, dtype=np.float32).tolist()


_HEX = "0123456789abcdef"
_DASHES = (8, 13, 18, 23)


def _allowed(pos: int) -> str:
    return "-" if pos in _DASHES else _HEX


def _min_fill(start: int) -> str:
    return "".join("-" if p in _DASHES else "0" for p in range(start, 36))


def next_uuid_after(value: str) -> str | None:
    """The smallest canonical UUID string that is greater than ``value`` in string order.

    Returns None when there is none (``value`` is above ``ffffffff-ffff-...``).
    """
    conform = 0
    while conform < min(len(value), 36) and value[conform] in _allowed(conform):
        conform += 1
    if conform == len(value) and conform < 36:
        return value + _min_fill(conform)  # a proper prefix of UUIDs: extend it minimally
    for j in range(min(conform, 35), -1, -1):
        bigger = [c for c in _allowed(j) if c > value[j]]
        if bigger:
            return value[:j] + bigger[0] + _min_fill(j + 1)
    return None


def scroll_start(after: int | str, stored_mapped: Callable[[str], bool]) -> tuple[Any, Any, bool]:
    """Where a scroll resumes behind the cursor ``after``.

    Args:
        after: the exclusive cursor (an id returned earlier, or any id value).
        stored_mapped: ``stored_mapped(point_id)`` tells whether a mapped str id is stored under
            that ``uuid5`` point id (then its position is that point id).

    Returns:
        ``(offset, skip, exhausted)``: the inclusive scroll offset, the point id to drop if the
        scroll returns it first, and True when nothing can follow the cursor.
    """
    if isinstance(after, int) or is_canonical_uuid(after):
        return after, after, False
    pid = to_point_id(after)
    if stored_mapped(pid):
        return pid, pid, False
    nxt = next_uuid_after(after)
    return nxt, None, nxt is None
