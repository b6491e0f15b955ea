"""The store contract: the `VectorStore` protocol, the records that cross it and their checks.

Every part of csr-vdb that reads or writes a database goes through this protocol: the retriever
and collection evaluation (core), the migration engine, the CLI. It lives in the core so that
they type against it without importing an adapter; the implementations (`csr_vdb.adapters`:
Milvus, Qdrant, Qdrant Edge, and the in-memory reference) are the only modules that import a
database client, and `csr_vdb.adapters.base` re-exports everything here.

Conventions every implementation follows (the contract suite in tests/adapters checks them):
- ids are ``int`` (non-negative, < 2**63) or ``str`` (Milvus VARCHAR / Qdrant UUID); one type per
  collection, reported by `CollectionInfo.id_type`.
- dense vectors cross as float32 numpy arrays ``[n, dim]``; sparse vectors as `SparseVectors`
  (each database's own sparse format stays inside its adapter).
- payloads are JSON-compatible dicts, copied exactly (nested dicts, lists, unicode, None).
- the sparse vector of a migrated collection is named `SPARSE_FIELD` ("csr") and scored by
  inner product; dense vectors keep their source field name and metric.
- `iter_dense` yields pages in ascending primary-key order; ``cursor`` is exclusive (the last id
  of the previous page, `DensePage.cursor`), so a reader can resume anywhere.
- writes validate their input first and raise `DataError` with nothing written.
- aliases are names that resolve to a collection in every read method.
- client exceptions are translated to `StoreError` / `CollectionNotFoundError` naming the
  collection and the URI (never a token or API key: see `strip_credentials`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from csr_vdb.errors import ConfigError, DataError
from csr_vdb.sparse import SparseVectors

__all__ = [
    "METRICS",
    "SPARSE_FIELD",
    "STORE_KINDS",
    "StoreKind",
    "Candidates",
    "CollectionInfo",
    "DensePage",
    "Hit",
    "Id",
    "IdType",
    "Metric",
    "PayloadPage",
    "Record",
    "SparseIndexConfig",
    "VectorStore",
    "check_batch_size",
    "check_cursor",
    "check_ids",
    "check_limit",
    "check_payloads",
    "page_cursor",
    "redact_uri",
    "strip_credentials",
    "usable_ids",
]

SPARSE_FIELD = "csr"
"""Name of the sparse vector field/named vector in every collection csr-vdb writes."""

StoreKind = Literal["milvus", "qdrant", "qdrant-edge"]
STORE_KINDS: tuple[str, ...] = get_args(StoreKind)
"""The databases a user can name (``--store``); `csr_vdb.adapters.open_store` also takes "memory"."""

Id = int | str
Metric = Literal["cosine", "ip", "l2"]
IdType = Literal["int", "str"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")


@dataclass(frozen=True)
class CollectionInfo:
    """What `VectorStore.describe` reports about a collection.

    Attributes:
        name: the collection's real name (an alias is resolved).
        dimension: dimension of the dense vector field (0 when it has none).
        metric: metric of the dense vector field.
        vector_field: name of the (first) dense vector field, or None.
        vector_fields: all dense vector fields, name -> dimension.
        sparse_field: name of the sparse vector field, or None.
        id_type: "int" or "str".
        count: number of rows.
        payload_schema: payload field -> type name as the database reports it ("dynamic" for
            schemaless payloads).
        native_schema: what a client of the database sees of the collection, as the database's own
            client reports it (JSON values): ``{"id": ..., "vectors": {dense field: ...},
            "payload": ...}`` (Qdrant adds ``"vectors_form"``: "unnamed" for a single unnamed
            vector, "named" for a dict of them). The sparse field `SPARSE_FIELD` is not part of
            it, so a migrated collection's equals its source's (the dense fields it did not keep
            left out): `csr_vdb.migrations.verify` compares them.
    """

    name: str
    dimension: int
    metric: Metric
    vector_field: str | None
    id_type: IdType
    count: int
    vector_fields: dict[str, int] = field(default_factory=dict)
    sparse_field: str | None = None
    payload_schema: dict[str, str] = field(default_factory=dict)
    native_schema: dict[str, Any] = field(default_factory=dict)


class _Page:
    """What the pages of a scan share: ids in ascending order, and the cursor behind them."""

    ids: list[Id]

    @property
    def cursor(self) -> Id:
        return self.ids[-1]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class DensePage(_Page):
    """One page of `VectorStore.iter_dense`: rows in ascending id order.

    Attributes:
        ids: the primary keys.
        vectors: ``[len(ids), dimension]`` float32.
        payloads: one dict per row (all non-vector fields).
        cursor: pass as ``cursor`` to continue behind this page (= ``ids[-1]``).
    """

    ids: list[Id]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]


@dataclass(frozen=True)
class PayloadPage(_Page):
    """One page of `VectorStore.iter_payloads`: ids (ascending, as `DensePage`) and payloads, no vectors.

    Attributes:
        ids: the primary keys.
        payloads: one dict per row (all non-vector fields, or the ones asked for).
        cursor: pass as ``cursor`` to continue behind this page (= ``ids[-1]``).
    """

    ids: list[Id]
    payloads: list[dict[str, Any]]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: Id
    score: float
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class Record:
    """A row returned by `VectorStore.fetch`.

    Attributes:
        id: primary key.
        payload: non-vector fields.
        dense: dense vector (float32 ``[dimension]``) when requested and present.
        sparse: sparse vector as ``(indices, values)`` sorted by index, when requested and present.
    """

    id: Id
    payload: dict[str, Any]
    dense: np.ndarray | None = None
    sparse: tuple[list[int], list[float]] | None = None


class Candidates:
    """What `VectorStore.search_candidates` returns: the hits of a batch of queries and, row-aligned
    with those hits taken in query order, the vectors stored with them.

    Held as columns (ids, scores, payloads per query), so that a caller that re-ranks hundreds of
    candidates builds `Hit` objects, and may read payloads, only for the few it keeps (`select`);
    `hits` builds them all.

    Args:
        hits: one list of `Hit` per query, best first (or give ``ids``/``scores``/``payloads``).
        codes: the hits' sparse codes ``[total hits, width]`` when asked for, else None.
        dense: the hits' dense vectors ``[total hits, dimension]`` float32 when asked for, else None.
        ids: per query the hits' ids, best first.
        scores: per query the hits' scores ``[hits]`` float64.
        payloads: per query the hits' payloads; None when no payloads were asked for, or when
            ``payload_reader`` reads them on demand.
        payload_reader: ``ids -> {id: payload}``: reads the payloads of the hits a caller keeps
            (a store whose engine reads payloads per row, so that hundreds of candidates cost it
            nothing); ids it does not return get an empty payload.
    """

    __slots__ = ("ids", "scores", "codes", "dense", "_payloads", "_reader", "_hits")

    def __init__(
        self,
        hits: list[list[Hit]] | None = None,
        codes: SparseVectors | None = None,
        dense: np.ndarray | None = None,
        *,
        ids: list[list[Id]] | None = None,
        scores: list[np.ndarray] | None = None,
        payloads: list[list[dict[str, Any] | None]] | None = None,
        payload_reader: Callable[[list[Id]], dict[Id, dict[str, Any]]] | None = None,
    ) -> None:
        if hits is not None:
            ids = [[h.id for h in hs] for hs in hits]
            scores = [np.fromiter((h.score for h in hs), np.float64, len(hs)) for hs in hits]
            payloads = [[h.payload for h in hs] for hs in hits]
        if ids is None or scores is None or len(ids) != len(scores):
            raise DataError("Candidates need hits, or ids and scores of the same number of queries")
        self.ids = ids
        self.scores = scores
        self.codes = codes
        self.dense = dense
        self._payloads = payloads
        self._reader = payload_reader
        self._hits = hits

    @property
    def lengths(self) -> list[int]:
        """Hits per query: the rows of `codes` / `dense` that belong to each query, in order."""
        return [len(i) for i in self.ids]

    @property
    def payloads(self) -> list[list[dict[str, Any] | None]] | None:
        """Per query the hits' payloads (read now when read on demand), or None."""
        if self._payloads is None and self._reader is not None:
            read = self._read([i for row in self.ids for i in row])
            self._payloads = [[read.get(i, {}) for i in row] for row in self.ids]
        return self._payloads

    @property
    def hits(self) -> list[list[Hit]]:
        """One list of `Hit` per query, best first (built on first use)."""
        if self._hits is None:
            self._hits = self.select([(range(len(i)), None) for i in self.ids])
        return self._hits

    def select(self, ranked: Sequence[tuple[Iterable[int], Iterable[float] | None]]) -> list[list[Hit]]:
        """Per query the hits at the given positions (in that order), with the given scores
        instead of the database's (a re-ranking's; None keeps them); payloads are read for these
        hits only.

        Args:
            ranked: one ``(positions, scores or None)`` per query.
        """
        picked = [[int(j) for j in pos] for pos, _ in ranked]
        payloads = self._payloads
        lookup: dict[Id, dict[str, Any]] | None = None
        if payloads is None and self._reader is not None:
            lookup = self._read([self.ids[q][j] for q, pos in enumerate(picked) for j in pos])
        out = []
        for q, (pos, (_, sc)) in enumerate(zip(picked, ranked)):
            ids = self.ids[q]
            values = self.scores[q][pos].tolist() if sc is None else [float(x) for x in sc]
            if lookup is not None:
                row = [lookup.get(ids[j], {}) for j in pos]
            elif payloads is not None:
                row = [payloads[q][j] for j in pos]
            else:
                row = [None] * len(pos)
            out.append([Hit(ids[j], v, p) for j, v, p in zip(pos, values, row)])
        return out

    def _read(self, ids: list[Id]) -> dict[Id, dict[str, Any]]:
        wanted = list(dict.fromkeys(ids))
        return self._reader(wanted) if wanted and self._reader is not None else {}


