"""Engine-side helpers of bench/scale.py: collection layout, engine settings the adapters do not offer yet, sizes.

Each collection of the benchmark lives in its own store location (a Qdrant Edge root directory or
a Milvus Lite ``.db`` file; on a server, a name prefix), so that a worker process can open it
alone and its resident memory is that collection's. The Qdrant Edge settings that
`csr_vdb.adapters.qdrant_edge.QdrantEdgeStore` does not expose (sparse index placement and
datatype, ``full_scan_threshold``, HNSW ``ef`` at search time) are prototyped here by a subclass
and by direct engine calls: they are what the adapter should offer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from csr_vdb.adapters import open_store

SOURCE = "src"
"""An empty dense collection beside each sparse one: `create_sparse_collection` copies its schema."""

EDGE_SPARSE_KEYS = {"datatype", "memory", "full_scan_threshold"}
MILVUS_SPARSE_KEYS = {"inverted_index_algo", "drop_ratio_build"}


def location(store: str, workdir: Path, name: str, server_uri: str | None) -> tuple[str, str]:
    """``(uri, collection name)`` of benchmark collection ``name``."""
    if server_uri:
        return server_uri, f"scale_{name}"
    if store == "milvus":
        return str(workdir / f"{name}.db"), name
    return str(workdir / name), name


def _edge_sparse_params(cfg: dict[str, Any]) -> Any:
    import qdrant_edge as qe

    kwargs: dict[str, Any] = {}
    if "datatype" in cfg:
        kwargs["datatype"] = {
            "float32": qe.VectorStorageDatatype.Float32,
            "float16": qe.VectorStorageDatatype.Float16,
            "uint8": qe.VectorStorageDatatype.Uint8,
        }[str(cfg["datatype"]).lower()]
    if "memory" in cfg:
        kwargs["memory"] = {"pinned": qe.Memory.Pinned, "cached": qe.Memory.Cached, "cold": qe.Memory.Cold}[
            str(cfg["memory"]).lower()
        ]
    if "full_scan_threshold" in cfg:
        kwargs["full_scan_threshold"] = int(cfg["full_scan_threshold"])
    return qe.EdgeSparseVectorParams(**kwargs)


def open_tuned(store: str, uri: str, sparse_config: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """A store that creates sparse collections with ``sparse_config`` (engine settings).

    Qdrant Edge: ``datatype`` (float32/float16/uint8), ``memory`` (pinned/cached/cold: the sparse
    index in RAM or memory-mapped), ``full_scan_threshold``. Milvus: ``inverted_index_algo``,
    ``drop_ratio_build`` (Milvus Lite accepts only the defaults and says so). An empty config
    gives the adapter as it is.
    """
    cfg = dict(sparse_config or {})
    if store == "qdrant-edge":
        unknown = set(cfg) - EDGE_SPARSE_KEYS
        if unknown:
            raise ValueError(f"unknown Qdrant Edge sparse settings {sorted(unknown)} (use {sorted(EDGE_SPARSE_KEYS)})")
        if not cfg:
            return open_store(store, uri)
        import qdrant_edge as qe

        from csr_vdb.adapters import qdrant_edge as edge_mod

        params = _edge_sparse_params(cfg)

        class TunedEdgeStore(edge_mod.QdrantEdgeStore):
            """`QdrantEdgeStore` whose new shards get the benchmark's sparse index settings."""

            def _create(self, name, dense, sparse, id_type):  # type: ignore[override]
                real = qe.EdgeSparseVectorParams
                qe.EdgeSparseVectorParams = lambda: params  # type: ignore[assignment]
                try:
                    return super()._create(name, dense, sparse, id_type)
                finally:
                    qe.EdgeSparseVectorParams = real  # type: ignore[assignment]

        return TunedEdgeStore(uri)
    if store == "milvus":
        unknown = set(cfg) - MILVUS_SPARSE_KEYS
        if unknown:
            raise ValueError(f"unknown Milvus sparse settings {sorted(unknown)} (use {sorted(MILVUS_SPARSE_KEYS)})")
        s = open_store(store, uri, token=token)
        if cfg:
            client = s._client
            real_add = None

            def add_index(self_idx, field_name, index_type="", index_name="", **kwargs):
                if field_name == "csr":
                    kwargs["params"] = {**kwargs.get("params", {}), **cfg}
                return real_add(self_idx, field_name, index_type, index_name, **kwargs)

            params_cls = type(client.prepare_index_params())
            real_add = params_cls.add_index
            s._bench_restore = (params_cls, real_add)
            params_cls.add_index = add_index  # restored by `restore_milvus`
        return s
    return open_store(store, uri, token=token)


def restore_milvus(store: Any) -> None:
    """Undo the index-parameter hook `open_tuned` set on a Milvus store."""
    hook = getattr(store, "_bench_restore", None)
    if hook is not None:
        cls, real = hook
        cls.add_index = real
        store._bench_restore = None


def edge_dense_query(store: Any, collection: str, vector: list[float], limit: int, ef: int | None) -> list[Any]:
    """One dense query straight to the Qdrant Edge engine with an HNSW ``ef`` (None: engine default).

    The adapter's `search_dense` takes no ``ef``; this is the call it should make.
    """
    import qdrant_edge as qe

    s = store._layout(collection)
    field = next(iter(s.dense))
    shard = s.shard
    req = qe.QueryRequest(
        limit=int(limit),
        query=qe.Query.Nearest(vector, using=field),
        with_payload=False,
        with_vector=False,
        params=qe.SearchParams(hnsw_ef=int(ef)) if ef else None,
    )
    return [p.id for p in shard.query(req)]


def disk_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes of the files under ``path`` (a file or a directory; None if absent)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.is_dir():
        return None
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def rss(pid: int | str = "self") -> dict[str, float] | None:
    """Resident memory of a process in MB: ``{"rss", "anon", "file"}`` (Linux /proc; None elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            kb[key] = float(val.split()[0])
    return {
        "rss": round(kb.get("VmRSS", 0.0) / 1024, 1),
        "anon": round(kb.get("RssAnon", 0.0) / 1024, 1),
        "file": round((kb.get("RssFile", 0.0) + kb.get("RssShmem", 0.0)) / 1024, 1),
    }
