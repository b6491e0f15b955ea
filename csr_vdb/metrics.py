"""Retrieval quality metrics: exact and two-stage top-k search, 1-NN accuracy, Recall@k, NDCG@k."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from csr_vdb.errors import ConfigError, DataError
from csr_vdb.sparse import SparseVectors

Vectors = np.ndarray | SparseVectors
"""Either dense ``[n, d]`` float vectors or sparse codes."""

Qrels = Mapping[str, Mapping[str, int]]
"""``{query_id: {doc_id: grade}}``; grade > 0 means relevant (BEIR/trec_eval convention)."""

Run = Mapping[str, Sequence[str]]
"""``{query_id: [doc_id, ...]}`` ranked best first (a missing query is an empty ranking)."""


# --------------------------------------------------------------------------- scoring
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (``[n, d]``) scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _as_matrix(x: Vectors, metric: str):
    """Dense float32 array or scipy CSR matrix, row-normalised when ``metric == "cosine"``."""
    if metric not in ("dot", "cosine"):
        raise ConfigError(f"metric must be 'dot' or 'cosine', got {metric!r}")
    if isinstance(x, SparseVectors):
        m = x.to_scipy().astype(np.float32)
        if metric == "cosine":
            norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
            inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
            m = m.multiply(inv[:, None]).tocsr()
        return m
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D array [n, dim], got shape {arr.shape}")
    return l2_normalize(arr) if metric == "cosine" else arr


def _score_block(q, db) -> np.ndarray:
    """Dense ``[q, n]`` float32 scores ``q @ db.T`` for dense or scipy sparse operands."""
    s = q @ db.T
    if hasattr(s, "toarray"):
        s = s.toarray()
    return np.asarray(s, dtype=np.float32)


def _check_pair(queries: Vectors, database: Vectors) -> None:
    qdim = queries.dim if isinstance(queries, SparseVectors) else np.asarray(queries).shape[-1]
    ddim = database.dim if isinstance(database, SparseVectors) else np.asarray(database).shape[-1]
    if isinstance(queries, SparseVectors) != isinstance(database, SparseVectors):
        raise DataError("queries and database must both be dense or both be sparse")
    if qdim != ddim:
        raise DataError(f"queries have dimension {qdim}, database has {ddim}")
    if len(database) == 0:
        raise DataError("the database side is empty")


def exact_search(
    queries: Vectors,
    database: Vectors,
    top_k: int,
    metric: str = "dot",
    chunk_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by brute force, ``chunk_size`` queries at a time (never a full score matrix).

    Ties are broken by database row (lower row first), so results are deterministic.

    Args:
        queries: ``[q, d]`` dense array or `SparseVectors` with ``q`` rows.
        database: ``[n, d]`` dense array or `SparseVectors` (same kind and dimension as ``queries``).
        top_k: hits per query (clipped to ``n``).
        metric: ``"dot"`` or ``"cosine"`` (rows L2-normalised first).
        chunk_size: queries scored per block; memory is ``chunk_size * n`` floats.

    Returns:
        ``(scores [q, top_k] float32, rows [q, top_k] int64)``, best first.

    Raises:
        DataError: mismatched kinds or dimensions, empty database.
    """
    _check_pair(queries, database)
    q = _as_matrix(queries, metric)
    db = _as_matrix(database, metric)
    n = db.shape[0]
    top_k = max(1, min(int(top_k), n))
    scores = np.zeros((q.shape[0], top_k), np.float32)
    rows = np.zeros((q.shape[0], top_k), np.int64)
    # bound the score block to ~64M floats whatever the database size
    chunk_size = max(1, min(int(chunk_size), (1 << 26) // max(n, 1)))
    for start in range(0, q.shape[0], chunk_size):
        block = _score_block(q[start : start + chunk_size], db)
        order = _top_rows(block, top_k)
        rows[start : start + chunk_size] = order
        scores[start : start + chunk_size] = np.take_along_axis(block, order, axis=1)
    return scores, rows


def rescored_search(
    queries: Vectors,
    exact_queries: Vectors,
    database: Vectors,
    top_k: int,
    candidates: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage top-k: the ``candidates`` best rows by ``queries`` (dot product: what a database's
    index returns), re-scored by ``exact_queries`` with the exact re-ranker that
    `csr_vdb.retriever.Retriever` uses (`csr_vdb.rerank.Reranker`, float64).

    With sparse codes ``exact_queries`` may carry entries that ``queries`` cannot (negative query
    weights, which Milvus rejects), e.g. ``CSREncoder.encode_queries(x, signed=True)``.

    Args:
        queries: ``[q, d]`` dense or `SparseVectors`: the first-stage (search) queries.
        exact_queries: the same ``q`` queries as scored in the second stage (same kind and dimension).
        database: ``[n, d]`` of the same kind and dimension.
        top_k: hits per query (clipped to ``n``).
        candidates: first-stage hits per query (at least ``top_k``).

    Returns:
        ``(scores [q, top_k] float64, rows [q, top_k] int64)``, best first; equal scores keep the
        first stage's order.

    Raises:
        DataError: mismatched kinds, dimensions or query counts; empty database.
    """
    from csr_vdb.rerank import Reranker

    _check_pair(exact_queries, database)
    if len(exact_queries) != len(queries):
        raise DataError(f"{len(queries)} search queries but {len(exact_queries)} exact queries")
    n = len(database)
    top_k = max(1, min(int(top_k), n))
    _, cand = exact_search(queries, database, max(top_k, int(candidates)), metric="dot")
    lists = cand.tolist()
    reranker = Reranker(device="cpu")
    if isinstance(database, SparseVectors):
        ranked = reranker.rerank_sparse(exact_queries, lists, lambda ids: database[np.asarray(ids)], top_k=top_k)
    else:
        db = np.asarray(database, dtype=np.float32)
        ranked = reranker.rerank_dense(np.asarray(exact_queries), lists, lambda ids: db[np.asarray(ids)], top_k=top_k)
    rows = np.array([ids for ids, _ in ranked], dtype=np.int64).reshape(len(lists), top_k)
    scores = np.array([sc for _, sc in ranked], dtype=np.float64).reshape(len(lists), top_k)
    return scores, rows


def _top_rows(block: np.ndarray, top_k: int) -> np.ndarray:
    """Rows of the ``top_k`` best scores of each line of ``block`` ``[q, n]``, best first, ties by row."""
    n = block.shape[1]
    if top_k < n:
        # exact selection in O(q * n): everything above the k-th score, then the lowest rows equal to it
        kth = -np.partition(-block, top_k - 1, axis=1)[:, top_k - 1 : top_k]
        above = block > kth
        equal = block == kth
        need = top_k - above.sum(axis=1, keepdims=True)
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= need))
        cand = np.nonzero(chosen)[1].reshape(block.shape[0], top_k)
    else:
        cand = np.broadcast_to(np.arange(n), block.shape)
    # candidates are in row order, so a stable sort on -score breaks ties by row
    order = np.argsort(-np.take_along_axis(block, cand, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cand, order, axis=1).astype(np.int64)


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class RankingScore:
    """A ranking metric averaged over queries that have at least one relevant document.

    Attributes:
        value: the mean over evaluated queries (0.0 when none could be evaluated).
        n_evaluated: queries with at least one judged-relevant document.
        n_skipped: queries that were asked for but have no relevant document in the qrels.
    """

    value: float
    n_evaluated: int
    n_skipped: int

    def __float__(self) -> float:
        return self.value


def one_nn_accuracy(
    train_x: Vectors,
    train_y: Sequence[object] | np.ndarray,
    test_x: Vectors,
    test_y: Sequence[object] | np.ndarray,
    scorer: str = "cosine",
    chunk_size: int = 512,
) -> float:
    """Fraction of test rows whose nearest training row carries the same label.

    Args:
        train_x: ``[n, d]`` dense vectors or `SparseVectors` (the database side).
        train_y: ``[n]`` labels of ``train_x``.
        test_x: ``[m, d]`` dense vectors or `SparseVectors` (same kind as ``train_x``).
        test_y: ``[m]`` labels of ``test_x``.
        scorer: ``"cosine"`` or ``"dot"``; ties go to the lowest training row.
        chunk_size: test rows scored per block.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        DataError: label counts that do not match the rows, empty inputs.
    """
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    if len(train_y) != len(train_x) or len(test_y) != len(test_x):
        raise DataError(
            f"labels do not match rows: {len(train_y)} labels for {len(train_x)} training rows, "
            f"{len(test_y)} for {len(test_x)} test rows"
        )
    if len(test_y) == 0:
        raise DataError("no test rows given")
    _, rows = exact_search(test_x, train_x, 1, metric=scorer, chunk_size=chunk_size)
    return float((train_y[rows[:, 0]] == test_y).mean())


def _mean_over_queries(
    run: Run,
    qrels: Qrels,
    query_ids: Sequence[str] | None,
    per_query: Callable[[Sequence[str], dict[str, int]], float],
) -> RankingScore:
    """Mean of ``per_query(ranking, relevant grades)`` over the queries with a relevant document."""
    ids = list(qrels) if query_ids is None else list(query_ids)
    total, evaluated, skipped = 0.0, 0, 0
    for qid in ids:
        rel = {d: int(g) for d, g in qrels.get(qid, {}).items() if int(g) > 0}
        if not rel:
            skipped += 1
            continue
        total += per_query(run.get(qid, ()), rel)
        evaluated += 1
    return RankingScore(float(total / evaluated) if evaluated else 0.0, evaluated, skipped)


def recall_at_k(run: Run, qrels: Qrels, k: int = 10, query_ids: Sequence[str] | None = None) -> RankingScore:
    """Recall@k as BEIR computes it: ``|relevant ∩ top-k| / |relevant|``, averaged over queries.

    Args:
        run: ``{query_id: [doc_id, ...]}`` ranked best first (missing query = empty ranking).
        qrels: ``{query_id: {doc_id: grade}}``; grade > 0 is relevant.
        k: cut-off.
        query_ids: queries to evaluate; default: every query in ``qrels``.

    Returns:
        `RankingScore`; queries without a relevant document are skipped and counted.
    """

    def recall(ranking: Sequence[str], rel: dict[str, int]) -> float:
        return sum(1 for d in list(ranking)[:k] if d in rel) / len(rel)

    return _mean_over_queries(run, qrels, query_ids, recall)


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10, query_ids: Sequence[str] | None = None) -> RankingScore:
    """Standard NDCG@k (trec_eval ``ndcg_cut`` / BEIR): linear gains, log2 discount.

    ``DCG = sum_{r=1..k} grade(doc_r) / log2(r + 1)``; the ideal DCG sorts ALL judged-relevant
    documents of the query by grade (not only the retrieved ones), so missing a relevant document
    costs score. Documents retrieved twice count once. Arguments and result as `recall_at_k`.
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))

    def ndcg(ranking: Sequence[str], rel: dict[str, int]) -> float:
        top = list(dict.fromkeys(ranking))[:k]  # a document retrieved twice counts once
        dcg = sum(rel.get(d, 0) * discount[r] for r, d in enumerate(top))
        ideal = sorted(rel.values(), reverse=True)[:k]
        return dcg / sum(g * discount[r] for r, g in enumerate(ideal))

    return _mean_over_queries(run, qrels, query_ids, ndcg)


def rankings(
    rows: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str]
) -> dict[str, list[str]]:
    """Turn ``rows [q, top_k]`` from `exact_search` into a ``{query_id: [doc_id, ...]}`` run."""
    return {qid: [doc_ids[r] for r in row] for qid, row in zip(query_ids, rows.tolist())}
