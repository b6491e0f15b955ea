"""`StoreBase`: the public `VectorStore` methods with the checks every adapter shares.

Each adapter implements only its engine calls (the ``_``-prefixed hooks below) on a `Layout`, the
little it must know of a collection: real name, id type, dense fields, sparse field. The checks
(ids, payloads, dense rows, sparse codes, limits, page cursors, dense field names) and the
shaping of results (hits best first with ties by id, the candidates' codes as one
`SparseVectors`, records in the order asked) are written once, here, so every store validates
and answers alike (the contract suite in tests/adapters compares them).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from csr_vdb.adapters._retry import RetryPolicy, apply_retries, is_transient
from csr_vdb.errors import CollectionNotFoundError, ConfigError, DataError, StoreError
from csr_vdb.sparse import SparseVectors, flat_pairs
from csr_vdb.store import (
    METRICS,
    SPARSE_FIELD,
    Candidates,
    CollectionInfo,
    DensePage,
    Hit,
    Id,
    IdType,
    Metric,
    PayloadPage,
    Record,
    SparseIndexConfig,
    check_batch_size,
    check_cursor,
    check_ids,
    check_limit,
    check_payloads,
    page_cursor,
    usable_ids,
)
from csr_vdb.validation import check_dense

__all__ = ["Found", "FoundBatch", "Layout", "StoreBase", "payload_schema", "sorted_pair"]

log = logging.getLogger(__name__)


@dataclass
class Layout:
    """What the shared checks need to know about one collection.

    Attributes:
        name: the real name (an alias resolved).
        id_type: "int" / "str", or None while unknown (an empty Qdrant collection made by another
            tool: the first write decides).
        dense: dense field -> (dimension, metric), in the database's order.
        sparse: has the sparse field `SPARSE_FIELD`.
    """

    name: str
    id_type: IdType | None
    dense: dict[str, tuple[int, Metric]]
    sparse: bool

    @property
    def first_dense(self) -> str | None:
        """The dense field migrations read and targets keep (the first), or None."""
        return next(iter(self.dense), None)

    def dense_field(self, vector_field: str | None, uri: str) -> str:
        """``vector_field`` (default: the first dense field), checked to exist."""
        if not self.dense:
            raise StoreError(f"collection '{self.name}' in {uri} has no dense vector field")
        f = vector_field if vector_field is not None else next(iter(self.dense))
        if f not in self.dense:
            raise StoreError(
                f"collection '{self.name}' in {uri} has no vector field '{f}' (fields: {', '.join(self.dense)})"
            )
        return f


class Found(NamedTuple):
    """One row an engine returned, before shaping: what a hit or a record is made of."""

    id: Id
    score: float
    payload: dict[str, Any] | None
    code: tuple[Sequence[int], Sequence[float]] | None = None  # the stored sparse vector
    dense: Sequence[float] | np.ndarray | None = None  # the stored dense vector


@dataclass
class FoundBatch:
    """One query's rows as an engine returned them, as columns: what `VectorStore.search_candidates`
    is made of without an object per row (hundreds of candidates per query).

    Attributes:
        ids: the rows' ids.
        scores: ``[n]`` float64 scores.
        payloads: one dict per row, or None when not asked for.
        code_lengths: ``[n]`` entries of each row's stored code (None: codes not asked for).
        code_indices: the codes' indices back to back (`SparseVectors.from_flat`).
        code_values: their values.
        dense: ``[n, dim]`` float32 stored dense vectors, or None when not asked for.
    """

    ids: list[Id]
    scores: np.ndarray
    payloads: list[dict[str, Any] | None] | None = None
    code_lengths: np.ndarray | None = None
    code_indices: np.ndarray | None = None
    code_values: np.ndarray | None = None
    dense: np.ndarray | None = None

    @classmethod
    def empty(cls, with_payload: bool, with_codes: bool, dense_dim: int | None) -> FoundBatch:
        """No rows (with empty columns for what was asked)."""
        return cls.from_rows([], with_payload, with_codes, dense_dim)

    @classmethod
    def from_rows(cls, rows: Sequence[Found], with_payload: bool, with_codes: bool, dense_dim: int | None) -> FoundBatch:
        """Columns of `Found` rows (codes as ``(indices, values)`` pairs); `DataError` on a
        malformed code, `StoreError` is left to the caller for missing dense vectors."""
        n = len(rows)
        batch = cls(
            ids=[r.id for r in rows],
            scores=np.fromiter((r.score for r in rows), np.float64, n),
            payloads=[r.payload for r in rows] if with_payload else None,
        )
        if with_codes:
            batch.code_lengths, batch.code_indices, batch.code_values = flat_pairs([r.code or ((), ()) for r in rows])
        if dense_dim is not None:
            missing = [r.id for r in rows if r.dense is None]
            if missing:
                raise _MissingDense(missing)
            batch.dense = np.asarray([r.dense for r in rows], dtype=np.float32).reshape(n, dense_dim)
        return batch

    def ranked(self) -> FoundBatch:
        """Rows with a positive score, best first, ties by id (the reference store's order)."""
        keep = self.scores > 0
        order = np.flatnonzero(keep)
        s = self.scores[order]
        if len(s) > 1 and not (s[1:] < s[:-1]).all():  # out of order or tied: sort as the reference does
            order = np.asarray(sorted(order.tolist(), key=lambda j: (-self.scores[j], self.ids[j])), np.int64)
        elif keep.all():
            return self
        return self.take(order)

    def take(self, order: np.ndarray) -> FoundBatch:
        """These rows in ``order`` (positions)."""
        out = FoundBatch(ids=[self.ids[j] for j in order.tolist()], scores=self.scores[order])
        if self.payloads is not None:
            out.payloads = [self.payloads[j] for j in order.tolist()]
        if self.code_lengths is not None:
            starts = np.concatenate([[0], np.cumsum(self.code_lengths)[:-1]]).astype(np.int64)
            lengths = self.code_lengths[order]
            pos = np.repeat(starts[order] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            pos += np.arange(int(lengths.sum()))
            out.code_lengths, out.code_indices, out.code_values = lengths, self.code_indices[pos], self.code_values[pos]
        if self.dense is not None:
            out.dense = self.dense[order]
        return out


class _MissingDense(Exception):
    """Rows without the dense vector asked for (ids in ``args[0]``); shaped into a `StoreError`."""


def sorted_pair(indices: Iterable[int], values: Iterable[float]) -> tuple[list[int], list[float]]:
    """A stored sparse vector as ``(indices, values)`` lists in ascending index order."""
    idx = np.fromiter(indices, dtype=np.int64)
    val = np.fromiter(values, dtype=np.float64)
    order = np.argsort(idx, kind="stable")
    return idx[order].tolist(), val[order].tolist()


def payload_schema(payloads: Sequence[dict[str, Any]] | Any) -> dict[str, str]:
    """Field -> Python type name over a sample of (schemaless) payloads, first type seen."""
    schema: dict[str, str] = {}
    for p in payloads:
        for k, v in p.items():
            schema.setdefault(k, type(v).__name__)
    return schema


def _ranked(found: list[Found], positive_only: bool) -> list[Found]:
    """Best first, ties by id (the reference store's order); non-positive sparse scores dropped."""
    if positive_only:
        found = [f for f in found if f.score > 0]
    return sorted(found, key=lambda f: (-f.score, f.id))


class StoreBase:
    """The `VectorStore` methods whose checks and result shaping every adapter shares.

    Subclasses set ``uri`` and implement `_layout` plus the engine hooks (`_count`,
    `_payload_sample`, `_create_dense`, `_create_sparse`, `_insert_dense`, `_upsert`,
    `_iter_dense`, `_search`, `_search_dense`, `_fetch`); the alias and admin methods are
    their own. Every protocol method that talks to the database, here or in a subclass, retries
    transient failures under ``retry_policy`` (`csr_vdb.adapters._retry`).
    """

    uri: str
    CREATE_WAIT_S = 30.0
    """How long `create_sparse_collection` waits for a target another worker is still making."""
    retry_policy: RetryPolicy | None = RetryPolicy()
    """How transient database failures are retried (None: never)."""

    CACHE_LAYOUTS = False
    """Keep collection layouts between calls: for engines where resolving a name is a request
    (Milvus' describe, a Qdrant server's alias list). See `_described`."""
    ALIAS_TTL_S = 1.0
    """How long an alias's resolution is trusted: a long-lived reader (a `Retriever`) sees an alias
    moved by another process (a cutover) within this time."""
    layout_clock: Callable[[], float] = staticmethod(time.monotonic)
    """The clock of the alias TTL (injectable for tests)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        apply_retries(cls)
        _guard_layouts(cls)

    def _after_failure(self) -> None:
        """Called before a retry: forget what a restarted server may no longer hold (the cached
        layouts; subclasses add their own state and call this)."""
        self.forget_layouts()

    def forget_layouts(self, name: str | None = None) -> None:
        """Drop cached layouts: those of ``name`` (as asked for, or as resolved), or all."""
        cache = self.__dict__.get("_layout_cache")
        if not cache:
            return
        if name is None:
            cache.clear()
            return
        for key, (s, _) in list(cache.items()):
            if key == name or s.name == name:
                cache.pop(key, None)

    def _described(self, collection_name: str) -> Layout:
        """`_layout`, cached when `CACHE_LAYOUTS`, so that a migration describes its source and
        its target once per run and a search costs one request.

        A collection's layout is kept until this store changes that name (create, drop, alias
        moves), a retry starts (`_after_failure`), or a call that used it fails with a
        `StoreError` (the call is then run once more on layouts read afresh: `_guard_layouts`).
        An alias's resolution is kept `ALIAS_TTL_S` only, because another process may move it.
        A collection still being made, or of unknown id type, is not kept.
        """
        if not self.CACHE_LAYOUTS:
            return self._layout(collection_name)
        cache = self.__dict__.setdefault("_layout_cache", {})
        now = self.layout_clock()
        hit = cache.get(collection_name)
        if hit is not None and (hit[1] is None or now < hit[1]):
            _calls.cached = True
            return hit[0]
        s = self._layout(collection_name)
        if s.id_type is not None and self._complete(s):
            cache[collection_name] = (s, None if s.name == collection_name else now + self.ALIAS_TTL_S)
        return s

    def _recoverable(self, exc: BaseException) -> bool:
        """A client error, other than a transient one, that `_after_failure` and a retry cure (default: none)."""
        return False
    SPARSE_INDEX_SETTINGS: tuple[str, ...] = ()
    """The `SparseIndexConfig` fields this engine takes (the others are refused)."""
    DEFAULT_SPARSE_INDEX: SparseIndexConfig | None = None
    """Sparse index settings of a new sparse collection unless the caller gives others."""
    LAZY_PAYLOADS = False
    """`search_candidates` reads payloads only for the hits a caller keeps (`Candidates.select`):
    for engines that read payloads row by row, where hundreds of candidates' payloads cost more
    than a second request for the few kept."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - every adapter overrides it
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def _layout(self, collection_name: str) -> Layout:
        """Resolve an alias and describe the collection; `CollectionNotFoundError` if absent."""
        raise NotImplementedError

    def _count(self, s: Layout) -> int:
        raise NotImplementedError

    def _payload_sample(self, s: Layout) -> dict[str, str]:
        """Payload field -> type name, as `CollectionInfo.payload_schema` reports it."""
        raise NotImplementedError

    def _check_new_name(self, collection_name: str) -> None:
        """Refuse a name the engine cannot hold (default: any name)."""

    def _create_dense(self, name: str, dimension: int, metric: Metric, id_type: IdType, vector_field: str) -> None:
        raise NotImplementedError

    def _same_schema(self, src: Layout, tgt: Layout) -> bool:
        """Engine-specific parts of "the target already has the schema a migration of ``src`` makes"."""
        return True

    def _reuse(self, tgt: Layout) -> None:
        """Called when `create_sparse_collection` finds the target already made (e.g. load it)."""

    def _complete(self, tgt: Layout) -> bool:
        """False while a collection is still being made (created, its indexes not yet)."""
        return True

    def _finish_sparse(
        self, tgt: Layout, src: Layout, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """Complete a target whose making was cut short (default: refuse it)."""
        raise StoreError(f"collection '{tgt.name}' in {self.uri} was left half made: drop it and run again")

    def _native_schema(self, s: Layout) -> dict[str, Any]:
        """`CollectionInfo.native_schema` (default: what the layout knows)."""
        return {
            "id": {"type": s.id_type},
            "vectors": {f: {"dim": dim, "metric": metric} for f, (dim, metric) in s.dense.items()},
            "payload": {},
        }

    def _create_sparse(
        self, name: str, src: Layout, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """Make the sparse collection; ``sparse_index`` holds only settings of `SPARSE_INDEX_SETTINGS`."""
        raise NotImplementedError

    def _check_codes(self, sparse: SparseVectors, ids: Sequence[Id] | None, allow_empty: bool = False) -> Any:
        """Validate codes before they reach the engine; returns what `_upsert` / `_search` take."""
        sparse.validate(ids, allow_empty=allow_empty)
        return sparse

    def _check_payloads(self, s: Layout, ids: list[Id], payloads: list[dict[str, Any]]) -> None:
        """Engine-specific payload rules (reserved keys, values it cannot store exactly)."""

    def _insert_dense(self, s: Layout, f: str, ids: list[Id], vectors: np.ndarray, payloads: list[dict]) -> None:
        raise NotImplementedError

    def _upsert(
        self, s: Layout, ids: list[Id], codes: Any, payloads: list[dict], f: str | None, dense: np.ndarray | None
    ) -> None:
        raise NotImplementedError

    def _iter_dense(self, s: Layout, f: str, batch_size: int, cursor: Id | None) -> Iterator[DensePage]:
        raise NotImplementedError

    def _iter_payloads(
        self, s: Layout, batch_size: int, cursor: Id | None, fields: list[str] | None
    ) -> Iterator[PayloadPage]:
        """Pages of ids and payloads (all keys, or ``fields``) in the order of `_iter_dense`."""
        raise NotImplementedError

    def _delete(self, s: Layout, ids: list[Id]) -> None:
        """Delete these rows (absent ones ignored), returning once the engine applied it."""
        raise NotImplementedError

    def _set_payload(self, s: Layout, ids: list[Id], payloads: list[dict]) -> list[Id]:
        """Overwrite the payloads of the rows that exist; returns the ids that do not."""
        raise NotImplementedError

    def _search(
        self, s: Layout, queries: Any, limit: int, with_payload: bool, with_codes: bool, dense_field: str | None
    ) -> list[list[Found]]:
        """Sparse search: per query the engine's rows (``code`` / ``dense`` filled when asked)."""
        raise NotImplementedError

    def _search_batches(
        self, s: Layout, queries: Any, limit: int, with_payload: bool, with_codes: bool, dense_field: str | None
    ) -> list[FoundBatch]:
        """`_search` as columns, one `FoundBatch` per query (an engine may read its results into
        columns directly; this default goes through `Found` rows)."""
        dim = s.dense[dense_field][0] if dense_field is not None else None
        return [FoundBatch.from_rows(rows, with_payload, with_codes, dim)
                for rows in self._search(s, queries, limit, with_payload, with_codes, dense_field)]

    def _search_dense(
        self, s: Layout, f: str, queries: np.ndarray, limit: int, with_payload: bool, ef: int | None = None
    ) -> list[list[Found]]:
        """Dense search; ``ef`` is the HNSW search breadth (None: the engine's default)."""
        raise NotImplementedError

    def _fetch(self, s: Layout, ids: list[Id], dense_field: str | None, with_sparse: bool) -> Mapping[Id, Found]:
        """Rows by id (each id once); absent ids are left out."""
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol: schema
    def _sparse_layout(self, collection_name: str) -> Layout:
        s = self._described(collection_name)
        if not s.sparse:
            raise StoreError(f"collection '{s.name}' in {self.uri} has no sparse field '{SPARSE_FIELD}'")
        return s

    def describe(self, collection_name: str) -> CollectionInfo:
        s = self._described(collection_name)
        first = s.first_dense
        return CollectionInfo(
            name=s.name,
            dimension=s.dense[first][0] if first is not None else 0,
            metric=s.dense[first][1] if first is not None else "ip",
            vector_field=first,
            id_type=s.id_type or "int",
            count=self._count(s),
            vector_fields={f: dim for f, (dim, _) in s.dense.items()},
            sparse_field=SPARSE_FIELD if s.sparse else None,
            payload_schema=self._payload_sample(s),
            native_schema=self._native_schema(s),
        )

    def count(self, collection_name: str) -> int:
        return self._count(self._described(collection_name))

    def create_dense_collection(
        self,
        collection_name: str,
        dimension: int,
        *,
        metric: Metric = "cosine",
        id_type: IdType = "int",
        vector_field: str = "vector",
    ) -> None:
        """Create an empty dense collection; `StoreError` if the name is taken."""
        self._check_new_name(collection_name)
        if metric not in METRICS:
            raise ConfigError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
        if id_type not in ("int", "str"):
            raise ConfigError(f"unknown id type '{id_type}' (int or str)")
        if int(dimension) <= 0:
            raise DataError(f"dimension must be positive, got {dimension}")
        if self.has_collection(collection_name):
            raise StoreError(f"collection '{collection_name}' already exists in {self.uri}")
        self._create_dense(collection_name, int(dimension), metric, id_type, vector_field)

    def create_sparse_collection(
        self,
        collection_name: str,
        like: str,
        *,
        keep_dense: bool = True,
        vector_field: str | None = None,
        sparse_index: SparseIndexConfig | dict[str, Any] | None = None,
    ) -> None:
        """Create ``collection_name`` with `SPARSE_FIELD` (inner product) and, when ``keep_dense``,
        the dense field of ``like`` under its name and metric; idempotent for that schema,
        `StoreError` when the name holds another. ``sparse_index`` (over `DEFAULT_SPARSE_INDEX`)
        applies when the collection is made; settings the engine lacks are a `ConfigError`.

        Shard workers of one migration create the target at the same time: the one that loses the
        race waits until the winner's collection is complete (`CREATE_WAIT_S` at most, then it
        completes it itself) and uses it.
        """
        index = self._sparse_index(sparse_index)
        src = self._described(like)
        self._check_new_name(collection_name)
        kept = src.dense_field(vector_field, self.uri) if keep_dense and src.dense else None
        dense = {kept: src.dense[kept]} if kept is not None else {}
        waited: float | None = None
        while True:
            if self.has_collection(collection_name):
                tgt = self._layout(collection_name)
                if not self._complete(tgt):
                    waited = time.monotonic() if waited is None else waited
                    if time.monotonic() - waited < self.CREATE_WAIT_S:
                        time.sleep(0.25)
                        continue
                    self._finish_sparse(tgt, src, dense, sparse_index=index)
                    tgt = self._layout(collection_name)
                same = tgt.sparse and tgt.id_type in (None, src.id_type) and tgt.dense == dense
                if not (same and self._same_schema(src, tgt)):
                    raise StoreError(f"collection '{collection_name}' already exists with another schema in {self.uri}")
                self._reuse(tgt)
                return
            try:
                self._create_sparse(collection_name, src, dense, sparse_index=index)
                return
            except StoreError:
                if not self.has_collection(collection_name):
                    raise
                # made meanwhile by another worker of the same migration: check and use it above

    def _sparse_index(self, given: SparseIndexConfig | dict[str, Any] | None) -> SparseIndexConfig:
        """The settings a new sparse collection gets: ``given`` over the adapter's defaults."""
        cfg = SparseIndexConfig.parse(given) or SparseIndexConfig()
        cfg.check_engine(type(self).__name__, self.SPARSE_INDEX_SETTINGS)
        return cfg.merged(self.DEFAULT_SPARSE_INDEX)

    # ------------------------------------------------------------------ protocol: writes
    def _checked_ids(self, s: Layout, ids: Sequence[Id], n: int) -> list[Id]:
        id_type = s.id_type
        if id_type is None:  # unknown until the first write: the batch decides
            id_type = "str" if len(ids) and isinstance(next(iter(ids)), str) else "int"
        return check_ids(ids, id_type, n)

    def insert_dense(
        self,
        collection_name: str,
        ids: Sequence[Id],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]] | None = None,
        *,
        validated: bool = False,
    ) -> None:
        """Upsert dense rows (validated first: nothing is written on error; ``validated``: the
        caller checked the rows, only their shape is checked here)."""
        s = self._described(collection_name)
        f = s.dense_field(None, self.uri)
        vecs = check_dense(vectors, s.dense[f][0], validated=validated)
        ids = self._checked_ids(s, ids, len(vecs))
        rows = check_payloads(payloads, len(vecs))
        self._check_payloads(s, ids, rows)
        self._insert_dense(s, f, ids, vecs, rows)

    def upsert(
        self,
        collection_name: str,
        ids: Sequence[Id],
        sparse: SparseVectors,
        payloads: Sequence[dict[str, Any]] | None = None,
        dense: np.ndarray | None = None,
        *,
        validated: bool = False,
    ) -> None:
        """Validate everything, then write the batch; `DataError` with nothing written on any bad row.

        ``validated``: the caller checked the dense rows already (NaN/inf, all-zero): only their
        shape is checked here. Ids, payloads and codes are checked in any case."""
        s = self._sparse_layout(collection_name)
        ids = self._checked_ids(s, ids, len(sparse))
        codes = self._check_codes(sparse, ids)
        rows = check_payloads(payloads, len(ids))
        self._check_payloads(s, ids, rows)
        f = s.first_dense
        if dense is not None:
            if f is None:
                raise DataError(f"collection '{s.name}' keeps no dense vectors")
            dense = check_dense(dense, s.dense[f][0], ids, validated=validated)
        elif f is not None:
            raise DataError(f"collection '{s.name}' needs dense vectors for field '{f}'")
        self._upsert(s, ids, codes, rows, f, dense)

    def delete(self, collection_name: str, ids: Sequence[Id]) -> None:
        """Delete rows by id (ids checked first; repeated and absent ids are harmless)."""
        s = self._described(collection_name)
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        self._delete(s, self._checked_ids(s, ids, len(ids)))

    def set_payload(
        self, collection_name: str, ids: Sequence[Id], payloads: Sequence[dict[str, Any]]
    ) -> list[Id]:
        """Replace the payloads of existing rows (vectors untouched); returns the ids not found."""
        s = self._described(collection_name)
        rows = check_payloads(payloads, len(payloads))
        ids = self._checked_ids(s, ids, len(rows))
        self._check_payloads(s, ids, rows)
        return self._set_payload(s, ids, rows) if ids else []

    # ------------------------------------------------------------------ protocol: reads
    def iter_payloads(
        self,
        collection_name: str,
        batch_size: int = 1000,
        cursor: Id | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[PayloadPage]:
        """Pages of ids and payloads in the order of `iter_dense`, behind the exclusive ``cursor``."""
        batch_size = check_batch_size(batch_size)
        s = self._described(collection_name)
        check_cursor(cursor, s.id_type, s.name)
        want = None if fields is None else list(dict.fromkeys(fields))
        for page in self._iter_payloads(s, batch_size, cursor, want):
            if want is not None:
                page = PayloadPage(page.ids, [{k: p[k] for k in want if k in p} for p in page.payloads])
            yield page

    def iter_dense(
        self,
        collection_name: str,
        batch_size: int = 1000,
        cursor: Id | None = None,
        vector_field: str | None = None,
        *,
        after: Id | None = None,
    ) -> Iterator[DensePage]:
        """Pages in ascending id order (the engine's) behind the exclusive ``cursor``."""
        cursor = page_cursor(cursor, after)
        batch_size = check_batch_size(batch_size)
        s = self._described(collection_name)
        f = s.dense_field(vector_field, self.uri)
        check_cursor(cursor, s.id_type, s.name)
        yield from self._iter_dense(s, f, batch_size, cursor)

    def search_sparse(
        self,
        collection_name: str,
        queries: SparseVectors,
        limit: int = 10,
        with_payload: bool = False,
    ) -> list[list[Hit]]:
        """Top-``limit`` rows by sparse inner product, best first (rows without a non-zero in
        common with the query are not hits; an empty query row gets none)."""
        return self.search_candidates(collection_name, queries, limit, with_payload=with_payload).hits

    def search_candidates(
        self,
        collection_name: str,
        queries: SparseVectors,
        limit: int = 10,
        *,
        with_payload: bool = False,
        with_codes: bool = False,
        with_dense: bool = False,
    ) -> Candidates:
        """`search_sparse` with the hits' stored codes (over ``queries.dim``) and/or dense vectors."""
        s = self._sparse_layout(collection_name)
        limit = check_limit(limit)
        f = s.first_dense if with_dense else None
        if with_dense and f is None:
            raise ConfigError(f"collection '{s.name}' in {self.uri} keeps no dense vectors")
        checked = self._check_codes(queries, None, allow_empty=True)
        dim = s.dense[f][0] if f is not None else None
        lazy = with_payload and self.LAZY_PAYLOADS
        eager = with_payload and not lazy
        empty = FoundBatch.empty(eager, with_codes, dim)
        try:
            found = self._search_batches(s, checked, limit, eager, with_codes, f) if limit else []
        except _MissingDense as exc:
            raise StoreError(
                f"collection '{s.name}' in {self.uri} has rows without vector '{f}': ids {exc.args[0][:5]}"
            ) from None
        batches = [b.ranked() for b in found] or [empty] * len(queries)
        parts = [empty, *batches]  # never an empty concatenation
        codes = dense = None
        if with_codes:
            codes = SparseVectors.from_flat(
                np.concatenate([b.code_lengths for b in parts]),
                np.concatenate([b.code_indices for b in parts]),
                np.concatenate([b.code_values for b in parts]),
                queries.dim,
            )
        if f is not None:
            dense = np.concatenate([b.dense for b in parts])
        return Candidates(
            codes=codes,
            dense=dense,
            ids=[b.ids for b in batches],
            scores=[b.scores for b in batches],
            payloads=[b.payloads for b in batches] if eager else None,  # type: ignore[misc]
            payload_reader=(lambda ids: {r.id: r.payload for r in self.fetch(s.name, ids)}) if lazy else None,
        )

    def search_dense(
        self,
        collection_name: str,
        queries: np.ndarray,
        limit: int = 10,
        with_payload: bool = False,
        vector_field: str | None = None,
        *,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """Top-``limit`` rows by the dense field's metric, best first (l2: negative squared distance);
        ``ef``: the HNSW search breadth (None: the engine's default; exact indexes ignore it)."""
        s = self._described(collection_name)
        f = s.dense_field(vector_field, self.uri)
        limit = check_limit(limit)
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1):
            raise ConfigError(f"ef must be a positive integer, got {ef!r}")
        q = check_dense(queries, s.dense[f][0], what="queries")
        found = self._search_dense(s, f, q, limit, with_payload, ef=None if ef is None else int(ef)) if limit else [[] for _ in q]
        return [[Hit(r.id, r.score, r.payload if with_payload else None) for r in _ranked(fs, False)] for fs in found]

    def fetch(
        self,
        collection_name: str,
        ids: Sequence[Id],
        with_dense: bool = False,
        with_sparse: bool = False,
        *,
        vector_field: str | None = None,
    ) -> list[Record]:
        """Rows by id in the order asked (a repeated id comes back each time); absent ids are left out.

        ``with_dense`` returns the dense field ``vector_field`` (default: the first, when any)."""
        s = self._described(collection_name)
        ids = list(ids)
        f = None
        if with_dense and (vector_field is not None or s.first_dense is not None):
            f = s.dense_field(vector_field, self.uri)
        asked = list(dict.fromkeys(usable_ids(ids, s.id_type)))
        if not asked:
            return []
        found = self._fetch(s, asked, f, with_sparse and s.sparse)
        records: dict[Id, Record] = {}
        for i, r in found.items():
            records[i] = Record(
                id=i,
                payload=r.payload or {},
                dense=np.asarray(r.dense, dtype=np.float32) if f is not None and r.dense is not None else None,
                sparse=sorted_pair(*r.code) if with_sparse and r.code is not None else None,
            )
        return [records[i] for i in ids if i in records]

    # ------------------------------------------------------------------ helpers
    def _not_found(self, collection_name: str) -> CollectionNotFoundError:
        return CollectionNotFoundError(f"collection '{collection_name}' not found in {self.uri}")


class _Calls(threading.local):
    """The current thread's outermost store call: how deep, and whether it used a cached layout."""

    depth = 0
    cached = False


_calls = _Calls()

_READS_LAYOUTS = (
    "describe", "count", "insert_dense", "create_sparse_collection", "upsert", "delete", "set_payload",
    "search_sparse", "search_candidates", "search_dense", "fetch", "flush",
)
"""Protocol methods that work on a (possibly cached) layout: run once more afresh on a `StoreError`."""
_CHANGES_LAYOUTS = ("create_dense_collection", "create_sparse_collection", "drop", "set_alias", "drop_alias")
"""Protocol methods after which the layouts of their first argument (a collection or an alias) are stale."""


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    reads, changes = fn.__name__ in _READS_LAYOUTS, fn.__name__ in _CHANGES_LAYOUTS

    @functools.wraps(fn)
    def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> Any:
        if not self.CACHE_LAYOUTS or _calls.depth:
            return fn(self, *args, **kwargs)
        name = args[0] if args else next(iter(kwargs.values()), None)
        _calls.depth, _calls.cached = 1, False
        try:
            try:
                return fn(self, *args, **kwargs)
            except StoreError as exc:
                if not (reads and _calls.cached) or is_transient(exc):  # a dead server: the retries had their say
                    raise
                # the cached layout may be stale (a collection dropped, an alias moved elsewhere)
                log.info("%s at %s failed on a cached layout (%s); reading it again", fn.__name__, self.uri, exc)
                self.forget_layouts()
                _calls.cached = False
                return fn(self, *args, **kwargs)
            finally:
                if changes and isinstance(name, str):
                    self.forget_layouts(name)
        finally:
            _calls.depth = 0

    wrapper.__layouts__ = True  # type: ignore[attr-defined]
    return wrapper


def _guard_layouts(cls: type) -> None:
    """Wrap the layout readers and changers that ``cls`` itself defines (outside their retries)."""
    for name in dict.fromkeys(_READS_LAYOUTS + _CHANGES_LAYOUTS):
        fn = cls.__dict__.get(name)
        if callable(fn) and not getattr(fn, "__layouts__", False):
            setattr(cls, name, _guarded(fn))


apply_retries(StoreBase)
_guard_layouts(StoreBase)
