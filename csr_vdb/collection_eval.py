"""Dense vs sparse quality, size and latency measured on a collection itself (no labels needed).

Sampled rows of the collection serve as queries; the reference is the database's own dense
search, so the figures say how much of the dense neighbourhood a user keeps after migrating.
The store is any `csr_vdb.store.VectorStore`; the core never imports an adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from csr_vdb.config import QueryWidthFields
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.retriever import DEFAULT_CANDIDATES, Projection, Retriever
from csr_vdb.store import Hit, Id, VectorStore

if TYPE_CHECKING:
    from csr_vdb.model import CSREncoder

logger = logging.getLogger(__name__)

BYTES_PER_NONZERO = 8
"""A stored sparse entry: int32 index + float32 value."""


class CollectionEvalReport(QueryWidthFields):
    """What `evaluate_collection` measured."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Dense collection (the reference).")
    target: str = Field(description="Sparse collection that was searched.")
    queries: int = Field(description="Sampled rows used as queries.")
    top_k: int = Field(description="Neighbours compared per query.")
    candidates: int = Field(description="Sparse candidates re-ranked per query.")
    recall_sparse: float = Field(description="Mean recall@top_k of sparse search vs dense search.")
    recall_rerank: float = Field(description="Same after exact re-ranking of the sparse candidates (dense when kept).")
    recall_rescore: float = Field(
        description="Same after exact re-scoring of the candidates from their stored codes (no dense vector used)."
    )
    dense_bytes_per_vector: float = Field(description="float32 dense vector size.")
    sparse_bytes_per_vector: float = Field(description="Mean non-zeros x 8 bytes (int32 index + float32 value).")
    mean_nnz: float = Field(description="Mean non-zeros per document code.")
    latency_ms: dict[str, float] = Field(
        description="Median single-query latency per mode: dense, sparse, rerank, rescore."
    )
    batch_ms_per_query: dict[str, float] = Field(description="Whole query batch time / queries, per mode.")


def sample_rows(
    store: VectorStore,
    collection_name: str,
    n: int,
    *,
    seed: int = 0,
    vector_field: str | None = None,
    batch_size: int = 1000,
) -> tuple[list[Id], np.ndarray]:
    """Uniform sample of ``n`` rows (reservoir sampling over one streaming pass of `iter_dense`).

    Returns:
        (ids, vectors float32 [m, dim]) with m = min(n, rows), in stream order.

    Raises:
        DataError: the collection is empty.
    """
    rng = np.random.default_rng(seed)
    ids: list[Id] = []
    vecs: list[np.ndarray] = []
    seen = 0
    for page in store.iter_dense(collection_name, batch_size=batch_size, vector_field=vector_field):
        for j, rid in enumerate(page.ids):
            if len(ids) < n:
                ids.append(rid)
                vecs.append(np.array(page.vectors[j], dtype=np.float32))
            else:
                r = int(rng.integers(0, seen + 1))
                if r < n:
                    ids[r] = rid
                    vecs[r] = np.array(page.vectors[j], dtype=np.float32)
            seen += 1
    if not ids:
        raise DataError(f"collection '{collection_name}' is empty")
    return ids, np.stack(vecs)


def _recall(ref: Sequence[Sequence[Id]], got: Sequence[Sequence[Id]], top_k: int) -> float:
    vals = []
    for r, g in zip(ref, got):
        r = list(r)[:top_k]
        if r:
            vals.append(len(set(r) & set(list(g)[:top_k])) / len(r))
    return float(np.mean(vals)) if vals else 0.0


def _drop_self(lists: Sequence[Sequence[Hit]], ids: Sequence[Id], top_k: int) -> list[list[Id]]:
    # a sampled row finds itself first in every mode; neighbour recall is about the others
    return [[h.id for h in hs if h.id != qid][:top_k] for hs, qid in zip(lists, ids)]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000.0


