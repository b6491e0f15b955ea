"""`QdrantEdgeStore`: the Qdrant engine in-process (qdrant-edge-py), one shard directory per collection.

Qdrant Edge has no server, no collections and no aliases: an `EdgeShard` is one directory. This
adapter maps a root directory ``uri`` to a store::

    <uri>/.csr_vdb.lock                  flock held while a store is open (one process at a time)
    <uri>/aliases.json                   {alias: collection}, replaced atomically
    <uri>/collections/<name>/            the collection's EdgeShard (wal/, segments/, edge_config.json)
    <uri>/collections/<name>/csr_vdb.json  schema: dense fields (dim, metric), sparse field, id type

A collection exists iff its ``csr_vdb.json`` exists: it is written (atomically) after the shard is
created and removed before the shard is deleted, so a crash never leaves a half collection visible.

Ids follow `csr_vdb.adapters._qdrant_common` (ints and canonical UUID strings as point ids, other
strings as ``uuid5`` point ids with the original kept in a hidden payload key); ``iter_dense`` pages
in point-id order, which for such strings is the order of their ``uuid5`` values.

Durability: `upsert` returns after the engine has applied the batch and appended it to the shard's
write-ahead log, which is replayed on the next open: a process killed right after `upsert` returns
loses nothing. The WAL lives in the OS page cache until the engine flushes, so for durability
against power loss / OS crash open the store with ``fsync=True``, which calls the engine's
``flush()`` after every upsert (slower writes).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import qdrant_edge as qe

from csr_vdb.adapters._common import Layout
from csr_vdb.adapters._qdrant_common import (
    DEFAULT_QDRANT_SPARSE_INDEX,
    METRIC_TO_QDRANT,
    QDRANT_SPARSE_SETTINGS as EDGE_SPARSE_SETTINGS,
    QdrantBase,
)
from csr_vdb.errors import StoreError
from csr_vdb.fileutil import atomic_write_json
from csr_vdb.store import SPARSE_FIELD, IdType, Metric, SparseIndexConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

META_FILE = "csr_vdb.json"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".csr_vdb.lock"
META_FORMAT = 1
QUERY_BATCH = 256  # queries per query_batch call: one planned pass over the segments each
SCHEMA_SAMPLE = 100  # points read to report a payload schema (payloads are schemaless)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def _edge_sparse_params(cfg: SparseIndexConfig | None) -> Any:
    """The engine's sparse vector parameters for a `SparseIndexConfig` (None: the engine's defaults)."""
    given = cfg.given() if cfg is not None else {}
    kwargs: dict[str, Any] = {}
    if "datatype" in given:
        kwargs["datatype"] = getattr(qe.VectorStorageDatatype, given["datatype"].capitalize())
    if "memory" in given:
        kwargs["memory"] = getattr(qe.Memory, given["memory"].capitalize())
    if "full_scan_threshold" in given:
        kwargs["full_scan_threshold"] = int(given["full_scan_threshold"])
    return qe.EdgeSparseVectorParams(**kwargs)


@dataclass
class _Shard(Layout):
    """An open collection: its schema (from ``csr_vdb.json``) and its engine shard."""

    shard: Any = None


class QdrantEdgeStore(QdrantBase):
    """A `VectorStore` on Qdrant Edge: one root directory, one shard directory per collection.

    Only one store (one process) may open a root directory at a time; a second open raises
    `StoreError`. Use as a context manager or call `close`.

    Args:
        uri: root directory (created if absent).
        fsync: flush the engine after every `upsert` so writes survive power loss, not only a
            process crash (slower; see the module docstring).

    Raises:
        StoreError: the directory cannot be created or is in use by another process.
    """

    QUERY_BATCH = QUERY_BATCH
    SCHEMA_SAMPLE = SCHEMA_SAMPLE
    SPARSE_INDEX_SETTINGS = EDGE_SPARSE_SETTINGS
    DEFAULT_SPARSE_INDEX = DEFAULT_QDRANT_SPARSE_INDEX

    def __init__(self, uri: str, *, fsync: bool = False) -> None:
        self.uri = str(uri)
        self.fsync = fsync
        self._root = Path(uri)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._lock_fd: int | None = None
        try:
            (self._root / "collections").mkdir(parents=True, exist_ok=True)
            fd = os.open(self._root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open Qdrant Edge directory {self.uri}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"Qdrant Edge directory {self.uri} is in use by another process") from exc
        self._lock_fd = fd
        self._aliases = self._read_aliases()

    # ------------------------------------------------------------------ plumbing
    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"Qdrant Edge store {self.uri} is closed")

    def _call(self, what: str, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an engine call, translating its errors (pyo3 panics derive from BaseException)."""
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - PanicException is not an Exception
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "WouldBlock" in msg:
                raise StoreError(
                    f"collection '{name}' in {self.uri} is in use by another process"
                ) from exc
            raise StoreError(f"Qdrant Edge {what} failed for collection '{name}' in {self.uri}: {msg}") from exc

    def _dir(self, name: str) -> Path:
        return self._root / "collections" / name

    def _check_new_name(self, collection_name: str, what: str = "collection") -> None:
        if not isinstance(collection_name, str) or not _NAME.match(collection_name):
            raise StoreError(
                f"invalid {what} name {collection_name!r}: use letters, digits, '_', '-' and '.' (not first)"
            )

    def _read_aliases(self) -> dict[str, str]:
        path = self._root / ALIASES_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{path} is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        atomic_write_json(self._root / ALIASES_FILE, dict(sorted(aliases.items())))
        self._aliases = aliases

    def _resolve(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _load_meta(self, real: str) -> dict[str, Any] | None:
        if real in self._meta:
            return self._meta[real]
        if not _NAME.match(real):
            return None
        path = self._dir(real) / META_FILE
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read collection metadata {path}: {exc}") from exc
        self._meta[real] = meta
        return meta

    def _layout(self, collection_name: str) -> _Shard:
        """Resolve an alias and open the collection's shard (kept open until `close`)."""
        self._check_open()
        real = self._resolve(collection_name)
        meta = self._load_meta(real)
        if meta is None:
            raise self._not_found(collection_name)
        shard = self._shards.get(real)
        if shard is None:
            shard = self._call("open", real, qe.EdgeShard.load, str(self._dir(real)))
            self._shards[real] = shard
        dense = {f: (int(p["dim"]), p["metric"]) for f, p in meta["dense"].items()}
        return _Shard(real, meta["id_type"], dense, meta.get("sparse_field") == SPARSE_FIELD, shard)

    def _create(
        self, name: str, dense: dict[str, tuple[int, Metric]], sparse: bool, id_type: IdType,
        sparse_index: SparseIndexConfig | None = None,
    ) -> None:
        """Create the shard, then publish it by writing its metadata file."""
        path = self._dir(name)
        if path.exists():
            # A directory without metadata is the leftover of a create that crashed: start afresh.
            shutil.rmtree(path)
        vectors = {
            f: qe.EdgeVectorParams(size=dim, distance=getattr(qe.Distance, METRIC_TO_QDRANT[metric]))
            for f, (dim, metric) in dense.items()
        }
        config = qe.EdgeConfig(
            vectors=vectors or None,
            sparse_vectors={SPARSE_FIELD: _edge_sparse_params(sparse_index)} if sparse else None,
        )
        shard = self._call("create", name, qe.EdgeShard.create, str(path), config)
        meta = {
            "format": META_FORMAT,
            "id_type": id_type,
            "dense": {f: {"dim": dim, "metric": metric} for f, (dim, metric) in dense.items()},
            "sparse_field": SPARSE_FIELD if sparse else None,
            "sparse_index": sparse_index.given() if sparse and sparse_index is not None else None,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(path / META_FILE, meta)
        self._shards[name] = shard
        self._meta[name] = meta
        logger.info("created Qdrant Edge collection '%s' in %s", name, self.uri)

    # ------------------------------------------------------------------ engine hooks
    def _scroll(self, s: _Shard, offset: Any, limit: int, f: str | None) -> tuple[list[Any], Any]:  # type: ignore[override]
        req = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=[f] if f is not None else False)
        return self._call("scroll", s.name, s.shard.scroll, req)

    def _retrieve(self, s: _Shard, pids: list[Any], with_payload: Any, vectors: list[str]) -> list[Any]:  # type: ignore[override]
        return self._call("fetch", s.name, s.shard.retrieve, pids, with_payload=with_payload, with_vector=vectors or False)

    def _query_batch(  # type: ignore[override]
        self, s: _Shard, queries: list[Any], using: str, limit: int, with_payload: Any, vectors: list[str],
        ef: int | None = None,
    ) -> list[list[Any]]:
        params = qe.SearchParams(hnsw_ef=int(ef)) if ef is not None else None
        reqs = [
            qe.QueryRequest(limit=int(limit), query=qe.Query.Nearest(q, using=using), with_payload=with_payload,
                            with_vector=vectors or False, params=params)
            for q in queries
        ]  # fmt: skip
        return self._call("search", s.name, s.shard.query_batch, qe.QueryBatchRequest(reqs))

    def _sparse_vector(self, indices: list[int], values: list[float]) -> Any:
        return qe.SparseVector(indices, values)

    def _point(self, pid: Any, vectors: dict[str, Any], payload: dict[str, Any]) -> Any:
        return qe.Point(pid, vectors, payload)

    def _write(self, s: _Shard, points: list[Any]) -> None:  # type: ignore[override]
        """One engine update, appended to the shard's WAL (see the module docstring for durability)."""
        if points:
            self._update(s, "upsert", [qe.UpdateOperation.upsert_points(points)])

    def _remove(self, s: _Shard, pids: list[Any]) -> None:  # type: ignore[override]
        if pids:
            self._update(s, "delete", [qe.UpdateOperation.delete_points(pids)])

    def _overwrite(self, s: _Shard, items: list[tuple[Any, dict[str, Any]]]) -> None:  # type: ignore[override]
        """One engine update per point (an overwrite carries one payload); each lands in the WAL."""
        if items:
            self._update(s, "set_payload", [qe.UpdateOperation.overwrite_payload([pid], p) for pid, p in items])

    def _update(self, s: _Shard, what: str, operations: list[Any]) -> None:
        """Apply the operations in order, then (with ``fsync``) flush the shard once."""
        for op in operations:
            self._call(what, s.name, s.shard.update, op)
        if self.fsync:
            self._call("flush", s.name, s.shard.flush)

    # ------------------------------------------------------------------ protocol: schema
    def list_collections(self) -> list[str]:
        self._check_open()
        base = self._root / "collections"
        return sorted(p.name for p in base.iterdir() if (p / META_FILE).exists() and _NAME.match(p.name))

    def has_collection(self, collection_name: str) -> bool:
        self._check_open()
        return self._load_meta(self._resolve(collection_name)) is not None

    def _count(self, s: _Shard) -> int:  # type: ignore[override]
        return int(self._call("count", s.name, s.shard.count, qe.CountRequest(exact=True)))

    def _create_dense(self, name: str, dimension: int, metric: Metric, id_type: IdType, vector_field: str) -> None:
        if name in self._aliases:
            raise StoreError(f"collection '{name}' already exists in {self.uri}")
        self._create(name, {vector_field: (dimension, metric)}, False, id_type)

    def _create_sparse(  # type: ignore[override]
        self, name: str, src: _Shard, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        """The kept dense field (size and distance), `SPARSE_FIELD`, and the source's payload indexes."""
        if name in self._aliases:  # an alias to a dropped collection still holds the name
            raise StoreError(f"collection '{name}' already exists with another schema in {self.uri}")
        self._create(name, dense, True, src.id_type or "int", sparse_index)
        shard = self._shards[name]
        for key, index in self._payload_indexes(src).items():
            op = qe.UpdateOperation.create_field_index(key, index.params or index.data_type)
            self._call("create_payload_index", name, shard.update, op)

    def _payload_indexes(self, s: _Shard) -> dict[str, Any]:
        """Payload key -> the engine's `PayloadIndexInfo`."""
        return dict(self._call("describe", s.name, s.shard.info).payload_schema or {})

    def _native_schema(self, s: _Shard) -> dict[str, Any]:  # type: ignore[override]
        """The engine's own description: each dense field's entry of the shard's
        ``edge_config.json``, the payload indexes of its `ShardInfo`, and the id type."""
        try:
            config = json.loads((self._dir(s.name) / "edge_config.json").read_text()).get("vectors") or {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the engine config of collection '{s.name}' in {self.uri}: {exc}") from exc
        return {
            "id": {"type": s.id_type},
            "vectors": {f: config.get(f) for f in s.dense},
            "payload": {
                "indexes": {
                    k: {"data_type": str(v.data_type).rsplit(".", 1)[-1], "params": None if v.params is None else str(v.params)}
                    for k, v in self._payload_indexes(s).items()
                }
            },
        }

    # ------------------------------------------------------------------ protocol: aliases, admin
    def get_alias(self, alias: str) -> str | None:
        self._check_open()
        return self._aliases.get(alias)

    def set_alias(self, alias: str, collection_name: str) -> None:
        """Point ``alias`` at a collection by replacing ``aliases.json`` atomically."""
        self._check_open()
        self._check_new_name(alias, "alias")
        if self._load_meta(alias) is not None:
            raise StoreError(f"alias '{alias}' would shadow a collection of that name in {self.uri}")
        real = self._layout(collection_name).name
        self._write_aliases({**self._aliases, alias: real})
        logger.info("alias '%s' -> '%s' in %s", alias, real, self.uri)

    def drop_alias(self, alias: str) -> None:
        self._check_open()
        if alias in self._aliases:
            self._write_aliases({a: c for a, c in self._aliases.items() if a != alias})

    def drop(self, collection_name: str) -> None:
        """Delete a collection (not an alias) and the aliases pointing at it."""
        self._check_open()
        if self._load_meta(collection_name) is None:
            return
        shard = self._shards.pop(collection_name, None)
        if shard is not None:
            self._call("close", collection_name, shard.close)
        path = self._dir(collection_name)
        (path / META_FILE).unlink()  # unpublish first: a crash below leaves an invisible leftover
        self._meta.pop(collection_name, None)
        shutil.rmtree(path, ignore_errors=True)
        if any(c == collection_name for c in self._aliases.values()):
            self._write_aliases({a: c for a, c in self._aliases.items() if c != collection_name})
        logger.info("dropped Qdrant Edge collection '%s' in %s", collection_name, self.uri)

    def flush(self, collection_name: str) -> None:
        """Run the engine's optimizers (build sparse/HNSW indexes, merge segments) and flush to
        disk. Call after bulk writes, not per batch (building an HNSW index takes a while)."""
        s = self._layout(collection_name)
        self._call("optimize", s.name, s.shard.optimize)
        self._call("flush", s.name, s.shard.flush)

    def close(self) -> None:
        """Close every open shard and release the directory lock (idempotent)."""
        shards, self._shards = self._shards, {}
        errors = []
        for name, shard in shards.items():
            try:
                self._call("close", name, shard.close)
            except StoreError as exc:
                errors.append(exc)
        self._meta.clear()
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None
        if errors:
            raise errors[0]

    def __del__(self) -> None:  # release the lock if the caller forgot to close
        try:
            if getattr(self, "_lock_fd", None) is not None:
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
