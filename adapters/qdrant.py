"""`QdrantStore`: a Qdrant server (http(s) URL) or qdrant-client's local mode (a directory).

One code path for both, through `qdrant_client.QdrantClient`. Collections and aliases are
Qdrant's own. Dense vectors keep their field name (the unnamed default vector is the field ``""``,
as Qdrant names it) and metric; the sparse codes are the named sparse vector `SPARSE_FIELD`
(plain dot product, no IDF modifier). Ids follow `csr_vdb.adapters._qdrant_common` (shared with
`QdrantEdgeStore`): ints and canonical UUID strings are point ids, other strings are stored under a
``uuid5`` point id with the original in a hidden payload key; ``iter_dense`` pages in point-id order.

Collections made here record their id type in the collection metadata (``{"csr_vdb": {"id_type"}}``);
for other collections it is read off the first point (UUID ids -> "str").

Cosine stays Cosine in every mode, so a target's vector params equal its source's (LangChain's
and LlamaIndex's Qdrant stores refuse a collection whose distance differs from the one they
expect). The local engine re-normalises every cosine vector in float64 on insert, so a unit vector
may come back changed in its last bit (within 3e-8; a server skips vectors that are already unit).
Collections that an earlier version created in local mode with cosine fields stored as Dot (listed
under ``"cosine_as_dot"`` in the metadata) are still read as "cosine": their rows are normalised
here, in float32, only when they are not unit already, and queries are normalised before search.

Local mode is where users prototype: it locks its directory against a second client and searches
by brute force in Python (~1.5 s per sparse query at 100k rows), fine as a migration source.
`upsert` waits for the server to apply the write (``wait=True``) before returning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from csr_vdb.adapters._qdrant_common import (
    METRIC_TO_QDRANT,
    QDRANT_TO_METRIC,
    RESERVED_ID_KEY,
    as_float_lists,
    check_payload_keys,
    l2_score,
    payload_schema,
    restore,
    scroll_start,
    sort_hits,
    sorted_sparse,
    sparse_rows,
    stored_payload,
    to_point_id,
)
from csr_vdb.adapters.base import (
    SPARSE_FIELD,
    CollectionInfo,
    DensePage,
    Hit,
    Id,
    IdType,
    Metric,
    Record,
)
from csr_vdb.adapters.memory import check_ids, check_payloads
from csr_vdb.errors import CollectionNotFoundError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_dense

logger = logging.getLogger(__name__)

T = TypeVar("T")

META_KEY = "csr_vdb"
QUERY_BATCH = 64  # queries per query_batch_points request
SCHEMA_SAMPLE = 100  # points read to report a payload schema


def _point_key(point_id: Any) -> int | str:
    return point_id if isinstance(point_id, int) else str(point_id)


def _public_uri(uri: str) -> str:
    """The URI without user info or query string (where a secret could hide)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return uri


class _Schema:
    """What the adapter needs to know about one collection."""

    def __init__(
        self,
        name: str,
        dense: dict[str, tuple[int, Metric]],
        sparse: bool,
        id_type: IdType | None,
        cosine_as_dot: frozenset[str] = frozenset(),
    ):
        self.name = name
        self.dense = dense  # field -> (dim, metric), in the server's order
        self.sparse = sparse
        self.id_type = id_type  # None: empty and no metadata (a server before collection metadata)
        self.cosine_as_dot = cosine_as_dot  # Dot fields holding cosine rows (made by earlier versions)

    def check_ids(self, ids: Sequence[Id], n: int) -> list[Id]:
        """`check_ids` against the id type; an unknown one is taken from the batch itself."""
        id_type = self.id_type
        if id_type is None:
            id_type = "str" if len(ids) and isinstance(list(ids)[0], str) else "int"
        return check_ids(ids, id_type, n)

    def prepare(self, f: str, vectors: np.ndarray) -> np.ndarray:
        """Rows to store/search for field ``f``: unit-normalised where the adapter does it."""
        if f not in self.cosine_as_dot:
            return vectors
        norms = np.sqrt((vectors.astype(np.float64) ** 2).sum(axis=1))
        off = np.abs(norms - 1.0) > 1e-6  # leave unit rows bit-exact, as a Qdrant server does
        if off.any():
            vectors = vectors.copy()
            vectors[off] = (vectors[off] / norms[off, None]).astype(np.float32)
        return vectors

    def field(self, asked: str, vector_field: str | None) -> str:
        if not self.dense:
            raise StoreError(f"collection '{asked}' has no dense vector field")
        f = vector_field if vector_field is not None else next(iter(self.dense))
        if f not in self.dense:
            raise StoreError(f"collection '{asked}' has no vector field '{f}' (fields: {', '.join(self.dense)})")
        return f


