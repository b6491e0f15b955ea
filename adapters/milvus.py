"""`MilvusStore`: the `VectorStore` protocol on pymilvus `MilvusClient` (Milvus Lite file or server URI)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from csr_vdb.adapters._common import Found, Layout, StoreBase
from csr_vdb.adapters._retry import DEFAULT_RETRIES, RetryPolicy
from csr_vdb.errors import CollectionNotFoundError, ConfigError, CSRVDBError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import SPARSE_FIELD, DensePage, Id, IdType, Metric, PayloadPage, SparseIndexConfig, strip_credentials

logger = logging.getLogger(__name__)

_METRICS: dict[str, Metric] = {"COSINE": "cosine", "IP": "ip", "L2": "l2"}
_META = "$meta"  # Milvus' name for the dynamic (schemaless JSON) field
# Reads see every acknowledged write (pymilvus' default, Bounded, may lag a write by seconds).
_READ = "Strong"
# Milvus caps a query's limit (+offset) and a search's topk / nq at 16384.
_MAX_WINDOW = 16_384
# Keep one write request well under gRPC's message limits.
_WRITE_BYTES = 16 * 2**20
_VARCHAR_MAX = 65_535
# Index description keys that are bookkeeping, not parameters to copy.
_INDEX_BOOKKEEPING = {
    "field_name", "index_name", "total_rows", "indexed_rows", "pending_index_rows", "state",
    "index_state_fail_reason",
}

# Client methods that send no request (everything else gets a deadline), and the slow ones.
_LOCAL_CALLS = {"create_schema", "prepare_index_params", "close"}
_SLOW_CALLS = {"load_collection", "flush"}
_SLOW_FACTOR = 6  # a slow call may take this many request timeouts (loading or flushing a big collection)

# Milvus Lite runs one in-process server per .db path; several stores in one process share it,
# so the server is released only when the last of them closes.
_LITE_REFS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


@dataclass
class _Schema(Layout):
    """What the adapter needs to know about one collection, read from the server per call.

    ``dense`` holds the FLOAT_VECTOR fields; ``sparse`` is a SPARSE_FLOAT_VECTOR field named
    `SPARSE_FIELD`.
    """

    pk: str = ""
    pk_params: dict[str, Any] = field(default_factory=dict)
    dense_index: dict[str, dict[str, Any]] = field(default_factory=dict)  # FLOAT_VECTOR field -> index description
    vector_names: set[str] = field(default_factory=set)  # every vector field, whatever its type
    scalars: dict[str, dict[str, Any]] = field(default_factory=dict)  # scalar payload field -> its description
    dynamic: bool = False
    raw_fields: list[dict[str, Any]] = field(default_factory=list)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> index description (any field)
    num_partitions: int | None = None  # partitions of a partition-key collection

    @property
    def complete(self) -> bool:
        """Every vector field indexed: a collection csr-vdb creates gets its indexes right after
        the collection itself, so one without them is still being made (or its making was cut short)."""
        return all(self.indexes.get(f) for f in self.vector_names)


def _password(uri: str) -> str | None:
    try:
        return urlsplit(uri).password
    except ValueError:
        return None


class _Deadlines:
    """The pymilvus client with a deadline on every request: pymilvus waits for an answer forever
    unless a call carries ``timeout=``, so a server that stops answering would hang the caller."""

    def __init__(self, client: MilvusClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in _LOCAL_CALLS or not callable(attr):
            return attr
        deadline = self._timeout * (_SLOW_FACTOR if name in _SLOW_CALLS else 1)

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", deadline)
            return attr(*args, **kwargs)

        return call


def _index_params(index: dict[str, Any]) -> dict[str, Any]:
    """An index description without its bookkeeping (names, row counts, build state)."""
    return {k: v for k, v in index.items() if k not in _INDEX_BOOKKEEPING}


def _jsonable(value: Any) -> Any:
    """A field description value as JSON (DataType enums by name, protobuf default values as text)."""
    if isinstance(value, DataType):
        return value.name
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return " ".join(str(value).split())


def _is_not_found(exc: BaseException, reason: str) -> bool:
    """A missing collection, as Milvus Lite and servers of several versions word it."""
    if getattr(exc, "code", None) == 100:  # CollectionNotExists
        return True
    low = reason.lower()
    return "collection" in low and any(w in low for w in ("not exist", "not found", "can't find", "cannot find"))


def _literal(value: Id) -> str:
    """A primary-key value as a Milvus filter literal (strings double-quoted and escaped)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(int(value))


