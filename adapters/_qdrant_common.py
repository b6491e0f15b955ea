"""What the two Qdrant adapters share: id mapping, payload keys, sparse checks, metrics, and `QdrantBase`.

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
It is a stable total order over the ids the adapters return, and ``cursor`` (an id they returned)
is translated to its point id, so paging and resuming are exact. A ``cursor`` that is not a stored
id is placed by value: an int or UUID at its point id, any other string at the first canonical UUID
above it in string order (so a collection of UUID ids pages exactly like sorted strings).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from csr_vdb.adapters._common import Found, FoundBatch, Layout, StoreBase, _MissingDense, payload_schema
from csr_vdb.errors import DataError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import SPARSE_FIELD, DensePage, Metric, PayloadPage, SparseIndexConfig

RESERVED_ID_KEY = "__csr_vdb_id"
"""Payload key holding the original ``str`` id of a point whose id is not a UUID."""

ID_NAMESPACE = uuid.UUID("6f1c3c52-7f0e-5b43-9a51-3c2d0f0c5a10")
"""Namespace of the ``uuid5`` point ids made from non-UUID ``str`` ids (fixed forever)."""

QDRANT_SPARSE_SETTINGS = ("datatype", "memory", "full_scan_threshold")
"""The `SparseIndexConfig` fields Qdrant's sparse index takes."""

DEFAULT_QDRANT_SPARSE_INDEX = SparseIndexConfig(datatype="uint8")
"""A new sparse collection's index: weights quantised to one byte, so the index takes about a fifth
of the float32 one (a posting is an id and a weight) and the searches rank candidates by nearly
exact scores; the stored vectors returned with the hits stay float32, so the exact re-score of
`csr_vdb.retriever.Retriever` is unchanged (bench/README.md, scale.py)."""

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


def scroll_start(cursor: int | str, stored_mapped: Callable[[str], bool]) -> tuple[Any, Any, bool]:
    """Where a scroll resumes behind the exclusive ``cursor``.

    Args:
        cursor: an id returned earlier, or any id value.
        stored_mapped: ``stored_mapped(point_id)`` tells whether a mapped str id is stored under
            that ``uuid5`` point id (then its position is that point id).

    Returns:
        ``(offset, skip, exhausted)``: the inclusive scroll offset, the point id to drop if the
        scroll returns it first, and True when nothing can follow the cursor.
    """
    if isinstance(cursor, int) or is_canonical_uuid(cursor):
        return cursor, cursor, False
    pid = to_point_id(cursor)
    if stored_mapped(pid):
        return pid, pid, False
    nxt = next_uuid_after(cursor)
    return nxt, None, nxt is None


def point_key(point_id: Any) -> int | str:
    """A point id as int or canonical string (engines return ints and `uuid.UUID`s)."""
    return point_id if isinstance(point_id, int) else str(point_id)