def evaluate_collection(
    store: VectorStore,
    source: str,
    target: str,
    encoder: CSREncoder,
    *,
    sample: int = 200,
    top_k: int = 10,
    candidates: int | None = None,
    seed: int = 0,
    vector_field: str | None = None,
    device: str | None = None,
    single_queries: int = 20,
    progress: Callable[[int, int], None] | None = None,
    query_projection: Projection | None = None,
) -> CollectionEvalReport:
    """Compare sparse search on ``target`` with dense search on ``source``, on sampled rows.

    Args:
        store: an open `VectorStore`.
        source: the dense collection (reference: its dense search).
        target: the migrated collection with the sparse field ``csr``.
        encoder: the `CSREncoder` the target was built with.
        sample: rows used as queries.
        top_k: neighbours compared (recall@top_k, the query row itself excluded).
        candidates: sparse candidates re-ranked per query (None: the encoder's
            ``search_candidates``, else 100).
        seed: sampling seed.
        vector_field: dense field of ``source`` (default: its first).
        device: re-ranker device.
        single_queries: queries timed one at a time for the latency figures.
        progress: optional callback ``(done_steps, total_steps)``.
        query_projection: "encoder" / "decoder" query codes (`CSREncoder.encode`); None = the
            encoder's own setting.

    Returns:
        A `CollectionEvalReport`.

    Raises:
        ConfigError: bad sample/top_k/candidates.
        CollectionNotFoundError / StoreError: from the store.
    """
    if candidates is None:
        candidates = encoder.config.search_candidates or DEFAULT_CANDIDATES
    if sample < 1 or top_k < 1 or candidates < top_k:
        raise ConfigError(f"need sample >= 1, top_k >= 1 and candidates >= top_k (got {sample}, {top_k}, {candidates})")
    info = store.describe(source)
    steps = 6
    ids, x = sample_rows(store, source, sample, seed=seed, vector_field=vector_field)
    if progress:
        progress(1, steps)
    retriever = Retriever(store, target, encoder, device=device, query_projection=query_projection)
    dense, t_dense = _timed(
        lambda: store.search_dense(source, x, limit=top_k + 1, vector_field=vector_field)
    )
    ref = _drop_self(dense, ids, top_k)
    if progress:
        progress(2, steps)
    sparse, t_sparse = _timed(lambda: retriever.search(x, top_k=top_k + 1, rerank=False))
    if progress:
        progress(3, steps)
    rer, t_rerank = _timed(lambda: retriever.search(x, top_k=top_k + 1, candidates=candidates, rerank=True))
    if progress:
        progress(4, steps)
    # without dense vectors the default re-rank already re-scored from the codes: not run twice
    if retriever.has_dense:
        res, t_rescore = _timed(lambda: retriever.search(x, top_k=top_k + 1, candidates=candidates, rerank="codes"))
    else:
        res, t_rescore = rer, t_rerank
    if progress:
        progress(5, steps)
    m = min(single_queries, len(x))
    single: dict[str, list[float]] = {"dense": [], "sparse": [], "rerank": [], "rescore": []}
    for i in range(m):
        q = x[i : i + 1]
        single["dense"].append(_timed(lambda: store.search_dense(source, q, limit=top_k, vector_field=vector_field))[1])
        single["sparse"].append(_timed(lambda: retriever.search(q, top_k=top_k, rerank=False))[1])
        single["rerank"].append(_timed(lambda: retriever.search(q, top_k=top_k, candidates=candidates))[1])
        if retriever.has_dense:
            single["rescore"].append(
                _timed(lambda: retriever.search(q, top_k=top_k, candidates=candidates, rerank="codes"))[1]
            )
    if not retriever.has_dense:
        single["rescore"] = single["rerank"]
    nnz = encoder.encode(x).nnz()
    if progress:
        progress(6, steps)
    n = len(x)
    return CollectionEvalReport(
        source=source,
        target=target,
        queries=n,
        top_k=top_k,
        candidates=candidates,
        **QueryWidthFields.of(encoder.config, retriever.projection),
        recall_sparse=_recall(ref, _drop_self(sparse, ids, top_k), top_k),
        recall_rerank=_recall(ref, _drop_self(rer, ids, top_k), top_k),
        recall_rescore=_recall(ref, _drop_self(res, ids, top_k), top_k),
        dense_bytes_per_vector=float(info.dimension * 4),
        sparse_bytes_per_vector=float(np.mean(nnz) * BYTES_PER_NONZERO),
        mean_nnz=float(np.mean(nnz)),
        latency_ms={k: float(np.median(v)) for k, v in single.items()},
        batch_ms_per_query={
            "dense": t_dense / n, "sparse": t_sparse / n, "rerank": t_rerank / n, "rescore": t_rescore / n
        },
    )