class MilvusStore(StoreBase):
    """A `VectorStore` on Milvus: Milvus Lite (``uri`` ending in ``.db``) or a server URL.

    Args:
        uri: path of a Milvus Lite ``.db`` file (created, parent folders included) or an
            ``http(s)://host:port`` / ``tcp://`` server address.
        token: server token (``user:password`` or an API key); never logged nor shown in errors.
        timeout: seconds to wait when connecting before raising `StoreError`.

    Raises:
        StoreError: the database cannot be opened or reached.

    Notes:
        - Collections it creates: an ``id`` primary key (INT64 or VARCHAR), the dense
          FLOAT_VECTOR field, the dynamic field for payloads; sparse ones add `SPARSE_FIELD`
          (SPARSE_INVERTED_INDEX, IP) and copy the source's typed scalar fields and dense index.
        - A user's collection: its typed scalar fields plus its dynamic keys are the payload.
        - Reads use Strong consistency, so a read sees every acknowledged write.
        - ``iter_dense`` pages with ``pk > cursor`` queries in primary-key order (on Milvus Lite
          it flushes first: sealed segments are paged far faster than the write buffer).
        - Layouts are cached (`StoreBase._described`): a collection's until it fails a call or
          this store changes it, an alias's for `ALIAS_TTL_S`.
    """

    SPARSE_INDEX_SETTINGS = ("inverted_index_algo", "drop_ratio_build")
    CACHE_LAYOUTS = True  # describe_collection is a request

    def __init__(
        self, uri: str, token: str | None = None, timeout: float = 10.0, retries: int = DEFAULT_RETRIES
    ) -> None:
        self.uri = strip_credentials(uri)
        self.retry_policy = RetryPolicy(retries=retries, timeout=timeout)
        self._secrets = [s for s in (token, _password(uri)) if s]
        self._lite_path: str | None = None
        self._loaded: set[str] = set()
        self._schemas: dict[str, tuple[tuple[str, Any], _Schema]] = {}
        if uri.endswith(".db") and "://" not in uri:
            self._lite_path = os.path.abspath(uri)
            try:
                os.makedirs(os.path.dirname(self._lite_path), exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of Milvus Lite file {self.uri}: {exc}") from exc

        def connect() -> tuple[Any, str]:
            try:
                client = MilvusClient(uri=uri, token=token or "", timeout=timeout)
                if self._lite_path is None:
                    client = _Deadlines(client, timeout)
                return client, str(client.get_server_version())
            except Exception as exc:  # pymilvus raises MilvusException, grpc errors or ValueError here
                reason = self._reason(exc)
                if self._lite_path is not None:
                    # Milvus Lite locks its file: the usual cause is another process holding it
                    raise StoreError(
                        f"cannot open Milvus Lite file {self.uri} (is another process using it?): {reason}"
                    ) from None
                # `from None`: the client's own exception may quote the token or the URI's password
                raise StoreError(f"cannot connect to Milvus at {self.uri}: {reason}") from None

        if self._lite_path is None:  # a server may be restarting: retried like every request
            self._client, version = self.retry_policy.call(connect, what="connect", where=self.uri)
        else:
            self._client, version = connect()
        # Milvus Lite (embedded or `milvus-lite server`) serves paged queries far faster from
        # sealed segments than from its write buffer, so readers flush first there.
        self._is_lite = version.startswith("milvus_lite") or self._lite_path is not None
        if self._lite_path is not None:
            with _LITE_LOCK:
                _LITE_REFS[self._lite_path] = _LITE_REFS.get(self._lite_path, 0) + 1
        logger.debug("connected to Milvus %s at %s", version, self.uri)

    # ------------------------------------------------------------------ errors
    def _reason(self, exc: BaseException) -> str:
        """The first line of a client error, with the token and the URI's password masked."""
        msg = str(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
        for secret in self._secrets:
            msg = msg.replace(secret, "***")
        return msg.splitlines()[0] if msg else type(exc).__name__

    def _after_failure(self) -> None:
        # a restarted server may hold its collections released: check the load state again
        super()._after_failure()
        self._loaded.clear()

    def _recoverable(self, exc: BaseException) -> bool:
        """A collection released by a server that restarted since it was loaded here: the retry loads it."""
        if getattr(exc, "code", None) == 101:  # CollectionNotLoaded
            return True
        text = str(getattr(exc, "message", None) or exc).lower()
        return "call load()" in text or "collection not loaded" in text

    @contextmanager
    def _errors(self, action: str, collection: str | None = None):
        """Translate client exceptions into `StoreError` naming the collection and URI."""
        try:
            yield
        except CSRVDBError:
            raise
        except Exception as exc:
            where = f"collection '{collection}' in {self.uri}" if collection else self.uri
            reason = self._reason(exc)
            if collection and _is_not_found(exc, reason):
                raise CollectionNotFoundError(f"{where} not found: {reason}") from exc
            raise StoreError(f"Milvus {action} failed for {where}: {reason}") from exc

    # ------------------------------------------------------------------ schema
    def _aliases(self) -> list[str]:
        with self._errors("list aliases"):
            return list(self._client.list_aliases().get("aliases", []))

    def _layout(self, collection_name: str) -> _Schema:
        return self._schema(collection_name)

    def _schema(self, name: str) -> _Schema:
        """Schema of ``name`` (a collection or an alias): one describe call per use, because
        describe resolves aliases server-side and an alias may move at any time; the index
        details are cached per collection id."""
        with self._errors("describe", name):
            desc = self._client.describe_collection(name)
        real = str(desc["collection_name"])
        key = (real, desc.get("collection_id"))
        cached = self._schemas.get(real)
        if cached is not None and cached[0] == key:
            return cached[1]
        schema = self._read_schema(real, desc)
        if schema.complete:  # one still being made is read again next time
            self._schemas[real] = (key, schema)
        return schema

    def _read_schema(self, real: str, desc: dict[str, Any]) -> _Schema:
        with self._errors("describe", real):
            indexes = self._indexes(real)
            pk = None
            id_type: IdType = "int"
            pk_params: dict[str, Any] = {}
            dense: dict[str, tuple[int, Metric]] = {}
            dense_index: dict[str, dict[str, Any]] = {}
            sparse = False
            vector_names: set[str] = set()
            scalars: dict[str, dict[str, Any]] = {}
            for f in desc["fields"]:
                dtype = f["type"]
                if f.get("is_primary"):
                    pk = f["name"]
                    if dtype == DataType.INT64:
                        id_type = "int"
                    elif dtype == DataType.VARCHAR:
                        id_type = "str"
                    else:
                        raise StoreError(
                            f"collection '{real}' in {self.uri} has an unsupported primary key type {dtype.name}"
                        )
                    pk_params = dict(f.get("params", {}))
                elif dtype == DataType.FLOAT_VECTOR:
                    vector_names.add(f["name"])
                    index = indexes.get(f["name"], {})
                    metric = _METRICS.get(str(index.get("metric_type", "COSINE")).upper())
                    if metric is None:
                        raise StoreError(
                            f"collection '{real}' in {self.uri}: metric {index.get('metric_type')} of "
                            f"field '{f['name']}' is not supported"
                        )
                    dense[f["name"]] = (int(f["params"]["dim"]), metric)
                    dense_index[f["name"]] = index
                elif dtype == DataType.SPARSE_FLOAT_VECTOR:
                    vector_names.add(f["name"])
                    sparse = sparse or f["name"] == SPARSE_FIELD
                elif "VECTOR" in getattr(dtype, "name", ""):
                    vector_names.add(f["name"])
                elif not f.get("is_function_output"):
                    scalars[f["name"]] = f
            if pk is None:
                raise StoreError(f"collection '{real}' in {self.uri} has no primary key")
        return _Schema(
            name=real,
            pk=pk,
            id_type=id_type,
            pk_params=pk_params,
            dense=dense,
            dense_index=dense_index,
            sparse=sparse,
            vector_names=vector_names,
            scalars=scalars,
            dynamic=bool(desc.get("enable_dynamic_field")),
            raw_fields=list(desc["fields"]),
            indexes=indexes,
            num_partitions=desc.get("num_partitions") if any(f.get("is_partition_key") for f in desc["fields"]) else None,
        )

    def _indexes(self, collection: str) -> dict[str, dict[str, Any]]:
        """Field -> its index description, for every indexed field (vector or scalar)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._client.list_indexes(collection):
            index = dict(self._client.describe_index(collection, name))
            out.setdefault(str(index.get("field_name", name)), index)
        return out

    def _ensure_loaded(self, s: _Schema) -> None:
        # Milvus Lite reopens .db collections released; a server may have released them too.
        if s.name in self._loaded:
            return
        with self._errors("load", s.name):
            state = str(self._client.get_load_state(s.name).get("state", ""))
            if "NotLoad" in state:
                self._client.load_collection(s.name)
        self._loaded.add(s.name)

    def _payload(self, s: _Schema, row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != s.pk and k not in s.vector_names and k != _META}

    def _payload_fields(self, s: _Schema) -> list[str]:
        return [s.pk, *s.scalars] + ([_META] if s.dynamic else [])

    def _check_payloads(self, s: _Schema, ids: list[Id], payloads: list[dict[str, Any]]) -> None:  # type: ignore[override]
        reserved = {s.pk, _META, *s.vector_names}
        for i, p in zip(ids, payloads):
            clash = reserved.intersection(p)
            if clash:
                raise DataError(
                    f"payload of id {i} uses reserved field name(s) {sorted(clash)} of collection '{s.name}'", [i]
                )
            if not s.dynamic:
                extra = set(p) - set(s.scalars)
                if extra:
                    raise DataError(
                        f"collection '{s.name}' has no dynamic field for payload keys {sorted(extra)} (id {i})", [i]
                    )

    def _create(self, name: str, schema: Any, index: Any, **options: Any) -> None:
        # pymilvus' create_collection(index_params=...) polls the index build with 0.5 s sleeps;
        # an empty collection's index is ready at once, so create, index without waiting, load.
        self._client.create_collection(name, schema=schema, consistency_level="Strong", **options)
        try:
            self._client.create_index(name, index, sync=False)
            self._client.load_collection(name)
        except Exception:
            self._client.drop_collection(name)  # no half-made collection left behind
            raise
        self._loaded.add(name)

    def _write(self, s: _Schema, rows: list[dict[str, Any]], row_bytes: int) -> None:
        step = max(1, min(len(rows), _WRITE_BYTES // max(row_bytes, 1)))
        # A server's upsert replaces whole rows. Milvus Lite's upsert merges the new fields onto
        # the old row (stale payload keys would survive), while its insert keeps only the newest
        # row per primary key: that is the replace-by-id the protocol promises.
        write = self._client.insert if self._is_lite else self._client.upsert
        with self._errors("upsert", s.name):
            for a in range(0, len(rows), step):
                write(s.name, rows[a : a + step])

    # ------------------------------------------------------------------ protocol: schema
    def list_collections(self) -> list[str]:
        with self._errors("list collections"):
            return sorted(self._client.list_collections())

    def has_collection(self, collection_name: str) -> bool:
        with self._errors("has_collection", collection_name):
            return bool(self._client.has_collection(collection_name))

    def _payload_sample(self, s: _Schema) -> dict[str, str]:  # type: ignore[override]
        schema = {k: DataType(f["type"]).name.lower() for k, f in s.scalars.items()}
        if s.dynamic:
            schema[_META] = "dynamic"
        return schema

    def _count(self, s: _Schema) -> int:  # type: ignore[override]
        self._ensure_loaded(s)
        with self._errors("count", s.name):
            res = self._client.query(s.name, filter="", output_fields=["count(*)"], consistency_level=_READ)
            return int(res[0]["count(*)"])

    def _create_dense(self, name: str, dimension: int, metric: Metric, id_type: IdType, vector_field: str) -> None:
        with self._errors("create collection", name):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=True)
            if id_type == "int":
                schema.add_field("id", DataType.INT64, is_primary=True)
            else:
                schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_VARCHAR_MAX)
            schema.add_field(vector_field, DataType.FLOAT_VECTOR, dim=dimension)
            index = self._client.prepare_index_params()
            index.add_index(vector_field, index_type="AUTOINDEX", metric_type=metric.upper())
            self._create(name, schema, index)

    def _same_schema(self, src: _Schema, tgt: _Schema) -> bool:  # type: ignore[override]
        # lenient on the dynamic field: targets made before it was copied always had one
        return (
            tgt.pk == src.pk
            and {k: v["type"] for k, v in tgt.scalars.items()} == {k: v["type"] for k, v in src.scalars.items()}
            and (tgt.dynamic or not src.dynamic)
        )

    def _complete(self, tgt: _Schema) -> bool:  # type: ignore[override]
        return tgt.complete

    def _reuse(self, tgt: _Schema) -> None:  # type: ignore[override]
        self._ensure_loaded(tgt)

    def _finish_sparse(  # type: ignore[override]
        self, tgt: _Schema, src: _Schema, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """Give a target whose making was cut short the indexes it lacks, then load it."""
        missing = [f for f in tgt.vector_names if not tgt.indexes.get(f)]
        index = self._client.prepare_index_params()
        for f in missing:
            self._add_index(index, f, src, dense, sparse_index)
        with self._errors("create index", tgt.name):
            try:
                self._client.create_index(tgt.name, index, sync=False)
            except MilvusException as exc:
                if "already exists" not in self._reason(exc):  # another worker finished it first
                    raise
        logger.info("completed the indexes %s of collection '%s' in %s", missing, tgt.name, self.uri)

    def _add_index(
        self, index: Any, f: str, src: _Schema, dense: dict[str, tuple[int, Metric]],
        sparse_index: SparseIndexConfig | None = None,
    ) -> None:
        """Add field ``f``'s index to ``index``: the source's (type and parameters) for a copied
        field, SPARSE_INVERTED_INDEX (inner product, with the ``sparse_index`` parameters) for
        `SPARSE_FIELD`."""
        if f == SPARSE_FIELD:
            # Milvus Lite accepts only this index/metric pair for sparse vectors, and refuses all
            # parameters but the exact defaults; with its default drop ratio of 0 nothing is
            # pruned, so search is exact.
            params = sparse_index.given() if sparse_index is not None else {}
            index.add_index(SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="IP", params=params)
            return
        idx = _index_params(src.indexes.get(f, {}))
        index_type = idx.pop("index_type", "AUTOINDEX")
        metric = idx.pop("metric_type", None)
        params = idx.pop("params", None)
        params = {**idx, **(params if isinstance(params, dict) else {})}
        if f in dense:
            index.add_index(f, index_type=index_type, metric_type=dense[f][1].upper(), params=params)
        elif metric and str(metric).upper() != "NONE":
            index.add_index(f, index_type=index_type, metric_type=metric, params=params)
        else:
            index.add_index(f, index_type=index_type, params=params)

    def _create_sparse(  # type: ignore[override]
        self, name: str, src: _Schema, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """The source's schema as pymilvus describes it, less the dense fields not kept: its primary
        key, its typed scalar fields (parameters, nullability, defaults, partition key, indexes), its
        dynamic field if it has one, the kept dense field with its index; plus `SPARSE_FIELD`."""
        if SPARSE_FIELD in src.scalars:
            raise StoreError(f"collection '{src.name}' in {self.uri} has a payload field named '{SPARSE_FIELD}'")
        kept = next(iter(dense), None)
        with self._errors("create collection", name):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=src.dynamic)
            index = self._client.prepare_index_params()
            for f in src.raw_fields:
                if f["name"] == src.pk:
                    schema.add_field(f["name"], f["type"], is_primary=True, **self._field_options(f))
                elif f["name"] in src.scalars:
                    schema.add_field(f["name"], f["type"], **self._field_options(f))
                    if src.indexes.get(f["name"]):
                        self._add_index(index, f["name"], src, dense)
                elif f["name"] == kept:
                    schema.add_field(kept, DataType.FLOAT_VECTOR, **self._field_options(f))
                    self._add_index(index, kept, src, dense)
            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            self._add_index(index, SPARSE_FIELD, src, dense, sparse_index)
            extra = {"num_partitions": src.num_partitions} if src.num_partitions else {}
            self._create(name, schema, index, **extra)
        logger.info("created sparse collection '%s' like '%s' in %s", name, src.name, self.uri)

    @staticmethod
    def _field_options(f: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``add_field`` that re-create a described field."""
        kwargs = dict(f.get("params", {}))
        for key in ("nullable", "default_value", "element_type", "is_partition_key", "is_clustering_key", "description"):
            if f.get(key) not in (None, "", False):
                kwargs[key] = f[key]
        return kwargs

    def _native_schema(self, s: _Schema) -> dict[str, Any]:  # type: ignore[override]
        """The schema as pymilvus' describe_collection / describe_index report it (field ids and
        index bookkeeping left out): the primary key, the dense FLOAT_VECTOR fields, the typed
        scalar fields and the dynamic field; other vector fields (`SPARSE_FIELD` among them) are
        not part of it."""
        fields = {f["name"]: f for f in s.raw_fields}

        def describe(name: str) -> dict[str, Any]:
            f = fields[name]
            out = {"type": _jsonable(f["type"]), "params": _jsonable(dict(f.get("params", {})))}
            for key in ("nullable", "default_value", "element_type", "is_partition_key", "is_clustering_key", "description"):
                if f.get(key) not in (None, "", False):
                    out[key] = _jsonable(f[key])
            if s.indexes.get(name):
                out["index"] = _jsonable(_index_params(s.indexes[name]))
            return out

        payload: dict[str, Any] = {"fields": {n: describe(n) for n in s.scalars}, "dynamic_field": s.dynamic}
        if s.num_partitions:
            payload["num_partitions"] = s.num_partitions
        return {
            "id": {"field": s.pk, **describe(s.pk)},
            "vectors": {n: describe(n) for n in s.dense},
            "payload": payload,
        }

    # ------------------------------------------------------------------ protocol: writes
    def _insert_dense(self, s: _Schema, f: str, ids: list[Id], vectors: np.ndarray, payloads: list[dict]) -> None:  # type: ignore[override]
        rows = [{**p, s.pk: i, f: v} for i, v, p in zip(ids, vectors, payloads)]
        self._write(s, rows, vectors.shape[1] * 4 + 256)

    def _upsert(  # type: ignore[override]
        self, s: _Schema, ids: list[Id], codes: SparseVectors, payloads: list[dict], f: str | None, dense: np.ndarray | None
    ) -> None:
        rows = []
        for n, (i, code) in enumerate(zip(ids, codes.to_milvus())):
            row = {**payloads[n], s.pk: i, SPARSE_FIELD: code}
            if f is not None:
                row[f] = dense[n]  # type: ignore[index]
            rows.append(row)
        dim = s.dense[f][0] if f else 0
        self._write(s, rows, dim * 4 + codes.width * 12 + 256)

    def _delete(self, s: _Schema, ids: list[Id]) -> None:  # type: ignore[override]
        self._ensure_loaded(s)
        with self._errors("delete", s.name):
            for a in range(0, len(ids), 1000):
                self._client.delete(s.name, filter=f"{s.pk} in [{', '.join(_literal(i) for i in ids[a : a + 1000])}]")

    def _set_payload(self, s: _Schema, ids: list[Id], payloads: list[dict]) -> list[Id]:  # type: ignore[override]
        """Milvus has no payload-only update: each row is read whole and written back with the new payload."""
        self._ensure_loaded(s)
        vectors = sorted(s.vector_names)
        old = self._rows_by_key(s, ids, [s.pk, *vectors])
        rows = []
        for i, p in zip(ids, payloads):
            r = old.get(i)
            if r is None:
                continue
            row = {**p, s.pk: i}
            for v in vectors:
                value = r.get(v)
                if isinstance(value, dict):  # sparse {index: value}
                    value = {int(k): float(x) for k, x in value.items()}
                elif value is not None:
                    value = np.asarray(value, dtype=np.float32)
                row[v] = value
            rows.append(row)
        if rows:
            dims = sum(d for d, _ in s.dense.values())
            self._write(s, rows, dims * 4 + 64 * 12 + 256)
        return [i for i in ids if i not in old]

    # ------------------------------------------------------------------ protocol: reads
    def _iter_dense(self, s: _Schema, f: str, batch_size: int, cursor: Id | None) -> Iterator[DensePage]:  # type: ignore[override]
        self._ensure_loaded(s)
        if self._is_lite:
            yield from self._pages_by_ids(s, f, batch_size, cursor)
        else:
            yield from self._pages_by_cursor(s, f, batch_size, cursor)

    def _page(self, s: _Schema, f: str, rows: Iterable[dict[str, Any]]) -> DensePage:
        # pymilvus decodes a result row on every access: walk the rows once
        ids, vecs, payloads = [], [], []
        for r in rows:
            ids.append(r[s.pk])
            vecs.append(r[f])
            payloads.append(self._payload(s, r))
        return DensePage(
            ids=ids,
            vectors=np.asarray(vecs, dtype=np.float32).reshape(len(ids), s.dense[f][0]),
            payloads=payloads,
        )

    def _pages_by_cursor(self, s: _Schema, f: str, batch_size: int, cursor: Id | None) -> Iterator[DensePage]:
        """Servers: ``pk > cursor`` queries returned in primary-key order, one page per query."""
        for rows in self._rows_by_cursor(s, [*self._payload_fields(s), f], batch_size, cursor):
            yield self._page(s, f, rows)

    def _rows_by_cursor(self, s: _Schema, fields: list[str], batch_size: int, cursor: Id | None) -> Iterator[list]:
        """Rows (``fields``) of ``pk > cursor`` queries, returned in primary-key order, one list per query."""
        limit = min(batch_size, _MAX_WINDOW)
        while True:
            expr = f"{s.pk} > {_literal(cursor)}" if cursor is not None else ""
            with self._errors("query", s.name):
                # iterator="True" asks the server for primary-key order before the limit is
                # applied (what pymilvus' own query_iterator relies on); without it Milvus Lite
                # returns an arbitrary subset and a cursor would skip rows.
                rows = self._client.query(
                    s.name, filter=expr, limit=limit, output_fields=fields, iterator="True", consistency_level=_READ
                )
            if not rows:
                return
            rows = list(rows)
            ids = [r[s.pk] for r in rows]
            if any(b <= a for a, b in zip(ids, ids[1:])) or (cursor is not None and ids[0] <= cursor):
                raise StoreError(
                    f"Milvus at {self.uri} returned collection '{s.name}' out of primary-key order; "
                    "cannot page it safely"
                )
            yield rows
            # a short page is no proof of the end (a server may stop a page at a segment
            # boundary to keep primary-key order), so only an empty page ends the scan
            cursor = ids[-1]

    def _iter_payloads(  # type: ignore[override]
        self, s: _Schema, batch_size: int, cursor: Id | None, fields: list[str] | None
    ) -> Iterator[PayloadPage]:
        """Ids and payloads (no vectors): Milvus Lite in one ids query sorted here, servers by cursor."""
        self._ensure_loaded(s)
        if fields is None:
            out = self._payload_fields(s)
        else:  # typed fields by name; other keys live in the dynamic field, which Milvus selects by key too
            out = [s.pk, *(k for k in fields if k in s.scalars or (s.dynamic and k not in s.vector_names))]
        if self._is_lite:
            with self._errors("flush", s.name):
                self._client.flush(s.name)
            expr = f"{s.pk} > {_literal(cursor)}" if cursor is not None else ""
            with self._errors("query", s.name):
                found = sorted(self._client.query(s.name, filter=expr, output_fields=out, consistency_level=_READ),
                               key=lambda r: r[s.pk])
            pages: Iterator[list] = (found[a : a + batch_size] for a in range(0, len(found), batch_size))
        else:
            pages = self._rows_by_cursor(s, out, batch_size, cursor)
        for rows in pages:
            yield PayloadPage([r[s.pk] for r in rows], [self._payload(s, r) for r in rows])

    def _pages_by_ids(self, s: _Schema, f: str, batch_size: int, cursor: Id | None) -> Iterator[DensePage]:
        """Milvus Lite: every ordered query filters and sorts all remaining rows in Python, so
        paging by cursor costs O(n^2 / batch_size). Read the primary keys once (ids only, not
        vectors), sort them, and get the rows page by page by key: linear, and still streaming."""
        with self._errors("flush", s.name):
            self._client.flush(s.name)  # sealed segments are read far faster than the write buffer
        expr = f"{s.pk} > {_literal(cursor)}" if cursor is not None else ""
        with self._errors("query", s.name):
            keys = sorted(r[s.pk] for r in self._client.query(s.name, filter=expr, output_fields=[s.pk],
                                                               consistency_level=_READ))
        fields = [*self._payload_fields(s), f]
        for a in range(0, len(keys), batch_size):
            rows = self._rows_by_key(s, keys[a : a + batch_size], fields)
            found = [rows[i] for i in keys[a : a + batch_size] if i in rows]  # rows deleted meanwhile are left out
            if found:
                yield self._page(s, f, found)

    def _rows_by_key(self, s: _Schema, keys: list[Id], fields: list[str]) -> dict[Id, dict[str, Any]]:
        """The rows of ``keys`` (at most 1000 per query, so the filter stays short), by key."""
        out: dict[Id, dict[str, Any]] = {}
        with self._errors("query", s.name):
            for a in range(0, len(keys), 1000):
                expr = f"{s.pk} in [{', '.join(_literal(i) for i in keys[a : a + 1000])}]"
                for r in self._client.query(s.name, filter=expr, output_fields=fields, consistency_level=_READ):
                    out[r[s.pk]] = r
        return out

    def _found(
        self, s: _Schema, row: dict[str, Any], score: float, with_payload: bool, with_code: bool, f: str | None
    ) -> Found:
        code = row.get(SPARSE_FIELD) if with_code else None
        return Found(
            row[s.pk],
            score,
            self._payload(s, row) if with_payload else None,
            (code.keys(), code.values()) if code is not None else None,  # Milvus' {index: value}
            row.get(f) if f is not None else None,
        )

    def _run_search(
        self, s: _Schema, data: list, anns_field: str, metric: Metric, limit: int, fields: list[str], params: dict
    ) -> list[list[tuple[dict[str, Any], float]]]:
        """Per query ``(entity, score)`` pairs; higher is better for every metric (Milvus reports
        the L2 distance, its negative is the score)."""
        self._ensure_loaded(s)
        out: list[list[tuple[dict[str, Any], float]]] = []
        with self._errors("search", s.name):
            for a in range(0, len(data), 4096):
                res = self._client.search(
                    s.name,
                    data=data[a : a + 4096],
                    anns_field=anns_field,
                    limit=min(limit, _MAX_WINDOW),
                    output_fields=fields,
                    search_params={"metric_type": metric.upper(), "params": params},
                    consistency_level=_READ,
                )
                for hits in res:
                    row = []
                    for h in hits:
                        entity = dict(h.get("entity", {}))
                        entity.setdefault(s.pk, h.get(s.pk, h.get("id")))
                        dist = float(h["distance"])
                        row.append((entity, -dist if metric == "l2" else dist))
                    out.append(row)
        return out

    def _search(  # type: ignore[override]
        self, s: _Schema, queries: SparseVectors, limit: int, with_payload: bool, with_codes: bool, dense_field: str | None
    ) -> list[list[Found]]:
        """One request returns the hits with their codes and dense vectors (``output_fields``)."""
        codes = queries.to_milvus()
        fields = self._payload_fields(s) if with_payload else [s.pk]
        fields += ([SPARSE_FIELD] if with_codes else []) + ([dense_field] if dense_field else [])
        # Milvus rejects an empty sparse query; such a query matches nothing anyway.
        live = [n for n, c in enumerate(codes) if c]
        out: list[list[Found]] = [[] for _ in codes]
        if live:
            found = self._run_search(s, [codes[n] for n in live], SPARSE_FIELD, "ip", limit, fields, {})
            for n, rows in zip(live, found):
                out[n] = [self._found(s, e, score, with_payload, with_codes, dense_field) for e, score in rows]
        return out

    def _search_dense(  # type: ignore[override]
        self, s: _Schema, f: str, queries: np.ndarray, limit: int, with_payload: bool, ef: int | None = None
    ) -> list[list[Found]]:
        params: dict[str, Any] = {}
        if "HNSW" in str(s.dense_index[f].get("index_type", "")).upper():
            # a generous ef keeps HNSW close to exact at small limits (Milvus needs ef >= limit)
            params["ef"] = min(max(ef, limit) if ef is not None else max(64, limit * 4), _MAX_WINDOW)
        fields = self._payload_fields(s) if with_payload else [s.pk]
        found = self._run_search(s, list(queries), f, s.dense[f][1], limit, fields, params)
        return [[self._found(s, e, score, with_payload, False, None) for e, score in rows] for rows in found]

    def _fetch(self, s: _Schema, ids: list[Id], dense_field: str | None, with_sparse: bool) -> Mapping[Id, Found]:  # type: ignore[override]
        self._ensure_loaded(s)
        fields = self._payload_fields(s) + ([dense_field] if dense_field else []) + ([SPARSE_FIELD] if with_sparse else [])
        rows = self._rows_by_key(s, ids, fields)
        return {i: self._found(s, r, 0.0, True, with_sparse, dense_field) for i, r in rows.items()}

    # ------------------------------------------------------------------ protocol: aliases, admin
    def get_alias(self, alias: str) -> str | None:
        if alias not in self._aliases():
            return None
        with self._errors("describe alias"):
            return str(self._client.describe_alias(alias)["collection_name"])

    def set_alias(self, alias: str, collection_name: str) -> None:
        with self._errors("list collections"):
            collections = self._client.list_collections()
        if alias in collections:
            raise StoreError(f"alias '{alias}' would shadow a collection of that name in {self.uri}")
        real = self._schema(collection_name).name
        with self._errors("set alias", real):
            if alias in self._aliases():
                self._client.alter_alias(real, alias)  # atomic move
            else:
                self._client.create_alias(real, alias)
        logger.info("alias '%s' -> '%s' in %s", alias, real, self.uri)

    def drop_alias(self, alias: str) -> None:
        if alias in self._aliases():
            with self._errors("drop alias"):
                self._client.drop_alias(alias)

    def drop(self, collection_name: str) -> None:
        with self._errors("drop", collection_name):
            if collection_name not in self._client.list_collections():
                return
            # a server refuses to drop a collection that an alias still points at
            for a in self._client.list_aliases(collection_name=collection_name).get("aliases", []):
                self._client.drop_alias(a)
            self._client.drop_collection(collection_name)
        self._loaded.discard(collection_name)
        self._schemas.pop(collection_name, None)

    def flush(self, collection_name: str) -> None:
        s = self._described(collection_name)
        with self._errors("flush", s.name):
            self._client.flush(s.name)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # closing must not raise over a failed connection
            logger.debug("closing Milvus client for %s: %s", self.uri, exc)
        path, self._lite_path = self._lite_path, None
        if path is None:
            return
        with _LITE_LOCK:
            left = _LITE_REFS.get(path, 1) - 1
            if left > 0:
                _LITE_REFS[path] = left
                return
            _LITE_REFS.pop(path, None)
        # the last store on this file: stop its embedded server so the file is released
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)

    def __repr__(self) -> str:
        return f"MilvusStore({self.uri!r})"
