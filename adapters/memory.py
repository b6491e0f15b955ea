"""`MemoryStore`: the reference `VectorStore` in plain numpy, used as the test double."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
from csr_vdb.errors import CollectionNotFoundError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_dense


@dataclass
class _Collection:
    id_type: IdType
    dense: dict[str, tuple[int, Metric]]  # field -> (dim, metric)
    sparse: bool
    rows: dict[Id, dict[str, Any]] = field(default_factory=dict)  # id -> {"payload", "dense", "sparse"}


def check_ids(ids: Sequence[Id], id_type: IdType, n: int) -> list[Id]:
    """Validate a batch of ids against the collection's id type; shared by every adapter."""
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


def check_payloads(payloads: Sequence[dict[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    """Payloads must be JSON-serialisable dicts, one per row."""
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


class MemoryStore:
    """A `VectorStore` kept in process memory; exact (brute-force) search."""

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._cols: dict[str, _Collection] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------ helpers
    def _resolve(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _col(self, name: str) -> _Collection:
        real = self._resolve(name)
        if real not in self._cols:
            raise CollectionNotFoundError(f"collection '{name}' not found in {self.uri}")
        return self._cols[real]

    def _field(self, col: _Collection, name: str, vector_field: str | None) -> str:
        if not col.dense:
            raise StoreError(f"collection '{name}' has no dense vector field")
        f = vector_field or next(iter(col.dense))
        if f not in col.dense:
            raise StoreError(
                f"collection '{name}' has no vector field '{f}' (fields: {', '.join(col.dense)})"
            )
        return f

    # ------------------------------------------------------------ protocol
    def list_collections(self) -> list[str]:
        return sorted(self._cols)

    def has_collection(self, collection_name: str) -> bool:
        return self._resolve(collection_name) in self._cols

    def describe(self, collection_name: str) -> CollectionInfo:
        col = self._col(collection_name)
        first = next(iter(col.dense), None)
        schema: dict[str, str] = {}
        for row in col.rows.values():
            for k, v in row["payload"].items():
                schema.setdefault(k, type(v).__name__)
        return CollectionInfo(
            name=self._resolve(collection_name),
            dimension=col.dense[first][0] if first else 0,
            metric=col.dense[first][1] if first else "ip",
            vector_field=first,
            id_type=col.id_type,
            count=len(col.rows),
            vector_fields={k: v[0] for k, v in col.dense.items()},
            sparse_field=SPARSE_FIELD if col.sparse else None,
            payload_schema=schema,
        )

    def count(self, collection_name: str) -> int:
        return len(self._col(collection_name).rows)

    def create_dense_collection(
        self,
        collection_name: str,
        dimension: int,
        *,
        metric: Metric = "cosine",
        id_type: IdType = "int",
        vector_field: str = "vector",
    ) -> None:
        if self.has_collection(collection_name):
            raise StoreError(f"collection '{collection_name}' already exists in {self.uri}")
        self._cols[collection_name] = _Collection(id_type, {vector_field: (dimension, metric)}, False)

    def insert_dense(
        self,
        collection_name: str,
        ids: Sequence[Id],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        col = self._col(collection_name)
        f = self._field(col, collection_name, None)
        vecs = check_dense(vectors, col.dense[f][0])
        ids = check_ids(ids, col.id_type, len(vecs))
        payloads = check_payloads(payloads, len(vecs))
        for i, v, p in zip(ids, vecs, payloads):
            col.rows[i] = {"payload": copy.deepcopy(p), "dense": {f: v.copy()}, "sparse": None}

    def iter_dense(
        self,
        collection_name: str,
        batch_size: int = 1000,
        after: Id | None = None,
        vector_field: str | None = None,
    ) -> Iterator[DensePage]:
        col = self._col(collection_name)
        f = self._field(col, collection_name, vector_field)
        keys = sorted(k for k in col.rows if after is None or k > after)  # type: ignore[operator]
        for s in range(0, len(keys), batch_size):
            chunk = keys[s : s + batch_size]
            yield DensePage(
                ids=list(chunk),
                vectors=np.stack([col.rows[k]["dense"][f] for k in chunk]).astype(np.float32),
                payloads=[copy.deepcopy(col.rows[k]["payload"]) for k in chunk],
            )

    def create_sparse_collection(
        self,
        collection_name: str,
        like: str,
        *,
        keep_dense: bool = True,
        vector_field: str | None = None,
    ) -> None:
        src = self._col(like)
        dense = {}
        if keep_dense and src.dense:
            f = self._field(src, like, vector_field)
            dense = {f: src.dense[f]}
        if self.has_collection(collection_name):
            tgt = self._col(collection_name)
            if tgt.id_type != src.id_type or tgt.dense != dense or not tgt.sparse:
                raise StoreError(
                    f"collection '{collection_name}' already exists with another schema in {self.uri}"
                )
            return
        self._cols[collection_name] = _Collection(src.id_type, dense, True)

    def upsert(
        self,
        collection_name: str,
        ids: Sequence[Id],
        sparse: SparseVectors,
        payloads: Sequence[dict[str, Any]] | None = None,
        dense: np.ndarray | None = None,
    ) -> None:
        col = self._col(collection_name)
        if not col.sparse:
            raise StoreError(f"collection '{collection_name}' has no sparse field '{SPARSE_FIELD}'")
        ids = check_ids(ids, col.id_type, len(sparse))
        sparse.validate(ids)
        payloads = check_payloads(payloads, len(ids))
        f = next(iter(col.dense), None)
        if dense is not None:
            if f is None:
                raise DataError(f"collection '{collection_name}' keeps no dense vectors")
            dense = check_dense(dense, col.dense[f][0], ids)
        elif f is not None:
            raise DataError(f"collection '{collection_name}' needs dense vectors for field '{f}'")
        pairs = sparse.to_qdrant()
        for n, i in enumerate(ids):
            col.rows[i] = {
                "payload": copy.deepcopy(payloads[n]),
                "dense": {f: dense[n].copy()} if dense is not None and f else {},
                "sparse": pairs[n],
            }

    def search_sparse(
        self,
        collection_name: str,
        queries: SparseVectors,
        limit: int = 10,
        with_payload: bool = False,
    ) -> list[list[Hit]]:
        col = self._col(collection_name)
        if not col.sparse:
            raise StoreError(f"collection '{collection_name}' has no sparse field '{SPARSE_FIELD}'")
        queries.validate(allow_empty=True)
        keys = sorted(col.rows)
        docs = SparseVectors.from_qdrant([col.rows[k]["sparse"] for k in keys], queries.dim)
        scores = (queries.to_scipy() @ docs.to_scipy().T).toarray() if keys else np.zeros((len(queries), 0))
        return self._top(col, keys, scores, limit, with_payload, positive_only=True)

    def search_dense(
        self,
        collection_name: str,
        queries: np.ndarray,
        limit: int = 10,
        with_payload: bool = False,
        vector_field: str | None = None,
    ) -> list[list[Hit]]:
        col = self._col(collection_name)
        f = self._field(col, collection_name, vector_field)
        dim, metric = col.dense[f]
        q = check_dense(queries, dim, what="queries")
        keys = sorted(col.rows)
        mat = np.stack([col.rows[k]["dense"][f] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        if metric == "cosine":
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            mn = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-30)
            scores = qn @ mn.T
        elif metric == "ip":
            scores = q @ mat.T
        else:
            scores = -(((q[:, None, :] - mat[None, :, :]) ** 2).sum(-1))
        return self._top(col, keys, scores, limit, with_payload, positive_only=False)

    @staticmethod
    def _top(col, keys, scores, limit, with_payload, positive_only) -> list[list[Hit]]:
        out = []
        for row in scores:
            order = sorted(range(len(keys)), key=lambda j: (-row[j], keys[j]))
            hits = []
            for j in order[:limit]:
                if positive_only and row[j] <= 0:
                    break
                payload = copy.deepcopy(col.rows[keys[j]]["payload"]) if with_payload else None
                hits.append(Hit(keys[j], float(row[j]), payload))
            out.append(hits)
        return out

    def fetch(
        self,
        collection_name: str,
        ids: Sequence[Id],
        with_dense: bool = False,
        with_sparse: bool = False,
    ) -> list[Record]:
        col = self._col(collection_name)
        out = []
        for i in ids:
            row = col.rows.get(i)
            if row is None:
                continue
            dense = next(iter(row["dense"].values()), None) if with_dense else None
            out.append(
                Record(
                    id=i,
                    payload=copy.deepcopy(row["payload"]),
                    dense=dense.copy() if dense is not None else None,
                    sparse=row["sparse"] if with_sparse else None,
                )
            )
        return out

    def get_alias(self, alias: str) -> str | None:
        return self._aliases.get(alias)

    def set_alias(self, alias: str, collection_name: str) -> None:
        if alias in self._cols:
            raise StoreError(f"alias '{alias}' would shadow a collection of that name")
        self._col(collection_name)
        self._aliases[alias] = self._resolve(collection_name)

    def drop_alias(self, alias: str) -> None:
        self._aliases.pop(alias, None)

    def drop(self, collection_name: str) -> None:
        self._cols.pop(collection_name, None)
        self._aliases = {a: c for a, c in self._aliases.items() if c != collection_name}

    def flush(self, collection_name: str) -> None:
        self._col(collection_name)

    def close(self) -> None:
        pass