def _exact_top(scores: np.ndarray, top_k: int, exclude: np.ndarray | None) -> np.ndarray:
    s = scores.astype(np.float64, copy=True)
    if exclude is not None:
        s[np.arange(len(s)), exclude] = -np.inf
    part = np.argpartition(-s, top_k, axis=1)[:, :top_k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def quality_vs_k(
    x: np.ndarray,
    encoder: CSREncoder,
    ks: Sequence[int],
    *,
    queries: int = 200,
    top_k: int = 10,
    candidates: int = 100,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Neighbour recall@top_k of sparse codes at several k, exact and in memory (small collections).

    Sampled rows are the queries, every row is a document, the query row itself is excluded.
    The reference is exact cosine search over ``x``. For each k the codes of queries and
    documents use that k; rows also report the ``candidates`` re-ranked by the dense vectors
    and re-scored from their codes (the signed query for decoder-projection encoders, as
    `Retriever` does), and PCA at the same bytes per vector (2k float32 dims).

    Args:
        x: all dense vectors ``[n, d]``.
        encoder: a `CSREncoder`.
        ks: the k values (each <= hidden_dim).
        queries: sampled query rows.
        top_k: neighbours compared.
        candidates: sparse candidates re-ranked exactly by cosine.
        seed: sampling seed.

    Returns:
        One dict per k: ``k, recall, recall_rerank, recall_rescore, bytes_per_vector, pca_recall``.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n <= top_k + 1:
        raise DataError(f"need more than {top_k + 1} rows, got {n}")
    rng = np.random.default_rng(seed)
    qi = np.sort(rng.choice(n, size=min(queries, n), replace=False))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    dense = xn[qi] @ xn.T
    ref = _exact_top(dense, top_k, qi)
    mean = xn.mean(axis=0)
    _, _, vt = np.linalg.svd(xn - mean, full_matrices=False)
    exact = None
    if encoder.config.query_projection == "decoder":
        exact = encoder.encode(x[qi], kind="query", signed=True).to_scipy()
    out = []
    for k in ks:
        codes = encoder.encode(x, k=k).to_scipy()
        # queries are made the way the encoder makes them (its projection), at this k's query width
        kq = encoder.config.k_query_for(encoder.config.query_projection, k)
        qcodes = encoder.encode(x[qi], k=kq, kind="query").to_scipy()
        sp = np.asarray((qcodes @ codes.T).todense())
        top = _exact_top(sp, top_k, qi)
        c = min(candidates, n - 1)
        cand = _exact_top(sp, c, qi)
        rer = np.take_along_axis(cand, np.argsort(-np.take_along_axis(dense, cand, axis=1), axis=1, kind="stable"), 1)
        # the candidates re-scored from their codes (signed query for decoder-projection encoders)
        rescore = sp if exact is None else np.asarray((exact @ codes.T).todense())
        res = np.take_along_axis(cand, np.argsort(-np.take_along_axis(rescore, cand, axis=1), axis=1, kind="stable"), 1)
        dims = min(2 * k, vt.shape[0])
        # score the reconstructions (coefficients + the shared mean): with all dims this is exact
        recon = ((xn - mean) @ vt[:dims].T) @ vt[:dims] + mean
        pca = _exact_top(recon[qi] @ recon.T, top_k, qi)
        nnz = float(np.mean(np.diff(codes.indptr)))
        out.append({
            "k": int(k),
            "recall": _recall(ref.tolist(), top.tolist(), top_k),
            "recall_rerank": _recall(ref.tolist(), rer[:, :top_k].tolist(), top_k),
            "recall_rescore": _recall(ref.tolist(), res[:, :top_k].tolist(), top_k),
            "bytes_per_vector": nnz * BYTES_PER_NONZERO,
            "pca_recall": _recall(ref.tolist(), pca.tolist(), top_k),
        })
    return out