@dataclass(frozen=True)
class SparseIndexConfig:
    """Engine settings of a sparse collection's inverted index (`VectorStore.create_sparse_collection`).

    Each engine takes its own settings and refuses the others with `ConfigError`; None leaves a
    setting to the adapter's default (``DEFAULT_SPARSE_INDEX``). They change how the database
    finds its candidates, never the stored codes that `Retriever` re-scores them with.

    Attributes:
        datatype: Qdrant: value type of the index ("float32", "float16", "uint8"); "uint8"
            quantises the index weights (a smaller index, approximate search scores) while the
            stored vectors returned with the hits stay exact float32.
        memory: Qdrant: where the index lives: "pinned" (RAM), "cached" or "cold" (memory-mapped
            from disk, in the page cache while used / not held).
        full_scan_threshold: Qdrant: below this many matching points a search scans instead of
            using the index.
        inverted_index_algo: Milvus: "TAAT_NAIVE", "DAAT_WAND" or "DAAT_MAXSCORE" (Milvus Lite
            implements TAAT_NAIVE only and refuses the others).
        drop_ratio_build: Milvus: share of the smallest values left out of the index at build
            time (approximate; Milvus Lite takes 0 only).
    """

    datatype: Literal["float32", "float16", "uint8"] | None = None
    memory: Literal["pinned", "cached", "cold"] | None = None
    full_scan_threshold: int | None = None
    inverted_index_algo: Literal["TAAT_NAIVE", "DAAT_WAND", "DAAT_MAXSCORE"] | None = None
    drop_ratio_build: float | None = None

    def __post_init__(self) -> None:
        choices = {"datatype": ("float32", "float16", "uint8"), "memory": ("pinned", "cached", "cold"),
                   "inverted_index_algo": ("TAAT_NAIVE", "DAAT_WAND", "DAAT_MAXSCORE")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"sparse index {name} must be one of {', '.join(allowed)}, got {value!r}")
        t = self.full_scan_threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0):
            raise ConfigError(f"sparse index full_scan_threshold must be a non-negative integer, got {t!r}")
        r = self.drop_ratio_build
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1):
            raise ConfigError(f"sparse index drop_ratio_build must be in [0, 1), got {r!r}")

    @classmethod
    def parse(cls, value: SparseIndexConfig | dict[str, Any] | None) -> SparseIndexConfig | None:
        """A config from itself, a mapping of its fields, or None; `ConfigError` on unknown keys."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"sparse_index must be a SparseIndexConfig or a dict, got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown sparse index setting(s) {', '.join(unknown)} (use {', '.join(cls.__dataclass_fields__)})"
            )
        return cls(**value)

    def given(self) -> dict[str, Any]:
        """The settings that are set (not None)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def merged(self, defaults: SparseIndexConfig | None) -> SparseIndexConfig:
        """These settings over ``defaults`` (an adapter's)."""
        return SparseIndexConfig(**{**(defaults.given() if defaults else {}), **self.given()})

    def check_engine(self, engine: str, takes: Iterable[str]) -> None:
        """Refuse settings the engine does not have (`ConfigError` naming them)."""
        other = sorted(set(self.given()) - set(takes))
        if other:
            raise ConfigError(f"{engine} has no sparse index setting {', '.join(other)} (it takes: {', '.join(takes) or 'none'})")


