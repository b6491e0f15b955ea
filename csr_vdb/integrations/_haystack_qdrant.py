"""`CSRQdrantDocumentStore`: qdrant-haystack's document store on a collection migrated by csr-vdb."""

from __future__ import annotations

import inspect
from typing import Any

from csr_vdb.integrations._base import require

_ds = require("haystack_integrations.document_stores.qdrant", "haystack", "CSRQdrantDocumentStore", "qdrant-haystack")
_conv = require(
    "haystack_integrations.document_stores.qdrant.converters", "haystack", "CSRQdrantDocumentStore", "qdrant-haystack"
)
_filters = require(
    "haystack_integrations.document_stores.qdrant.filters", "haystack", "CSRQdrantDocumentStore", "qdrant-haystack"
)
_hs = require("haystack", "haystack", "CSRQdrantDocumentStore", "haystack-ai")
_dc = require("haystack.dataclasses", "haystack", "CSRQdrantDocumentStore", "haystack-ai")
_types = require("haystack.document_stores.types", "haystack", "CSRQdrantDocumentStore", "haystack-ai")
from qdrant_client.http import models as rest  # noqa: E402  (qdrant-haystack's own dependency)

_QdrantDocumentStore = _ds.QdrantDocumentStore
DEFAULT_GROUP_SIZE = 3


