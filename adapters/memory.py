"""`MemoryStore`: the reference `VectorStore` in plain numpy, used as the test double."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from csr_vdb.adapters._common import Found, Layout, StoreBase, payload_schema
from csr_vdb.errors import StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import DensePage, Id, IdType, Metric, PayloadPage, SparseIndexConfig, check_ids, check_payloads

# the id and payload checks live in the core contract; re-exported here for older imports
__all__ = ["MemoryStore", "check_ids", "check_payloads"]


@dataclass
class _Collection(Layout):
    rows: dict[Id, dict[str, Any]] = field(default_factory=dict)  # id -> {"payload", "dense", "sparse"}


class MemoryStore(StoreBase):
    """A `VectorStore` kept in process memory; exact (brute-force) search, so it takes every
    `SparseIndexConfig` setting and ``ef`` and changes nothing for them."""

    SPARSE_INDEX_SETTINGS = tuple(SparseIndexConfig.__dataclass_fields__)

    retry_policy = None  # nothing here can fail transiently

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._cols: dict[str, _Collection] = {}
        self._aliases: dict[str, str] = {}

    def _resolve(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _layout(self, collection_name: str) -> _Collection:
        col = self._cols.get(self._resolve(collection_name))
        if col is None:
            raise self._not_found(collection_name)
        return col

    # ------------------------------------------------------------------ schema
    def list_collections(self) -> list[str]:
        return sorted(self._cols)

    def has_collection(self, collection_name: str) -> bool:
        return self._resolve(collection_name) in self._cols

    def _count(self, s: Layout) -> int:
        return len(self._cols[s.name].rows)

    def _payload_sample(self, s: Layout) -> dict[str, str]:
        return payload_schema(row["payload"] for row in self._cols[s.name].rows.values())

    def _create_dense(self, name: str, dimension: int, metric: Metric, id_type: IdType, vector_field: str) -> None:
        self._cols[name] = _Collection(name, id_type, {vector_field: (dimension, metric)}, False)

    def _create_sparse(
        self, name: str, src: Layout, dense: dict[str, tuple[int, Metric]], sparse_index: SparseIndexConfig | None = None
    ) -> None:
        self._cols[name] = _Collection(name, src.id_type, dense, True)

    # ------------------------------------------------------------------ writes
    def _insert_dense(self, s: Layout, f: str, ids: list[Id], vectors: np.ndarray, payloads: list[dict]) -> None:
        rows = self._cols[s.name].rows
        for i, v, p in zip(ids, vectors, payloads):
            rows[i] = {"payload": copy.deepcopy(p), "dense": {f: v.copy()}, "sparse": None}

    def _upsert(
        self, s: Layout, ids: list[Id], codes: SparseVectors, payloads: list[dict], f: str | None, dense: np.ndarray | None
    ) -> None:
        rows = self._cols[s.name].rows
        for n, (i, pair) in enumerate(zip(ids, codes.to_qdrant())):
            rows[i] = {
                "payload": copy.deepcopy(payloads[n]),
                "dense": {f: dense[n].copy()} if dense is not None and f else {},
                "sparse": pair,
            }

    def _delete(self, s: Layout, ids: list[Id]) -> None:
        rows = self._cols[s.name].rows
        for i in ids:
            rows.pop(i, None)

    def _set_payload(self, s: Layout, ids: list[Id], payloads: list[dict]) -> list[Id]:
        rows = self._cols[s.name].rows
        for i, p in zip(ids, payloads):
            if i in rows:
                rows[i]["payload"] = copy.deepcopy(p)
        return [i for i in ids if i not in rows]

    # ------------------------------------------------------------------ reads
    def _keys_after(self, s: Layout, cursor: Id | None) -> list[Id]:
        rows = self._cols[s.name].rows
        return sorted(k for k in list(rows) if cursor is None or k > cursor)  # type: ignore[operator]

    def _iter_payloads(
        self, s: Layout, batch_size: int, cursor: Id | None, fields: list[str] | None
    ) -> Iterator[PayloadPage]:
        rows = self._cols[s.name].rows
        keys = self._keys_after(s, cursor)
        for a in range(0, len(keys), batch_size):
            chunk = [k for k in keys[a : a + batch_size] if k in rows]
            if chunk:
                yield PayloadPage(list(chunk), [copy.deepcopy(rows[k]["payload"]) for k in chunk])

    def _iter_dense(self, s: Layout, f: str, batch_size: int, cursor: Id | None) -> Iterator[DensePage]:
        rows = self._cols[s.name].rows
        keys = self._keys_after(s, cursor)
        for a in range(0, len(keys), batch_size):
            chunk = [k for k in keys[a : a + batch_size] if k in rows]  # rows deleted meanwhile left out
            if not chunk:
                continue
            yield DensePage(
                ids=list(chunk),
                vectors=np.stack([rows[k]["dense"][f] for k in chunk]).astype(np.float32),
                payloads=[copy.deepcopy(rows[k]["payload"]) for k in chunk],
            )

    def _found(self, s: Layout, key: Id, score: float, with_payload: bool, with_code: bool, f: str | None) -> Found:
        row = self._cols[s.name].rows[key]
        return Found(
            key,
            score,
            copy.deepcopy(row["payload"]) if with_payload else None,
            row["sparse"] if with_code else None,
            row["dense"].get(f) if f is not None else None,
        )

    def _top(self, s: Layout, keys: list[Id], scores: np.ndarray, limit: int, args: tuple) -> list[list[Found]]:
        out = []
        for row in scores:
            order = sorted(range(len(keys)), key=lambda j: (-row[j], keys[j]))[:limit]
            out.append([self._found(s, keys[j], float(row[j]), *args) for j in order])
        return out

    def _search(
        self, s: Layout, queries: SparseVectors, limit: int, with_payload: bool, with_codes: bool, dense_field: str | None
    ) -> list[list[Found]]:
        rows = self._cols[s.name].rows
        keys = sorted(rows)
        if not keys:
            return [[] for _ in range(len(queries))]
        docs = SparseVectors.from_pairs([rows[k]["sparse"] for k in keys], queries.dim)
        scores = (queries.to_scipy() @ docs.to_scipy().T).toarray()
        return self._top(s, keys, scores, limit, (with_payload, with_codes, dense_field))

    def _search_dense(
        self, s: Layout, f: str, queries: np.ndarray, limit: int, with_payload: bool, ef: int | None = None
    ) -> list[list[Found]]:
        rows = self._cols[s.name].rows
        dim, metric = s.dense[f]
        keys = sorted(rows)
        mat = np.stack([rows[k]["dense"][f] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        q = queries
        if metric == "cosine":
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            mn = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-30)
            scores = qn @ mn.T
        elif metric == "ip":
            scores = q @ mat.T
        else:
            scores = -(((q[:, None, :] - mat[None, :, :]) ** 2).sum(-1))
        return self._top(s, keys, scores, limit, (with_payload, False, None))

    def _fetch(self, s: Layout, ids: list[Id], dense_field: str | None, with_sparse: bool) -> Mapping[Id, Found]:
        rows = self._cols[s.name].rows
        out = {}
        for i in ids:
            row = rows.get(i)
            if row is not None:
                dense = row["dense"].get(dense_field) if dense_field is not None else None
                out[i] = Found(i, 0.0, copy.deepcopy(row["payload"]), row["sparse"] if with_sparse else None, dense)
        return out

    # ------------------------------------------------------------------ aliases, admin
    def get_alias(self, alias: str) -> str | None:
        return self._aliases.get(alias)

    def set_alias(self, alias: str, collection_name: str) -> None:
        if alias in self._cols:
            raise StoreError(f"alias '{alias}' would shadow a collection of that name")
        self._aliases[alias] = self._layout(collection_name).name

    def drop_alias(self, alias: str) -> None:
        self._aliases.pop(alias, None)

    def drop(self, collection_name: str) -> None:
        self._cols.pop(collection_name, None)
        self._aliases = {a: c for a, c in self._aliases.items() if c != collection_name}

    def flush(self, collection_name: str) -> None:
        self._layout(collection_name)

    def close(self) -> None:
        pass