@runtime_checkable
class VectorStore(Protocol):
    """The few operations csr-vdb needs from a vector database."""

    uri: str
    """Where the store lives (file, directory or URL), never containing a secret."""

    def list_collections(self) -> list[str]:
        """Names of all collections (not aliases)."""
        ...

    def has_collection(self, collection_name: str) -> bool:
        """True if a collection or alias of that name exists."""
        ...

    def describe(self, collection_name: str) -> CollectionInfo:
        """Schema and row count; raises `CollectionNotFoundError` if absent."""
        ...

    def count(self, collection_name: str) -> int:
        """Exact number of rows."""
        ...

    def create_dense_collection(
        self,
        collection_name: str,
        dimension: int,
        *,
        metric: Metric = "cosine",
        id_type: IdType = "int",
        vector_field: str = "vector",
    ) -> None:
        """Create an empty dense collection with schemaless payloads (demo data, tests)."""
        ...

    def insert_dense(
        self,
        collection_name: str,
        ids: Sequence[Id],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]] | None = None,
        *,
        validated: bool = False,
    ) -> None:
        """Upsert dense rows into a collection made by `create_dense_collection` (``validated``:
        the caller checked the rows for NaN/inf and all-zero vectors; only their shape is checked)."""
        ...

    def iter_dense(
        self,
        collection_name: str,
        batch_size: int = 1000,
        cursor: Id | None = None,
        vector_field: str | None = None,
        *,
        after: Id | None = None,
    ) -> Iterator[DensePage]:
        """Stream ``(ids, vectors, payloads)`` pages in ascending id order behind ``cursor``
        (``after`` is its deprecated name)."""
        ...

    def iter_payloads(
        self,
        collection_name: str,
        batch_size: int = 1000,
        cursor: Id | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[PayloadPage]:
        """Stream ``(ids, payloads)`` pages in the order of `iter_dense`, without vectors: an ids
        scan (``fields=[]``), a scan of a few payload fields (absent keys left out), or of whole
        payloads (``fields=None``). Works on any collection, sparse-only ones included."""
        ...

    def create_sparse_collection(
        self,
        collection_name: str,
        like: str,
        *,
        keep_dense: bool = True,
        vector_field: str | None = None,
        sparse_index: SparseIndexConfig | dict[str, Any] | None = None,
    ) -> None:
        """Create ``collection_name`` with the sparse field `SPARSE_FIELD`, the id type and payload
        schema of ``like`` and (when ``keep_dense``) its dense field ``vector_field``.

        ``sparse_index``: engine settings of the sparse index (`SparseIndexConfig`, over the
        adapter's defaults); they apply when the collection is made.

        Idempotent when the collection already exists with that schema; raises `StoreError`
        when it exists with another schema.
        """
        ...

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
        """Write rows (idempotent by id). Validates everything first; nothing is written on error.

        ``validated=True``: the caller has checked the dense rows (NaN/inf, all-zero) itself, so
        only their shape is checked again. Returns only once the database acknowledged the write
        durably enough to be read back.
        """
        ...

    def delete(self, collection_name: str, ids: Sequence[Id]) -> None:
        """Delete rows by id; ids that do not exist are ignored (idempotent).

        Validates the ids first (`DataError`, nothing deleted); returns once the database
        acknowledged the delete durably enough that reads no longer see the rows.
        """
        ...

    def set_payload(
        self, collection_name: str, ids: Sequence[Id], payloads: Sequence[dict[str, Any]]
    ) -> list[Id]:
        """Replace the whole payload of existing rows, their vectors untouched.

        Validates everything first (`DataError`, nothing written). Returns the ids that do not
        exist: nothing is written for them (a payload alone cannot make a row).
        """
        ...

    def search_sparse(
        self,
        collection_name: str,
        queries: SparseVectors,
        limit: int = 10,
        with_payload: bool = False,
    ) -> list[list[Hit]]:
        """Top-``limit`` rows by inner product of `SPARSE_FIELD`, one list per query, best first."""
        ...

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
        """`search_sparse`, returning the hits' stored codes and/or dense vectors with them (in the
        same request where the engine can), for exact re-ranking of the candidates."""
        ...

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
        """Top-``limit`` rows by the dense field's metric, one list per query, best first.

        ``ef``: the HNSW search breadth where the field has an HNSW index (larger: higher recall,
        slower); None leaves the engine's default. Ignored by exact (brute-force) indexes.
        """
        ...

    def fetch(
        self,
        collection_name: str,
        ids: Sequence[Id],
        with_dense: bool = False,
        with_sparse: bool = False,
        *,
        vector_field: str | None = None,
    ) -> list[Record]:
        """Rows by id in the order asked; ids that do not exist are left out. ``with_dense``
        returns the dense field ``vector_field`` (default: the first)."""
        ...

    def get_alias(self, alias: str) -> str | None:
        """The collection an alias points to, or None."""
        ...

    def set_alias(self, alias: str, collection_name: str) -> None:
        """Create or move ``alias`` to point at ``collection_name`` (atomic where the DB allows)."""
        ...

    def drop_alias(self, alias: str) -> None:
        """Remove an alias (no error if absent)."""
        ...

    def drop(self, collection_name: str) -> None:
        """Delete a collection (no error if absent)."""
        ...

    def flush(self, collection_name: str) -> None:
        """Make recent writes durable and searchable (index build / optimize where needed)."""
        ...

    def close(self) -> None:
        """Release files, locks and connections."""
        ...


# ------------------------------------------------------------------------------------ checks
def check_ids(ids: Sequence[Id], id_type: IdType, n: int) -> list[Id]:
    """A batch of ids as a list, checked against the collection's id type and the row count.

    Raises:
        DataError: a count other than ``n``, repeated ids, ids of the other type (bools are not
            ints) or integer ids outside ``[0, 2**63)``.
    """
    ids = list(ids)
    if len(ids) != n:
        raise DataError(f"got {len(ids)} ids for {n} vectors")
    if len(set(ids)) != len(ids):
        seen: set[Id] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        raise DataError(f"duplicate ids in one batch: {dups[:5]}", dups)
    want = int if id_type == "int" else str
    bad = [i for i in ids if not isinstance(i, want) or isinstance(i, bool)]
    if bad:
        raise DataError(f"ids must be {id_type}, got {bad[:5]}", bad)
    if id_type == "int":
        neg = [i for i in ids if not 0 <= i < 2**63]  # type: ignore[operator]
        if neg:
            raise DataError(f"integer ids must be in [0, 2**63), got {neg[:5]}", neg)
    return ids


def usable_ids(ids: Sequence[Any], id_type: IdType | None) -> list[Id]:
    """The ids of a read request that can exist in a collection of ``id_type`` (None: either type);
    the others cannot match a row and are left out, as missing ids are."""
    want: tuple[type, ...] = {"int": (int,), "str": (str,)}.get(id_type or "", (int, str))
    return [i for i in ids if isinstance(i, want) and not isinstance(i, bool) and not (isinstance(i, int) and i < 0)]


def check_payloads(payloads: Sequence[dict[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    """Payloads as a list of ``n`` JSON-serialisable dicts (``None``: ``n`` empty dicts).

    Raises:
        DataError: a count other than ``n``, a non-dict, or a value JSON cannot hold.
    """
    if payloads is None:
        return [{} for _ in range(n)]
    payloads = list(payloads)
    if len(payloads) != n:
        raise DataError(f"got {len(payloads)} payloads for {n} rows")
    for p in payloads:
        if not isinstance(p, dict):
            raise DataError(f"payloads must be dicts, got {type(p).__name__}")
    try:
        json.dumps(payloads)
    except (TypeError, ValueError) as exc:
        raise DataError(f"payloads must be JSON-serialisable: {exc}") from exc
    return payloads


def check_limit(limit: int) -> int:
    """A search's ``limit`` as a non-negative int (0 asks for no hits); `ConfigError` otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ConfigError(f"limit must be a non-negative integer, got {limit!r}")
    return int(limit)


def check_batch_size(batch_size: int) -> int:
    """A page size as a positive int; `ConfigError` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
    return int(batch_size)


def check_cursor(cursor: Id | None, id_type: IdType | None, collection_name: str) -> None:
    """A page cursor must be an id of the collection's type (`DataError` otherwise)."""
    if cursor is None or id_type is None:
        return
    want = int if id_type == "int" else str
    if not isinstance(cursor, want) or isinstance(cursor, bool):
        raise DataError(f"cursor {cursor!r} is not a {id_type} id of collection '{collection_name}'")


def page_cursor(cursor: Id | None, after: Id | None) -> Id | None:
    """The page cursor of an `iter_dense` call that may still use the deprecated ``after=``.

    Raises:
        ConfigError: both were given.
    """
    if after is None:
        return cursor
    if cursor is not None:
        raise ConfigError("give the page cursor once: cursor= (after= is its deprecated name)")
    warnings.warn("iter_dense(after=...) is deprecated: use cursor=", DeprecationWarning, stacklevel=3)
    return after


# ------------------------------------------------------------------------------ URIs
def _netloc(host: str | None, port: int | None, user: str | None = None) -> str:
    host = host or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    out = f"{host}:{port}" if port else host
    return f"{user}@{out}" if user is not None else out


_SECRET_PARAMS = ("token", "key", "password", "passwd", "pwd", "pass", "secret", "auth", "credential", "signature")


def _secret_param(name: str) -> bool:
    """True for a query parameter that may carry a secret (``token``, ``api_key``, ``password`` ...)."""
    low = name.lower().replace("-", "_")
    return any(word in low for word in _SECRET_PARAMS) or low == "sig"


def _query(query: str, secret: str | None) -> str:
    """A query string with its secret-looking parameters dropped (``secret=None``) or masked."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if secret is None:
        return urlencode([(k, v) for k, v in pairs if not _secret_param(k)])
    return urlencode([(k, secret if _secret_param(k) else v) for k, v in pairs], safe="*")


def strip_credentials(uri: str, *, keep_query: bool = False) -> str:
    """The URI without anything secret, for messages, logs, `VectorStore.uri` and state names.

    A URL (``scheme://...``) is rebuilt from its scheme, host (lower case), port and path: its
    user-info (``user:password@``), its fragment and, unless ``keep_query``, its query string
    (where tokens and API keys are passed too) are left out, so the result is also one spelling
    of one server. With ``keep_query`` the query's parameters that may carry a secret (a name
    with token, key, password, secret, auth ...) are still left out. Anything else (a file or
    folder path) is returned unchanged.
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # a malformed URL: keep only what precedes any user-info or query
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://{rest.rsplit('@', 1)[-1].split('?', 1)[0].split('#', 1)[0]}"
    # Rebuilt by hand: urlunsplit turns "memory://" into "memory:".
    out = f"{parts.scheme}://{_netloc(parts.hostname, port)}{parts.path}"
    query = _query(parts.query, None) if keep_query and parts.query else ""
    return f"{out}?{query}" if query else out


def redact_uri(uri: str) -> str:
    """The URI with a password in its user-info and the values of secret-looking query parameters
    replaced by ``***`` (user name, host, path and other parameters kept), for showing a user
    which account a setting names."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return strip_credentials(uri)
    secret_query = any(_secret_param(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.password is None and not secret_query:
        return uri
    user = f"{parts.username or ''}:***" if parts.password is not None else parts.username
    netloc = _netloc(parts.hostname, port, user)
    out = f"{parts.scheme}://{netloc}{parts.path}"
    query = _query(parts.query, "***") if parts.query else ""
    out += f"?{query}" if query else ""
    return out + (f"#{parts.fragment}" if parts.fragment else "")
