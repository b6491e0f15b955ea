"""Database adapters behind one `VectorStore` protocol; `open_store` picks one by name."""

from __future__ import annotations

from csr_vdb import store as _contract
from csr_vdb.adapters._retry import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from csr_vdb.adapters.base import *  # noqa: F403 - the store contract, re-exported
from csr_vdb.errors import ConfigError
from csr_vdb.store import VectorStore

STORE_KINDS = (*_contract.STORE_KINDS, "memory")
"""What `open_store` opens: the databases of `csr_vdb.store.STORE_KINDS` and the in-memory test double."""

__all__ = [*_contract.__all__, "open_store"]


def open_store(
    kind: str,
    uri: str | None = None,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> VectorStore:
    """Open a store by kind.

    Args:
        kind: "milvus" (Milvus Lite file or server URL), "qdrant" (qdrant-client: server URL or
            local-mode directory), "qdrant-edge" (embedded Qdrant engine, a directory) or "memory".
        uri: file/directory path for embedded engines, http(s)/grpc URL for servers.
        token: Milvus token or Qdrant API key (never logged or shown in errors).
        timeout: seconds one request waits for a server (each attempt).
        retries: attempts after the first when a server fails transiently (connection refused or
            reset, timeouts, unavailable), with exponential backoff (`csr_vdb.adapters._retry`).

    Raises:
        ConfigError: unknown kind or missing uri.
        StoreError: the database cannot be opened or reached.
    """
    if kind == "memory":
        from csr_vdb.adapters.memory import MemoryStore

        return MemoryStore(uri or "memory://")
    if not uri:
        raise ConfigError(f"--uri is required for store '{kind}'")
    if kind == "milvus":
        from csr_vdb.adapters.milvus import MilvusStore

        return MilvusStore(uri, token=token, timeout=timeout, retries=retries)
    if kind == "qdrant":
        from csr_vdb.adapters.qdrant import QdrantStore

        return QdrantStore(uri, api_key=token, timeout=timeout, retries=retries)
    if kind == "qdrant-edge":
        from csr_vdb.adapters.qdrant_edge import QdrantEdgeStore

        return QdrantEdgeStore(uri)
    raise ConfigError(f"unknown store '{kind}' (choose from {', '.join(STORE_KINDS)})")