class CSRQdrantDocumentStore(_QdrantDocumentStore):
    """A ``QdrantDocumentStore`` whose sparse vectors live in the field ``csr`` of a migrated collection.

    qdrant-haystack names its vectors ``text-dense`` / ``text-sparse`` when it uses sparse
    embeddings, and keeps the unnamed default vector otherwise. A collection that Haystack wrote
    without sparse embeddings and csr-vdb migrated keeps that unnamed dense vector and gains the
    sparse field ``csr``; this store reads it as Haystack wrote it (dense search, filters, documents
    by id, all unchanged) and adds sparse and hybrid search (``QdrantSparseEmbeddingRetriever``,
    ``QdrantHybridRetriever``) and writes of ``sparse_embedding`` on ``csr``::

        store = CSRQdrantDocumentStore(path="qdrant_data", index="docs_csr", embedding_dim=384)
        retriever = QdrantSparseEmbeddingRetriever(document_store=store, top_k=10)

    Args:
        *args, **kwargs: those of ``QdrantDocumentStore`` (``use_sparse_embeddings`` excepted).
        sparse_vector_name: the sparse field (``csr`` unless migrated with another name).
    """

    def __init__(self, *args: Any, sparse_vector_name: str = "csr", **kwargs: Any) -> None:
        if kwargs.pop("use_sparse_embeddings", False):
            raise ValueError("CSRQdrantDocumentStore reads the sparse field itself: leave use_sparse_embeddings off")
        super().__init__(*args, use_sparse_embeddings=False, **kwargs)
        self.sparse_vector_name = sparse_vector_name

    def to_dict(self) -> dict[str, Any]:
        """Serialise with the parent's parameters plus ``sparse_vector_name``."""
        params = inspect.signature(_QdrantDocumentStore.__init__).parameters
        init = {k: getattr(self, k) for k in params if k not in ("self", "use_sparse_embeddings")}
        init["api_key"] = self.api_key.to_dict() if self.api_key else None
        init["sparse_vector_name"] = self.sparse_vector_name
        return _hs.default_to_dict(self, **init)

    # ------------------------------------------------------------------ writes
    def write_documents(self, documents: list[Any], policy: Any = None) -> int:
        """Write documents with their dense ``embedding`` (the collection's dense vector) and
        their ``sparse_embedding`` (field ``csr``); duplicates as ``QdrantDocumentStore`` handles them.

        Returns:
            The number of documents written.
        """
        self._initialize_client()
        assert self._client is not None
        policy = policy or _types.DuplicatePolicy.FAIL
        if any(not isinstance(d, _hs.Document) for d in documents):
            raise ValueError("write_documents() expects a list of Documents")
        todo = self._handle_duplicate_documents(documents=documents, policy=policy)
        for start in range(0, len(todo), self.write_batch_size):
            points = [self._point(d) for d in todo[start : start + self.write_batch_size]]
            self._client.upsert(collection_name=self.index, points=points, wait=self.wait_result_from_api)
        return len(todo)

    def _point(self, document: Any) -> Any:
        payload = document.to_dict(flatten=False)
        vector: dict[str, Any] = {}
        dense = payload.pop("embedding", None)
        if dense is not None:
            vector[""] = dense
        sparse = payload.pop("sparse_embedding", None)
        if sparse is not None:
            vector[self.sparse_vector_name] = rest.SparseVector(**sparse)
        return rest.PointStruct(id=_conv.convert_id(document.id), vector=vector, payload=payload)

    # ------------------------------------------------------------------ reads
    def _split_vectors(self, points: list[Any]) -> list[Any]:
        """Points of a migrated collection carry ``{"": dense, "csr": sparse}``: keep the dense
        vector where Haystack expects it; the sparse ones, in point order."""
        sparse = []
        for p in points:
            vec = getattr(p, "vector", None)
            if isinstance(vec, dict):
                sp = vec.get(self.sparse_vector_name)
                sparse.append(_dc.SparseEmbedding(indices=sp.indices, values=sp.values) if sp else None)
                p.vector = vec.get("")
            else:
                sparse.append(None)
        return sparse

    @staticmethod
    def _with_sparse(documents: list[Any], sparse: list[Any]) -> list[Any]:
        for d, sp in zip(documents, sparse):
            if sp is not None:
                d.sparse_embedding = sp
        return documents

    def _process_query_point_results(self, results: list[Any], scale_score: bool = False) -> list[Any]:
        sparse = self._split_vectors(results)
        return self._with_sparse(super()._process_query_point_results(results, scale_score=scale_score), sparse)

    def _process_group_results(self, groups: list[Any]) -> list[Any]:
        sparse = [sp for g in groups for sp in self._split_vectors(g.hits)]
        return self._with_sparse(super()._process_group_results(groups), sparse)

    # ------------------------------------------------------------------ sparse and hybrid search
    def _request(self, query_sparse_embedding: Any, filters: Any, query_embedding: Any = None,
                 rrf_k: int | None = None, rrf_weights: list[float] | None = None) -> dict[str, Any]:
        """``query_points`` arguments: the sparse query on ``csr``, or (with ``query_embedding``)
        both queries fused by reciprocal rank fusion, the dense one on the collection's default vector."""
        sparse = rest.SparseVector(indices=query_sparse_embedding.indices, values=query_sparse_embedding.values)
        where = _filters.convert_filters_to_qdrant(filters)
        req: dict[str, Any] = {"collection_name": self.index}
        if query_embedding is None:
            return {**req, "query": sparse, "using": self.sparse_vector_name, "query_filter": where}
        if rrf_k is None and rrf_weights is None:
            fusion: Any = rest.FusionQuery(fusion=rest.Fusion.RRF)
        else:
            params = {k: v for k, v in (("k", rrf_k), ("weights", rrf_weights)) if v is not None}
            fusion = rest.RrfQuery(rrf=rest.Rrf(**params))
        prefetch = [
            rest.Prefetch(query=sparse, using=self.sparse_vector_name, filter=where),
            rest.Prefetch(query=list(query_embedding), filter=where),
        ]
        return {**req, "prefetch": prefetch, "query": fusion}

    def _search(self, req: dict[str, Any], top_k: int, return_embedding: bool, score_threshold: float | None,
                group_by: str | None, group_size: int | None, scale_score: bool = False) -> list[Any]:
        self._initialize_client()
        assert self._client is not None
        common = {"limit": top_k, "with_vectors": return_embedding, "score_threshold": score_threshold}
        if group_by:
            res = self._client.query_points_groups(
                **req, **common, group_by=group_by, group_size=group_size or DEFAULT_GROUP_SIZE
            )
            return self._process_group_results(res.groups)
        res = self._client.query_points(**req, **common)
        return self._process_query_point_results(res.points, scale_score=scale_score)

    async def _search_async(self, req: dict[str, Any], top_k: int, return_embedding: bool,
                            score_threshold: float | None, group_by: str | None, group_size: int | None,
                            scale_score: bool = False) -> list[Any]:
        await self._initialize_async_client()
        assert self._async_client is not None
        common = {"limit": top_k, "with_vectors": return_embedding, "score_threshold": score_threshold}
        if group_by:
            res = await self._async_client.query_points_groups(
                **req, **common, group_by=group_by, group_size=group_size or DEFAULT_GROUP_SIZE
            )
            return self._process_group_results(res.groups)
        res = await self._async_client.query_points(**req, **common)
        return self._process_query_point_results(res.points, scale_score=scale_score)

    def _query_by_sparse(self, query_sparse_embedding: Any, filters: Any = None, top_k: int = 10,
                         scale_score: bool = False, return_embedding: bool = False,
                         score_threshold: float | None = None, group_by: str | None = None,
                         group_size: int | None = None) -> list[Any]:
        """Top documents by the sparse dot product on ``csr`` (``QdrantSparseEmbeddingRetriever``)."""
        req = self._request(query_sparse_embedding, filters)
        return self._search(req, top_k, return_embedding, score_threshold, group_by, group_size, scale_score)

    async def _query_by_sparse_async(self, query_sparse_embedding: Any, filters: Any = None, top_k: int = 10,
                                     scale_score: bool = False, return_embedding: bool = False,
                                     score_threshold: float | None = None, group_by: str | None = None,
                                     group_size: int | None = None) -> list[Any]:
        """`_query_by_sparse` on the async client."""
        req = self._request(query_sparse_embedding, filters)
        return await self._search_async(req, top_k, return_embedding, score_threshold, group_by, group_size,
                                        scale_score)

    def _query_hybrid(self, query_embedding: list[float], query_sparse_embedding: Any, filters: Any = None,
                      top_k: int = 10, return_embedding: bool = False, score_threshold: float | None = None,
                      group_by: str | None = None, group_size: int | None = None, rrf_k: int | None = None,
                      rrf_weights: list[float] | None = None) -> list[Any]:
        """Dense and sparse results fused by reciprocal rank fusion (``QdrantHybridRetriever``)."""
        req = self._request(query_sparse_embedding, filters, query_embedding, rrf_k, rrf_weights)
        return self._search(req, top_k, return_embedding, score_threshold, group_by, group_size)

    async def _query_hybrid_async(self, query_embedding: list[float], query_sparse_embedding: Any,
                                  filters: Any = None, top_k: int = 10, return_embedding: bool = False,
                                  score_threshold: float | None = None, group_by: str | None = None,
                                  group_size: int | None = None, rrf_k: int | None = None,
                                  rrf_weights: list[float] | None = None) -> list[Any]:
        """`_query_hybrid` on the async client."""
        req = self._request(query_sparse_embedding, filters, query_embedding, rrf_k, rrf_weights)
        return await self._search_async(req, top_k, return_embedding, score_threshold, group_by, group_size)
