"""The `VectorStore` protocol and the frozen records that cross it.

Everything in csr-vdb that touches a database goes through this protocol; the modules
`milvus.py`, `qdrant.py` (qdrant-client) and `qdrant_edge.py` are its only implementations
that import a database client, and `memory.py` is the reference implementation / test double.

Conventions every implementation follows (the contract suite in tests/adapters checks them):
- ids are ``int`` (non-negative, < 2**63) or ``str`` (Milvus VARCHAR / Qdrant UUID); one type per
  collection, reported by `CollectionInfo.id_type`.
- dense vectors cross as float32 numpy arrays ``[n, dim]``; sparse vectors as `SparseVectors`.
- payloads are JSON-compatible dicts, copied exactly (nested dicts, lists, unicode, None).
- the sparse vector of a migrated collection is named `SPARSE_FIELD` ("csr") and scored by
  inner product; dense vectors keep their source field name and metric.
- `iter_dense` yields pages in ascending primary-key order; ``after`` is an exclusive cursor
  (the last id of the previous page), so a reader can resume anywhere.
- writes validate their input first and raise `DataError` with nothing written.
- aliases are names that resolve to a collection in every read method.
- client exceptions are translated to `StoreError` / `CollectionNotFoundError` naming the
  collection and the URI (never a token or API key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from csr_vdb.sparse import SparseVectors

SPARSE_FIELD = "csr"
"""Name of the sparse vector field/named vector in every collection csr-vdb writes."""

Id = int | str
Metric = Literal["cosine", "ip", "l2"]
IdType = Literal["int", "str"]


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


@dataclass(frozen=True)
class DensePage:
    """One page of `VectorStore.iter_dense`: rows in ascending id order.

    Attributes:
        ids: the primary keys.
        vectors: ``[len(ids), dimension]`` float32.
        payloads: one dict per row (all non-vector fields).
        cursor: pass as ``after`` to continue behind this page (= ``ids[-1]``).
    """

    ids: list[Id]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]

    @property
    def cursor(self) -> Id:
        return self.ids[-1]

    def __len__(self) -> int:
        return len(self.ids)


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
    ) -> None:
        """Upsert dense rows into a collection made by `create_dense_collection`."""
        ...

    def iter_dense(
        self,
        collection_name: str,
        batch_size: int = 1000,
        after: Id | None = None,
        vector_field: str | None = None,
    ) -> Iterator[DensePage]:
        """Stream ``(ids, vectors, payloads)`` pages in ascending id order after ``after``."""
        ...

    def create_sparse_collection(
        self,
        collection_name: str,
        like: str,
        *,
        keep_dense: bool = True,
        vector_field: str | None = None,
    ) -> None:
        """Create ``collection_name`` with the sparse field `SPARSE_FIELD`, the id type and payload
        schema of ``like`` and (when ``keep_dense``) its dense field ``vector_field``.

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
    ) -> None:
        """Write rows (idempotent by id). Validates everything first; nothing is written on error.

        Returns only once the database acknowledged the write durably enough to be read back.
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

    def search_dense(
        self,
        collection_name: str,
        queries: np.ndarray,
        limit: int = 10,
        with_payload: bool = False,
        vector_field: str | None = None,
    ) -> list[list[Hit]]:
        """Top-``limit`` rows by the dense field's metric, one list per query, best first."""
        ...

    def fetch(
        self,
        collection_name: str,
        ids: Sequence[Id],
        with_dense: bool = False,
        with_sparse: bool = False,
    ) -> list[Record]:
        """Rows by id in the order asked; ids that do not exist are left out."""
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
