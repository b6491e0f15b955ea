"""Engine-side helpers of bench/scale.py: collection layout, sparse index settings, sizes.

Each collection of the benchmark lives in its own store location (a Qdrant Edge root directory or
a Milvus Lite ``.db`` file; on a server, a name prefix), so that a worker process can open it
alone and its resident memory is that collection's. Engine settings go through the adapters
(`VectorStore.create_sparse_collection(sparse_index=...)`, `search_dense(ef=...)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from csr_vdb.adapters import open_store
from csr_vdb.store import SparseIndexConfig

SOURCE = "src"
"""An empty dense collection beside each sparse one: `create_sparse_collection` copies its schema."""


def location(store: str, workdir: Path, name: str, server_uri: str | None) -> tuple[str, str]:
    """``(uri, collection name)`` of benchmark collection ``name``."""
    if server_uri:
        return server_uri, f"scale_{name}"
    if store == "milvus":
        return str(workdir / f"{name}.db"), name
    return str(workdir / name), name


def open_bench_store(store: str, uri: str, token: str | None = None) -> Any:
    """The adapter of ``store`` at ``uri``."""
    return open_store(store, uri, token=token)


def sparse_settings(store: str, cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The sparse index settings a new collection of ``store`` gets for ``cfg`` (the adapter's
    defaults included), as a dict; `csr_vdb.errors.ConfigError` for settings the engine lacks."""
    if store == "milvus":
        from csr_vdb.adapters.milvus import MilvusStore as cls
    else:
        from csr_vdb.adapters.qdrant_edge import QdrantEdgeStore as cls  # type: ignore[assignment]
    given = SparseIndexConfig.parse(dict(cfg or {})) or SparseIndexConfig()
    given.check_engine(cls.__name__, cls.SPARSE_INDEX_SETTINGS)
    return given.merged(cls.DEFAULT_SPARSE_INDEX).given()


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
