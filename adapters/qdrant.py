"""`QdrantStore`: a Qdrant server (http(s) URL) or qdrant-client's local mode (a directory).

One code path for both, through `qdrant_client.QdrantClient`. Collections and aliases are
Qdrant's own. Dense vectors keep their field name (the unnamed default vector is the field ``""``,
as Qdrant names it) and metric; the sparse codes are the named sparse vector `SPARSE_FIELD`
(plain dot product, no IDF modifier). Ids follow `csr_vdb.adapters._qdrant_common` (shared with
`QdrantEdgeStore`): ints and canonical UUID strings are point ids, other strings are stored under a
``uuid5`` point id with the original in a hidden payload key; ``iter_dense`` pages in point-id order.

Collections made here record their id type in the collection metadata (``{"csr_vdb": {"id_type"}}``);
for other collections it is read off the first point (UUID ids -> "str").

A sparse target keeps its source's schema as qdrant-client reports it: the kept dense field's
`VectorParams` copied whole (size, distance, HNSW, quantization, on-disk, datatype), in the same
form (a single unnamed vector stays unnamed; a dict of named vectors, the name ``""`` included,
stays a dict), and the payload indexes. Cosine stays Cosine in every mode, so LangChain's and
LlamaIndex's Qdrant stores, which check the distance, accept a migrated collection. The local
engine re-normalises every cosine vector in float64 on insert, so a unit vector may come back
changed in its last bit (within 3e-8; a server skips vectors that are already unit). Collections
that an earlier version created in local mode with cosine fields stored as Dot (listed under
``"cosine_as_dot"`` in the metadata) are still read as "cosine": their rows are normalised here,
in float32, only when they are not unit already, and queries are normalised before search.

Local mode is where users prototype: it locks its directory against a second client and searches
by brute force in Python (slow at scale), fine as a migration source.
`upsert` waits for the server to apply the write (``wait=True``) before returning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from csr_vdb.adapters._common import Layout
from csr_vdb.adapters._qdrant_common import (
    DEFAULT_QDRANT_SPARSE_INDEX,
    METRIC_TO_QDRANT,
    QDRANT_SPARSE_SETTINGS,
    QDRANT_TO_METRIC,
    QdrantBase,
)
from csr_vdb.adapters._retry import DEFAULT_RETRIES, RetryPolicy
from csr_vdb.errors import CollectionNotFoundError, DataError, StoreError
from csr_vdb.store import SPARSE_FIELD, IdType, Metric, SparseIndexConfig, strip_credentials

logger = logging.getLogger(__name__)

T = TypeVar("T")

META_KEY = "csr_vdb"
QUERY_BATCH = 64  # queries per query_batch_points request
SCHEMA_SAMPLE = 100  # points read to report a payload schema


def _password(uri: str) -> str | None:
    try:
        return urlsplit(uri).password
    except ValueError:
        return None


@dataclass
class _Schema(Layout):
    """What the adapter needs to know about one collection (``id_type`` None: empty, and made
    without metadata, by a server older than collection metadata)."""

    cosine_as_dot: frozenset[str] = frozenset()  # Dot fields holding cosine rows (made by earlier versions)
    vector_params: dict[str, Any] = field(default_factory=dict)  # dense field -> qm.VectorParams as reported
    unnamed: bool = False  # a single unnamed vector (not a dict of named ones)

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


def _sparse_params(cfg: SparseIndexConfig | None) -> Any:
    """`SparseVectorParams` for a `SparseIndexConfig` (None: the server's defaults)."""
    given = cfg.given() if cfg is not None else {}
    if not given:
        return qm.SparseVectorParams()
    index = qm.SparseIndexParams(
        datatype=qm.Datatype(given["datatype"]) if "datatype" in given else None,
        memory=qm.Memory(given["memory"]) if "memory" in given else None,
        full_scan_threshold=given.get("full_scan_threshold"),
    )
    return qm.SparseVectorParams(index=index)


class QdrantStore(QdrantBase):
    """A `VectorStore` on qdrant-client: server URL or local-mode directory.

    Args:
        uri: ``http(s)://host:port`` for a server (port 6333 when omitted), anything else is the
            directory of qdrant-client's local mode (created if absent).
        api_key: server API key (never logged nor put in error messages).
        timeout: seconds for each server request; an unreachable server fails within it.

    Collection schemas are cached per name for the life of the store, so a collection that
    another client drops and re-creates needs a new store. Layouts are cached too
    (`StoreBase._described`): an alias's resolution for `ALIAS_TTL_S` (another process may move
    it), a collection's until it fails a call or this store changes it.

    Raises:
        StoreError: the server cannot be reached, or the local directory is used by another client.
    """

    QUERY_BATCH = QUERY_BATCH
    SCHEMA_SAMPLE = SCHEMA_SAMPLE
    SPARSE_INDEX_SETTINGS = QDRANT_SPARSE_SETTINGS
    DEFAULT_SPARSE_INDEX = DEFAULT_QDRANT_SPARSE_INDEX
    CACHE_LAYOUTS = True  # on a server, resolving a name is a get_aliases request

    def __init__(
        self, uri: str, api_key: str | None = None, timeout: float = 10.0, retries: int = DEFAULT_RETRIES
    ) -> None:
        self._secrets = [s for s in (api_key, _password(str(uri))) if s]
        self.retry_policy = RetryPolicy(retries=retries, timeout=timeout)
        self._schemas: dict[str, _Schema] = {}  # real name -> schema, dropped with the collection
        self.uri = strip_credentials(str(uri))
        self.is_server = urlsplit(str(uri)).scheme in ("http", "https")
        # qdrant-client's local mode keeps collections in Python objects that a scroll and a write
        # on two threads corrupt (a migration reads and writes on threads of its own while the
        # application may write): its calls run one at a time; a server takes them in parallel
        self._local_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.is_server else threading.RLock()
        )
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

            def reach() -> None:
                try:
                    self._client.get_collections()
                except Exception as exc:  # noqa: BLE001
                    raise StoreError(f"cannot reach Qdrant at {self.uri}: {self._clean(exc)}") from exc

            try:  # a server may be restarting: retried like every request
                self.retry_policy.call(reach, what="connect", where=self.uri)
            except StoreError:
                self._client.close()
                raise

    # ------------------------------------------------------------------ plumbing
    def _clean(self, exc: BaseException) -> str:
        """One line of an exception's text, with the API key masked."""
        src = getattr(exc, "source", None)  # ResponseHandlingException wraps the transport error
        text = str(src or exc).strip().splitlines()[0] if str(src or exc).strip() else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def _call(self, what: str, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            with self._local_lock:
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

    def _layout(self, collection_name: str) -> _Schema:
        """Resolve an alias and read the collection's schema; `CollectionNotFoundError` if absent."""
        real = self._resolve(collection_name)
        cached = self._schemas.get(real)
        if cached is not None:
            return cached
        try:
            with self._local_lock:
                info = self._client.get_collection(real)
        except Exception as exc:  # noqa: BLE001 - 404 on a server, ValueError in local mode
            if real not in self._collections():
                raise CollectionNotFoundError(f"collection '{collection_name}' not found in {self.uri}") from exc
            raise StoreError(
                f"Qdrant describe failed for collection '{collection_name}' at {self.uri}: {self._clean(exc)}"
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
        unnamed = vectors is not None and not isinstance(vectors, dict)
        schema = _Schema(real, id_type, dense, sparse, as_dot, vector_params=items, unnamed=unnamed)
        if id_type is not None:  # a schema never changes while the collection lives
            self._schemas[real] = schema
        return schema

    @staticmethod
    def _params(s: _Schema, f: str) -> Any:
        """Field ``f``'s `VectorParams` as the collection holds it (Cosine for a legacy Dot field
        holding cosine rows)."""
        vp = s.vector_params[f]
        return vp.model_copy(update={"distance": qm.Distance.COSINE}) if f in s.cosine_as_dot else vp

    @staticmethod
    def _vectors_config(params: dict[str, Any], unnamed: bool | None = None) -> Any:
        """``vectors_config`` of a new collection; a lone field ``""`` is made unnamed unless the
        source held it in a dict (``unnamed=False``)."""
        if list(params) == [""] and unnamed is not False:
            return params[""]
        return params or {}

    def _create(
        self, name: str, vectors_config: Any, sparse: bool, id_type: IdType, sparse_index: SparseIndexConfig | None = None
    ) -> None:
        self._schemas.pop(name, None)
        meta: dict[str, Any] = {"id_type": id_type}
        kwargs: dict[str, Any] = dict(
            collection_name=name,
            vectors_config=vectors_config,
            sparse_vectors_config={SPARSE_FIELD: _sparse_params(sparse_index)} if sparse else None,
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

    # ------------------------------------------------------------------ engine hooks
    def _scroll(self, s: _Schema, offset: Any, limit: int, f: str | None) -> tuple[list[Any], Any]:  # type: ignore[override]
        return self._call(
            "scroll", s.name, self._client.scroll, s.name, limit=limit, offset=offset, with_payload=True,
            with_vectors=self._vector_selector([f] if f is not None else []),
        )  # fmt: skip

    def _retrieve(self, s: _Schema, pids: list[Any], with_payload: Any, vectors: list[str]) -> list[Any]:  # type: ignore[override]
        return self._call(
            "fetch", s.name, self._client.retrieve, s.name, pids, with_payload=with_payload,
            with_vectors=self._vector_selector(vectors),
        )  # fmt: skip

    def _query_batch(  # type: ignore[override]
        self, s: _Schema, queries: list[Any], using: str, limit: int, with_payload: Any, vectors: list[str],
        ef: int | None = None,
    ) -> list[list[Any]]:
        params = qm.SearchParams(hnsw_ef=int(ef)) if ef is not None else None
        reqs = [
            qm.QueryRequest(query=q, using=using or None, limit=int(limit), with_payload=with_payload,
                            with_vector=self._vector_selector(vectors), params=params)
            for q in queries
        ]  # fmt: skip
        res = self._call("search", s.name, self._client.query_batch_points, s.name, requests=reqs)
        return [r.points for r in res]

    @staticmethod
    def _vector_selector(names: list[str]) -> Any:
        """``with_vectors`` for these fields (the unnamed default vector is selected by True)."""
        if not names:
            return False
        return True if names == [""] else names

    def _vector(self, record: Any, f: str) -> Any:
        vector = record.vector
        if isinstance(vector, dict):
            return vector.get(f)
        return vector if f == "" else None

    def _sparse_vector(self, indices: list[int], values: list[float]) -> Any:
        return qm.SparseVector(indices=indices, values=values)

    def _point(self, pid: Any, vectors: dict[str, Any], payload: dict[str, Any]) -> Any:
        return qm.PointStruct(id=pid, vector=vectors, payload=payload)

    def _write(self, s: _Schema, points: list[Any]) -> None:  # type: ignore[override]
        if points:
            self._call("upsert", s.name, self._client.upsert, s.name, points=points, wait=True)

    def _remove(self, s: _Schema, pids: list[Any]) -> None:  # type: ignore[override]
        if pids:
            self._call("delete", s.name, self._client.delete, s.name, points_selector=qm.PointIdsList(points=pids),
                       wait=True)

    def _overwrite(self, s: _Schema, items: list[tuple[Any, dict[str, Any]]]) -> None:  # type: ignore[override]
        """All payloads in one batched update request."""
        ops = [qm.OverwritePayloadOperation(overwrite_payload=qm.SetPayload(payload=p, points=[pid])) for pid, p in items]
        if ops:
            self._call("set_payload", s.name, self._client.batch_update_points, s.name, update_operations=ops, wait=True)

    def _prepare(self, s: _Schema, f: str, vectors: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return s.prepare(f, vectors)

    # ------------------------------------------------------------------ protocol: schema
    def list_collections(self) -> list[str]:
        return sorted(self._collections())

    def has_collection(self, collection_name: str) -> bool:
        real = self._resolve(collection_name)
        return real in self._collections()

    def _count(self, s: _Schema) -> int:  # type: ignore[override]
        return int(self._call("count", s.name, self._client.count, s.name, exact=True).count)

    def _create_dense(self, name: str, dimension: int, metric: Metric, id_type: IdType, vector_field: str) -> None:
        if name in self._aliases():
            raise StoreError(f"collection '{name}' already exists in {self.uri}")
        params = {vector_field: qm.VectorParams(size=dimension, distance=qm.Distance(METRIC_TO_QDRANT[metric]))}
        self._create(name, self._vectors_config(params), False, id_type)

    def _create_sparse(  # type: ignore[override]
        self, name: str, src: _Schema, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """The kept dense field's `VectorParams` as the source holds them, in the source's form,
        `SPARSE_FIELD` (with the ``sparse_index`` settings), and the source's payload indexes."""
        params = {f: self._params(src, f) for f in dense}
        self._create(name, self._vectors_config(params, src.unnamed), True, src.id_type or "int", sparse_index)
        for key, index in self._payload_indexes(src.name).items():
            if index.data_type is None:
                continue
            self._call(
                "create_payload_index", name, self._client.create_payload_index, name,
                field_name=key, field_schema=index.params or index.data_type, wait=True,
            )  # fmt: skip

    def _payload_indexes(self, name: str) -> dict[str, Any]:
        """Payload key -> `PayloadIndexInfo`, read now (indexes may be added at any time; local
        mode keeps none)."""
        info = self._call("describe", name, self._client.get_collection, name)
        return dict(info.payload_schema or {})

    def _native_schema(self, s: _Schema) -> dict[str, Any]:  # type: ignore[override]
        """qdrant-client's own description: each dense field's `VectorParams`, whether the vectors
        are one unnamed vector or a dict, the payload indexes, and the id type."""
        return {
            "id": {"type": s.id_type},
            "vectors": {f: self._params(s, f).model_dump(mode="json") for f in s.dense},
            "vectors_form": "unnamed" if s.unnamed else "named",
            "payload": {
                "indexes": {k: v.model_dump(mode="json", exclude={"points"}) for k, v in self._payload_indexes(s.name).items()}
            },
        }

    # ------------------------------------------------------------------ protocol: aliases, admin
    def get_alias(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def set_alias(self, alias: str, collection_name: str) -> None:
        """Create or move ``alias`` in one atomic alias update."""
        if alias in self._collections():
            raise StoreError(f"alias '{alias}' would shadow a collection of that name in {self.uri}")
        real = self._layout(collection_name).name
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
        write, so this only checks that the collection is known (its layout, cached or read)."""
        self._described(collection_name)

    def close(self) -> None:
        """Close the client (releases local mode's directory lock)."""
        try:
            self._client.close()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"closing Qdrant at {self.uri} failed: {self._clean(exc)}") from exc