class QdrantStore:
    """A `VectorStore` on qdrant-client: server URL or local-mode directory.

    Args:
        uri: ``http(s)://host:port`` for a server (port 6333 when omitted), anything else is the
            directory of qdrant-client's local mode (created if absent).
        api_key: server API key (never logged nor put in error messages).
        timeout: seconds for each server request; an unreachable server fails within it.

    Collection schemas are cached per name for the life of the store (aliases are resolved on
    every call), so a collection that another client drops and re-creates needs a new store.

    Raises:
        StoreError: the server cannot be reached, or the local directory is used by another client.
    """

    def __init__(self, uri: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self._api_key = api_key
        self._schemas: dict[str, _Schema] = {}  # real name -> schema, dropped with the collection
        self.uri = _public_uri(str(uri))
        self.is_server = urlsplit(str(uri)).scheme in ("http", "https")
        try:
            if self.is_server:
                self._client = QdrantClient(
                    url=str(uri),
                    api_key=api_key,
                    timeout=max(1, math.ceil(timeout)),
                    check_compatibility=False,
                )
            else:
                self._client = QdrantClient(path=str(uri))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreError(f"Qdrant local directory {self.uri} is in use by another process") from exc
            raise StoreError(f"cannot open Qdrant at {self.uri}: {self._clean(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - bad URL, unreadable directory, ...
            raise StoreError(f"cannot open Qdrant at {self.uri}: {self._clean(exc)}") from exc
        if self.is_server:
            try:
                self._client.get_collections()
            except Exception as exc:  # noqa: BLE001
                self._client.close()
                raise StoreError(f"cannot reach Qdrant at {self.uri}: {self._clean(exc)}") from exc

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean(self, exc: BaseException) -> str:
        """One line of an exception's text, with the API key masked."""
        src = getattr(exc, "source", None)  # ResponseHandlingException wraps the transport error
        text = str(src or exc).strip().splitlines()[0] if str(src or exc).strip() else type(exc).__name__
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:300]

    def _call(self, what: str, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (StoreError, DataError):
            raise
        except Exception as exc:  # noqa: BLE001 - client errors of every transport
            raise StoreError(
                f"Qdrant {what} failed for collection '{name}' at {self.uri}: {self._clean(exc)}"
            ) from exc

    def _aliases(self) -> dict[str, str]:
        res = self._call("get_aliases", "*", self._client.get_aliases)
        return {a.alias_name: a.collection_name for a in res.aliases}

    def _collections(self) -> list[str]:
        res = self._call("list", "*", self._client.get_collections)
        return [c.name for c in res.collections]

    def _resolve(self, name: str) -> str:
        return self._aliases().get(name, name)

    def _schema(self, name: str) -> _Schema:
        """Resolve an alias and read the collection's schema; `CollectionNotFoundError` if absent."""
        real = self._resolve(name)
        cached = self._schemas.get(real)
        if cached is not None:
            return cached
        try:
            info = self._client.get_collection(real)
        except Exception as exc:  # noqa: BLE001 - 404 on a server, ValueError in local mode
            if real not in self._collections():
                raise CollectionNotFoundError(f"collection '{name}' not found in {self.uri}") from exc
            raise StoreError(
                f"Qdrant describe failed for collection '{name}' at {self.uri}: {self._clean(exc)}"
            ) from exc
        params = info.config.params
        vectors = params.vectors
        if vectors is None:
            items: dict[str, Any] = {}
        elif isinstance(vectors, dict):
            items = dict(vectors)
        else:
            items = {"": vectors}  # Qdrant's unnamed default vector
        dense: dict[str, tuple[int, Metric]] = {}
        for f, vp in items.items():
            distance = vp.distance.value if hasattr(vp.distance, "value") else str(vp.distance)
            if distance not in QDRANT_TO_METRIC:
                raise StoreError(f"collection '{real}' field '{f}' uses distance {distance}, not supported")
            dense[f] = (int(vp.size), QDRANT_TO_METRIC[distance])  # type: ignore[assignment]
        sparse = SPARSE_FIELD in (params.sparse_vectors or {})
        meta = (getattr(info.config, "metadata", None) or {}).get(META_KEY) or {}
        as_dot = frozenset(f for f in meta.get("cosine_as_dot", []) if f in dense and dense[f][1] == "ip")
        for f in as_dot:
            dense[f] = (dense[f][0], "cosine")
        id_type = meta.get("id_type")
        if id_type not in ("int", "str"):
            recs, _ = self._call("scroll", real, self._client.scroll, real, limit=1, with_payload=False)
            id_type = ("int" if isinstance(recs[0].id, int) else "str") if recs else None
        schema = _Schema(real, dense, sparse, id_type, as_dot)
        if id_type is not None:  # a schema never changes while the collection lives
            self._schemas[real] = schema
        return schema

    @staticmethod
    def _dense_of(vector: Any, f: str) -> list[float] | None:
        if isinstance(vector, dict):
            return vector.get(f)
        return vector if f == "" else None

    def _vectors_config(self, dense: dict[str, tuple[int, Metric]]):
        params = {
            f: qm.VectorParams(size=dim, distance=qm.Distance(METRIC_TO_QDRANT[metric])) for f, (dim, metric) in dense.items()
        }
        if list(params) == [""]:
            return params[""]
        return params or {}

    def _create(self, name: str, dense: dict[str, tuple[int, Metric]], sparse: bool, id_type: IdType) -> None:
        self._schemas.pop(name, None)
        meta: dict[str, Any] = {"id_type": id_type}
        kwargs: dict[str, Any] = dict(
            collection_name=name,
            vectors_config=self._vectors_config(dense),
            sparse_vectors_config={SPARSE_FIELD: qm.SparseVectorParams()} if sparse else None,
        )
        try:
            self._call("create", name, self._client.create_collection, metadata={META_KEY: meta}, **kwargs)
        except StoreError as exc:
            if not self.is_server or "metadata" not in str(exc).lower():
                raise
            # A server older than collection metadata: the id type is then read off the data.
            logger.warning("Qdrant at %s refused collection metadata; creating '%s' without it", self.uri, name)
            self._call("create", name, self._client.create_collection, **kwargs)
        logger.info("created Qdrant collection '%s' at %s", name, self.uri)

    def _exists_any(self, name: str) -> bool:
        return name in self._collections() or name in self._aliases()

    # ------------------------------------------------------------------ protocol: schema
    def list_collections(self) -> list[str]:
        return sorted(self._collections())

    def has_collection(self, collection_name: str) -> bool:
        return self._resolve(collection_name) in self._collections()

    def describe(self, collection_name: str) -> CollectionInfo:
        s = self._schema(collection_name)
        first = next(iter(s.dense), None)
        recs, _ = self._call(
            "scroll", s.name, self._client.scroll, s.name, limit=SCHEMA_SAMPLE, with_payload=True, with_vectors=False
        )
        return CollectionInfo(
            name=s.name,
            dimension=s.dense[first][0] if first is not None else 0,
            metric=s.dense[first][1] if first is not None else "ip",
            vector_field=first,
            id_type=s.id_type or "int",
            count=self._count(s.name),
            vector_fields={f: d for f, (d, _) in s.dense.items()},
            sparse_field=SPARSE_FIELD if s.sparse else None,
            payload_schema=payload_schema(restore(_point_key(r.id), r.payload)[1] for r in recs),
        )

    def _count(self, real: str) -> int:
        return int(self._call("count", real, self._client.count, real, exact=True).count)

    def count(self, collection_name: str) -> int:
        return self._count(self._schema(collection_name).name)

    def create_dense_collection(
        self,
        collection_name: str,
        dimension: int,
        *,
        metric: Metric = "cosine",
        id_type: IdType = "int",
        vector_field: str = "vector",
    ) -> None:
        """Create a collection with one named dense vector; `StoreError` if the name is taken."""
        if metric not in METRIC_TO_QDRANT:
            raise StoreError(f"unsupported metric '{metric}' (choose from {', '.join(METRIC_TO_QDRANT)})")
        if id_type not in ("int", "str"):
            raise StoreError(f"unsupported id type '{id_type}' (int or str)")
        if int(dimension) <= 0:
            raise DataError(f"dimension must be positive, got {dimension}")
        if self._exists_any(collection_name):
            raise StoreError(f"collection '{collection_name}' already exists in {self.uri}")
        self._create(collection_name, {vector_field: (int(dimension), metric)}, False, id_type)

    def create_sparse_collection(
        self,
        collection_name: str,
        like: str,
        *,
        keep_dense: bool = True,
        vector_field: str | None = None,
    ) -> None:
        """Create ``collection_name`` with `SPARSE_FIELD` and (when ``keep_dense``) the dense field of
        ``like`` under the same name and metric; its payload indexes are copied on a server.
        Idempotent for an identical schema, `StoreError` for another."""
        src = self._schema(like)
        dense: dict[str, tuple[int, Metric]] = {}
        if keep_dense and src.dense:
            f = src.field(like, vector_field)
            dense = {f: src.dense[f]}
        if self._exists_any(collection_name):
            tgt = self._schema(collection_name)
            if tgt.id_type not in (None, src.id_type) or tgt.dense != dense or not tgt.sparse:
                raise StoreError(f"collection '{collection_name}' already exists with another schema in {self.uri}")
            return
        self._create(collection_name, dense, True, src.id_type or "int")
        if self.is_server:
            info = self._call("describe", src.name, self._client.get_collection, src.name)
            for key, index in (info.payload_schema or {}).items():
                if index.data_type is None:
                    continue
                self._call(
                    "create_payload_index",
                    collection_name,
                    self._client.create_payload_index,
                    collection_name,
                    field_name=key,
                    field_schema=index.params or index.data_type,
                    wait=True,
                )

    # ------------------------------------------------------------------ protocol: writes
    def insert_dense(
        self,
        collection_name: str,
        ids: Sequence[Id],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        s = self._schema(collection_name)
        f = s.field(collection_name, None)
        vecs = s.prepare(f, check_dense(vectors, s.dense[f][0]))
        ids = s.check_ids(ids, len(vecs))
        payloads = check_payloads(payloads, len(vecs))
        check_payload_keys(payloads, ids)
        points = [
            qm.PointStruct(id=to_point_id(i), vector={f: v}, payload=stored_payload(i, p))
            for i, v, p in zip(ids, as_float_lists(vecs), payloads)
        ]
        self._write(s.name, points)

    def upsert(
        self,
        collection_name: str,
        ids: Sequence[Id],
        sparse: SparseVectors,
        payloads: Sequence[dict[str, Any]] | None = None,
        dense: np.ndarray | None = None,
    ) -> None:
        """Validate everything, then write the batch in one request that returns once applied."""
        s = self._schema(collection_name)
        if not s.sparse:
            raise StoreError(f"collection '{collection_name}' has no sparse field '{SPARSE_FIELD}'")
        ids = s.check_ids(ids, len(sparse))
        rows = sparse_rows(sparse, ids)
        payloads = check_payloads(payloads, len(ids))
        check_payload_keys(payloads, ids)
        f = next(iter(s.dense), None)
        dense_rows: list[list[float]] | None = None
        if dense is not None:
            if f is None:
                raise DataError(f"collection '{collection_name}' keeps no dense vectors")
            dense_rows = as_float_lists(s.prepare(f, check_dense(dense, s.dense[f][0], ids)))
        elif f is not None:
            raise DataError(f"collection '{collection_name}' needs dense vectors for field '{f}'")
        points = []
        for n, i in enumerate(ids):
            vec: dict[str, Any] = {SPARSE_FIELD: qm.SparseVector(indices=rows[n][0], values=rows[n][1])}
            if dense_rows is not None:
                vec[f] = dense_rows[n]  # type: ignore[index]
            points.append(qm.PointStruct(id=to_point_id(i), vector=vec, payload=stored_payload(i, payloads[n])))
        self._write(s.name, points)

    def _write(self, real: str, points: list[qm.PointStruct]) -> None:
        if points:
            self._call("upsert", real, self._client.upsert, real, points=points, wait=True)

    # ------------------------------------------------------------------ protocol: reads
    def iter_dense(
        self,
        collection_name: str,
        batch_size: int = 1000,
        after: Id | None = None,
        vector_field: str | None = None,
    ) -> Iterator[DensePage]:
        """Pages in point-id order (ints ascending; str ids by point id, see `_qdrant_common`)."""
        s = self._schema(collection_name)
        f = s.field(collection_name, vector_field)
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        real = s.name
        skip: Any = None
        offset: Any = None
        if after is not None:
            s.check_ids([after], 1)

            def stored_mapped(pid: str) -> bool:
                recs = self._call(
                    "fetch", real, self._client.retrieve, real, [pid],
                    with_payload=[RESERVED_ID_KEY], with_vectors=False,
                )
                return bool(recs) and (recs[0].payload or {}).get(RESERVED_ID_KEY) == after

            offset, skip, exhausted = scroll_start(after, stored_mapped)  # offsets are inclusive
            if exhausted:
                return
        want_vectors: Any = True if f == "" else [f]
        while True:
            limit = batch_size + (1 if skip is not None else 0)
            records, nxt = self._call(
                "scroll", real, self._client.scroll, real, limit=limit, offset=offset,
                with_payload=True, with_vectors=want_vectors,
            )  # fmt: skip
            if skip is not None:
                records = [r for r in records if _point_key(r.id) != skip]
                skip = None
            if len(records) > batch_size:  # the cursor row was absent: one row too many
                nxt = records[batch_size].id
                records = records[:batch_size]
            if records:
                ids, vecs, pls = [], [], []
                for r in records:
                    id_, payload = restore(_point_key(r.id), r.payload)
                    v = self._dense_of(r.vector, f)
                    if v is None:
                        raise StoreError(f"collection '{real}' has a row without vector '{f}' at {self.uri}: id {id_}")
                    ids.append(id_)
                    vecs.append(v)
                    pls.append(payload)
                yield DensePage(ids=ids, vectors=np.asarray(vecs, dtype=np.float32), payloads=pls)
            if nxt is None:
                return
            offset = nxt

    def search_sparse(
        self,
        collection_name: str,
        queries: SparseVectors,
        limit: int = 10,
        with_payload: bool = False,
    ) -> list[list[Hit]]:
        """Top-``limit`` by sparse dot product, sent in batches of `QUERY_BATCH` queries.

        Args:
            queries: ``[q, width]`` query codes (rows without a non-zero get no hits).
        """
        s = self._schema(collection_name)
        if not s.sparse:
            raise StoreError(f"collection '{collection_name}' has no sparse field '{SPARSE_FIELD}'")
        rows = sparse_rows(queries, allow_empty=True)
        q = [qm.SparseVector(indices=i, values=v) if i else None for i, v in rows]
        return self._search(s, q, SPARSE_FIELD, limit, with_payload, positive_only=True, metric="ip")

    def search_dense(
        self,
        collection_name: str,
        queries: np.ndarray,
        limit: int = 10,
        with_payload: bool = False,
        vector_field: str | None = None,
    ) -> list[list[Hit]]:
        """Top-``limit`` by the dense field's metric (l2 scores are negative squared distances).

        Args:
            queries: ``[q, dimension]`` float32.
        """
        s = self._schema(collection_name)
        f = s.field(collection_name, vector_field)
        q = s.prepare(f, check_dense(queries, s.dense[f][0], what="queries"))
        return self._search(s, as_float_lists(q), f, limit, with_payload, positive_only=False, metric=s.dense[f][1])

    def _search(self, s: _Schema, queries: list, using: str, limit, with_payload, positive_only, metric):
        out: list[list[Hit]] = [[] for _ in queries]
        if limit <= 0:
            return out
        if with_payload:
            wp: Any = True
        elif s.id_type == "str":
            wp = [RESERVED_ID_KEY]  # mapped str ids live in the payload
        else:
            wp = False
        todo = [n for n, q in enumerate(queries) if q is not None]
        for a in range(0, len(todo), QUERY_BATCH):
            chunk = todo[a : a + QUERY_BATCH]
            reqs = [
                qm.QueryRequest(
                    query=queries[n], using=using or None, limit=int(limit), with_payload=wp, with_vector=False
                )
                for n in chunk
            ]
            res = self._call("search", s.name, self._client.query_batch_points, s.name, requests=reqs)
            for n, r in zip(chunk, res):
                hits = []
                for p in r.points:
                    id_, payload = restore(_point_key(p.id), p.payload)
                    score = l2_score(p.score) if metric == "l2" else float(p.score)
                    hits.append(Hit(id_, score, payload if with_payload else None))
                out[n] = sort_hits(hits, positive_only)
        return out

    def fetch(
        self,
        collection_name: str,
        ids: Sequence[Id],
        with_dense: bool = False,
        with_sparse: bool = False,
    ) -> list[Record]:
        s = self._schema(collection_name)
        ids = list(ids)
        if not ids:
            return []
        want = {"int": (int,), "str": (str,), None: (int, str)}[s.id_type]
        usable = [
            i for i in ids if isinstance(i, want) and not isinstance(i, bool) and not (isinstance(i, int) and i < 0)
        ]
        f = next(iter(s.dense), None)
        names = ([f] if with_dense and f is not None else []) + ([SPARSE_FIELD] if with_sparse and s.sparse else [])
        pids = list(dict.fromkeys(to_point_id(i) for i in usable))
        if not pids:
            return []
        recs = self._call(
            "fetch", s.name, self._client.retrieve, s.name, pids, with_payload=True,
            with_vectors=(True if names == [""] else names) if names else False,
        )  # fmt: skip
        found: dict[Id, Record] = {}
        for r in recs:
            id_, payload = restore(_point_key(r.id), r.payload)
            dense_v = self._dense_of(r.vector, f) if with_dense and f is not None else None
            sp = r.vector.get(SPARSE_FIELD) if with_sparse and isinstance(r.vector, dict) else None
            if sp is not None:
                sp = sorted_sparse(sp.indices, sp.values)
            found[id_] = Record(
                id=id_,
                payload=payload,
                dense=np.asarray(dense_v, dtype=np.float32) if dense_v is not None else None,
                sparse=sp,
            )
        return [found[i] for i in ids if i in found]

    # ------------------------------------------------------------------ protocol: aliases, admin
    def get_alias(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def set_alias(self, alias: str, collection_name: str) -> None:
        """Create or move ``alias`` in one atomic alias update."""
        if alias in self._collections():
            raise StoreError(f"alias '{alias}' would shadow a collection of that name in {self.uri}")
        real = self._schema(collection_name).name
        ops: list[Any] = []
        if alias in self._aliases():
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=real, alias_name=alias)))
        self._call("set_alias", real, self._client.update_collection_aliases, change_aliases_operations=ops)
        logger.info("alias '%s' -> '%s' at %s", alias, real, self.uri)

    def drop_alias(self, alias: str) -> None:
        if alias in self._aliases():
            op = qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
            self._call("drop_alias", alias, self._client.update_collection_aliases, change_aliases_operations=[op])

    def drop(self, collection_name: str) -> None:
        """Delete a collection (not an alias) and the aliases pointing at it."""
        if collection_name not in self._collections():
            return
        pointing = [a for a, c in self._aliases().items() if c == collection_name]
        if pointing:
            ops = [qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=a)) for a in pointing]
            self._call(
                "drop_alias", collection_name, self._client.update_collection_aliases, change_aliases_operations=ops
            )
        self._schemas.pop(collection_name, None)
        self._call("drop", collection_name, self._client.delete_collection, collection_name)
        logger.info("dropped Qdrant collection '%s' at %s", collection_name, self.uri)

    def flush(self, collection_name: str) -> None:
        """Writes are applied when `upsert` returns (``wait=True``) and local mode persists each
        write, so this only checks that the collection exists."""
        self._schema(collection_name)

    def close(self) -> None:
        """Close the client (releases local mode's directory lock)."""
        try:
            self._client.close()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"closing Qdrant at {self.uri} failed: {self._clean(exc)}") from exc