class QdrantBase(StoreBase):
    """What `QdrantStore` (qdrant-client) and `QdrantEdgeStore` (the embedded engine) share: id
    mapping, payload rules, sparse checks, scroll paging, and the shaping of points into hits and
    records. A subclass supplies the engine calls (`_scroll`, `_retrieve`, `_query_batch`,
    `_sparse_vector`, `_point`, `_write`) and its own schema and collection management.
    """

    QUERY_BATCH = 64
    """Queries per batched search request."""
    LAZY_PAYLOADS = True  # the engine reads each hit's payload from its payload storage
    SCHEMA_SAMPLE = 100
    """Points read to report a payload schema (payloads are schemaless)."""

    # ------------------------------------------------------------------ engine hooks
    def _scroll(self, s: Layout, offset: Any, limit: int, f: str) -> tuple[list[Any], Any]:
        """Up to ``limit`` points from ``offset`` (inclusive) in point-id order with payload and
        vector ``f`` (no vector for ``f=None``), and the offset of the next page (None at the end)."""
        raise NotImplementedError

    def _retrieve(self, s: Layout, pids: list[Any], with_payload: Any, vectors: list[str]) -> list[Any]:
        raise NotImplementedError

    def _query_batch(
        self, s: Layout, queries: list[Any], using: str, limit: int, with_payload: Any, vectors: list[str],
        ef: int | None = None,
    ) -> list[list[Any]]:
        """One batched nearest-neighbour request (``ef``: HNSW search breadth); per query the
        engine's scored points."""
        raise NotImplementedError

    def _sparse_vector(self, indices: list[int], values: list[float]) -> Any:
        raise NotImplementedError

    def _point(self, pid: Any, vectors: dict[str, Any], payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _write(self, s: Layout, points: list[Any]) -> None:
        """Upsert points, returning once the engine applied them."""
        raise NotImplementedError

    def _remove(self, s: Layout, pids: list[Any]) -> None:
        """Delete points by point id (absent ones ignored), returning once the engine applied it."""
        raise NotImplementedError

    def _overwrite(self, s: Layout, items: list[tuple[Any, dict[str, Any]]]) -> None:
        """Replace the stored payload of existing points ``(point id, payload)``."""
        raise NotImplementedError

    def _prepare(self, s: Layout, f: str, vectors: np.ndarray) -> np.ndarray:
        """Dense rows as stored/searched in field ``f`` (`QdrantStore` normalises some)."""
        return vectors

    def _vector(self, record: Any, f: str) -> Any:
        """A record's vector ``f`` (None when absent)."""
        return self._named(record.vector, f)

    @staticmethod
    def _named(vectors: Any, f: str) -> Any:
        """Vector ``f`` of a record's ``vector`` attribute: a dict of named vectors, or the unnamed
        default vector itself (field ``""``); None when absent."""
        if isinstance(vectors, dict):
            return vectors.get(f)
        return vectors if f == "" else None

    # ------------------------------------------------------------------ shared checks
    def _check_codes(self, sparse: SparseVectors, ids: Sequence[Any] | None, allow_empty: bool = False) -> Any:
        return sparse_rows(sparse, ids, allow_empty=allow_empty)

    def _check_payloads(self, s: Layout, ids: list[Any], payloads: list[dict[str, Any]]) -> None:
        check_payload_keys(payloads, ids)

    def _payload_selector(self, s: Layout, with_payload: bool) -> Any:
        if with_payload:
            return True
        return [RESERVED_ID_KEY] if s.id_type == "str" else False  # mapped str ids live in the payload

    def _found(self, s: Layout, p: Any, score: float, with_payload: bool, with_code: bool, f: str | None) -> Found:
        # Each attribute of an engine's point is converted to Python on every read: read each once,
        # and the payload only when it is returned or may hold a mapped str id.
        if with_payload or s.id_type != "int":
            id_, payload = restore(point_key(p.id), p.payload)
        else:
            id_, payload = point_key(p.id), None
        vectors = p.vector if with_code or f is not None else None
        code = self._named(vectors, SPARSE_FIELD) if with_code else None
        return Found(
            id_,
            score,
            payload if with_payload else None,
            (code.indices, code.values) if code is not None else None,
            self._named(vectors, f) if f is not None else None,
        )

    # ------------------------------------------------------------------ protocol hooks
    def _payload_sample(self, s: Layout) -> dict[str, str]:
        records, _ = self._scroll(s, None, self.SCHEMA_SAMPLE, None)
        return payload_schema(restore(point_key(r.id), r.payload)[1] for r in records)

    def _insert_dense(self, s: Layout, f: str, ids: list[Any], vectors: np.ndarray, payloads: list[dict]) -> None:
        rows = as_float_lists(self._prepare(s, f, vectors))
        self._write(s, [self._point(to_point_id(i), {f: v}, stored_payload(i, p)) for i, v, p in zip(ids, rows, payloads)])

    def _upsert(
        self, s: Layout, ids: list[Any], codes: list, payloads: list[dict], f: str | None, dense: np.ndarray | None
    ) -> None:
        dense_rows = as_float_lists(self._prepare(s, f, dense)) if f is not None and dense is not None else None
        points = []
        for n, (i, (idx, val)) in enumerate(zip(ids, codes)):
            vec: dict[str, Any] = {SPARSE_FIELD: self._sparse_vector(idx, val)}
            if dense_rows is not None:
                vec[f] = dense_rows[n]  # type: ignore[index]
            points.append(self._point(to_point_id(i), vec, stored_payload(i, payloads[n])))
        self._write(s, points)

    def _scroll_pages(self, s: Layout, f: str | None, batch_size: int, cursor: Any) -> Iterator[list[Any]]:
        """Lists of up to ``batch_size`` points (payload and vector ``f``) in point-id order behind
        the exclusive ``cursor`` (see the module docstring)."""
        skip: Any = None
        offset: Any = None
        if cursor is not None:

            def stored_mapped(pid: str) -> bool:
                recs = self._retrieve(s, [pid], [RESERVED_ID_KEY], [])
                return bool(recs) and (recs[0].payload or {}).get(RESERVED_ID_KEY) == cursor

            offset, skip, exhausted = scroll_start(cursor, stored_mapped)  # offsets are inclusive
            if exhausted:
                return
        while True:
            limit = batch_size + (1 if skip is not None else 0)
            records, nxt = self._scroll(s, offset, limit, f)
            if skip is not None:
                records = [r for r in records if point_key(r.id) != skip]
                skip = None
            if len(records) > batch_size:  # the cursor row was absent: one row too many
                nxt = records[batch_size].id
                records = records[:batch_size]
            if records:
                yield records
            if nxt is None:
                return
            offset = nxt

    def _iter_dense(self, s: Layout, f: str, batch_size: int, cursor: Any) -> Iterator[DensePage]:
        """Pages in point-id order (ints ascending; str ids by point id, see the module docstring)."""
        dim = s.dense[f][0]
        for records in self._scroll_pages(s, f, batch_size, cursor):
            ids, payloads, vectors = [], [], []
            for r in records:  # one pass, each engine attribute read once (each read converts it)
                i, p = restore(point_key(r.id), r.payload)
                ids.append(i)
                payloads.append(p)
                vectors.append(self._vector(r, f))
            missing = [i for i, v in zip(ids, vectors) if v is None or len(v) != dim]
            if missing:
                raise StoreError(f"collection '{s.name}' has rows without vector '{f}' in {self.uri}: ids {missing[:5]}")
            flat = np.fromiter(itertools.chain.from_iterable(vectors), dtype=np.float32, count=len(ids) * dim)
            yield DensePage(ids=ids, vectors=flat.reshape(len(ids), dim), payloads=payloads)

    def _iter_payloads(self, s: Layout, batch_size: int, cursor: Any, fields: list[str] | None) -> Iterator[PayloadPage]:
        for records in self._scroll_pages(s, None, batch_size, cursor):
            pairs = [restore(point_key(r.id), r.payload) for r in records]
            yield PayloadPage([i for i, _ in pairs], [p for _, p in pairs])

    def _existing(self, s: Layout, ids: list[Any]) -> set[Any]:
        """The point ids among ``ids``' that exist."""
        pids = list(dict.fromkeys(to_point_id(i) for i in ids))
        return {point_key(r.id) for r in self._retrieve(s, pids, False, [])}

    def _delete(self, s: Layout, ids: list[Any]) -> None:
        self._remove(s, list(dict.fromkeys(to_point_id(i) for i in ids)))

    def _set_payload(self, s: Layout, ids: list[Any], payloads: list[dict]) -> list[Any]:
        # Engines apply an overwrite naming a missing point to the others and then fail: ask first.
        there = self._existing(s, ids)
        items = [(to_point_id(i), stored_payload(i, p)) for i, p in zip(ids, payloads) if to_point_id(i) in there]
        self._overwrite(s, items)
        return [i for i in ids if to_point_id(i) not in there]

    def _search_points(
        self, s: Layout, queries: list[Any], using: str, limit: int, with_payload: bool, metric: Metric,
        with_code: bool = False, dense_field: str | None = None, ef: int | None = None,
    ) -> list[list[Found]]:
        """Batched searches (None queries get no hits), points shaped into `Found` rows."""
        out: list[list[Found]] = [[] for _ in queries]
        wp = self._payload_selector(s, with_payload)
        vectors = ([SPARSE_FIELD] if with_code else []) + ([dense_field] if dense_field is not None else [])
        todo = [n for n, q in enumerate(queries) if q is not None]
        for a in range(0, len(todo), self.QUERY_BATCH):
            chunk = todo[a : a + self.QUERY_BATCH]
            results = self._query_batch(s, [queries[n] for n in chunk], using, limit, wp, vectors, ef)
            for n, points in zip(chunk, results):
                out[n] = [
                    self._found(s, p, l2_score(p.score) if metric == "l2" else float(p.score), with_payload,
                                with_code, dense_field)
                    for p in points
                ]  # fmt: skip
        return out

    def _search_batches(
        self, s: Layout, queries: list, limit: int, with_payload: bool, with_codes: bool, dense_field: str | None
    ) -> list[FoundBatch]:
        """Sparse search, the hits' codes and dense vectors in the same request, read straight into
        columns: each point's attributes are read once and the codes land in flat lists, so a
        query's hundreds of candidates leave no object per row behind (which also spares the
        garbage collector)."""
        dim = s.dense[dense_field][0] if dense_field is not None else None
        out = [FoundBatch.empty(with_payload, with_codes, dim) for _ in queries]  # empty queries get no hits
        wp = self._payload_selector(s, with_payload)
        vectors = ([SPARSE_FIELD] if with_codes else []) + ([dense_field] if dense_field is not None else [])
        todo = [n for n, (i, _) in enumerate(queries) if i]
        for a in range(0, len(todo), self.QUERY_BATCH):
            chunk = todo[a : a + self.QUERY_BATCH]
            sparse = [self._sparse_vector(*queries[n]) for n in chunk]
            results = self._query_batch(s, sparse, SPARSE_FIELD, limit, wp, vectors)
            for n, points in zip(chunk, results):
                out[n] = self._columns(s, points, with_payload, with_codes, dense_field)
        return out

    def _columns(self, s: Layout, points: list[Any], with_payload: bool, with_codes: bool, f: str | None) -> FoundBatch:
        """One query's scored points as a `FoundBatch`."""
        n = len(points)
        batch = FoundBatch([], np.array([p.score for p in points], np.float64))
        if with_payload or s.id_type != "int":  # mapped str ids live in the payload
            pairs = [restore(point_key(p.id), p.payload) for p in points]
            batch.ids = [i for i, _ in pairs]
            batch.payloads = [pl for _, pl in pairs] if with_payload else None
        else:
            batch.ids = [p.id for p in points]  # an int collection's point ids are its ids
        if not with_codes and f is None:
            return batch
        vectors = [p.vector for p in points]  # dicts of named vectors (the sparse one is always named)
        if with_codes:
            # each attribute read converts the engine's list: read each once, then lay them back to back
            codes = [v.get(SPARSE_FIELD) if isinstance(v, dict) else None for v in vectors]
            idx_rows = [c.indices for c in codes] if None not in codes else [c.indices if c else () for c in codes]
            val_rows = [c.values for c in codes] if None not in codes else [c.values if c else () for c in codes]
            lengths = np.fromiter(map(len, idx_rows), np.int64, n)
            total = int(lengths.sum())
            if (np.fromiter(map(len, val_rows), np.int64, n) != lengths).any():
                raise StoreError(f"collection '{s.name}' in {self.uri} returned sparse vectors with unequal lengths")
            batch.code_lengths = lengths
            batch.code_indices = np.fromiter(itertools.chain.from_iterable(idx_rows), np.int64, total)
            batch.code_values = np.fromiter(itertools.chain.from_iterable(val_rows), np.float32, total)
        if f is not None:
            dense = [self._named(v, f) for v in vectors]
            missing = [id_ for id_, vec in zip(batch.ids, dense) if vec is None]
            if missing:
                raise _MissingDense(missing)
            dim = s.dense[f][0]
            if any(len(vec) != dim for vec in dense):
                raise StoreError(f"collection '{s.name}' in {self.uri} returned '{f}' vectors of another dimension than {dim}")
            batch.dense = np.fromiter(itertools.chain.from_iterable(dense), np.float32, n * dim).reshape(n, dim)
        return batch

    def _search_dense(
        self, s: Layout, f: str, queries: np.ndarray, limit: int, with_payload: bool, ef: int | None = None
    ) -> list[list[Found]]:
        q = as_float_lists(self._prepare(s, f, queries))
        return self._search_points(s, q, f, limit, with_payload, s.dense[f][1], ef=ef)  # type: ignore[arg-type]

    def _fetch(self, s: Layout, ids: list[Any], dense_field: str | None, with_sparse: bool) -> Mapping[Any, Found]:
        vectors = ([dense_field] if dense_field is not None else []) + ([SPARSE_FIELD] if with_sparse else [])
        pids = list(dict.fromkeys(to_point_id(i) for i in ids))
        records = self._retrieve(s, pids, True, vectors)
        found = (self._found(s, r, 0.0, True, with_sparse, dense_field) for r in records)
        return {r.id: r for r in found}
