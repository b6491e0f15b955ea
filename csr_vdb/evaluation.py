"""Quality metrics (1-NN accuracy, Recall@k, NDCG@k), dataset readers and PCA/truncation baselines."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csr_vdb.errors import ConfigError, DataError
from csr_vdb.sparse import SparseVectors

logger = logging.getLogger(__name__)

Vectors = np.ndarray | SparseVectors
"""Either dense ``[n, d]`` float vectors or sparse codes."""

Qrels = Mapping[str, Mapping[str, int]]
"""``{query_id: {doc_id: grade}}``; grade > 0 means relevant (BEIR/trec_eval convention)."""


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
    `csr_vdb.retriever.Retriever` uses (`csr_vdb.scoring.Reranker`, float64).

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
    from csr_vdb.scoring import Reranker

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


def _relevant(judged: Mapping[str, int]) -> dict[str, int]:
    return {d: int(g) for d, g in judged.items() if int(g) > 0}


def recall_at_k(
    run: Mapping[str, Sequence[str]],
    qrels: Qrels,
    k: int = 10,
    query_ids: Sequence[str] | None = None,
) -> RankingScore:
    """Recall@k as BEIR computes it: ``|relevant ∩ top-k| / |relevant|``, averaged over queries.

    Args:
        run: ``{query_id: [doc_id, ...]}`` ranked best first (missing query = empty ranking).
        qrels: ``{query_id: {doc_id: grade}}``; grade > 0 is relevant.
        k: cut-off.
        query_ids: queries to evaluate; default: every query in ``qrels``.

    Returns:
        `RankingScore`; queries without a relevant document are skipped and counted.
    """
    ids = list(qrels) if query_ids is None else list(query_ids)
    total, evaluated, skipped = 0.0, 0, 0
    for qid in ids:
        rel = _relevant(qrels.get(qid, {}))
        if not rel:
            skipped += 1
            continue
        hits = sum(1 for d in list(run.get(qid, ()))[:k] if d in rel)
        total += hits / len(rel)
        evaluated += 1
    return RankingScore(float(total / evaluated) if evaluated else 0.0, evaluated, skipped)


def ndcg_at_k(
    run: Mapping[str, Sequence[str]],
    qrels: Qrels,
    k: int = 10,
    query_ids: Sequence[str] | None = None,
) -> RankingScore:
    """Standard NDCG@k (trec_eval ``ndcg_cut`` / BEIR): linear gains, log2 discount.

    ``DCG = sum_{r=1..k} grade(doc_r) / log2(r + 1)``; the ideal DCG sorts ALL judged-relevant
    documents of the query by grade (not only the retrieved ones), so missing a relevant document
    costs score. Documents retrieved twice count once.

    Args:
        run: ``{query_id: [doc_id, ...]}`` ranked best first (missing query = empty ranking).
        qrels: ``{query_id: {doc_id: grade}}``; grade > 0 is relevant.
        k: cut-off.
        query_ids: queries to evaluate; default: every query in ``qrels``.

    Returns:
        `RankingScore`; queries without a relevant document are skipped and counted.
    """
    ids = list(qrels) if query_ids is None else list(query_ids)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total, evaluated, skipped = 0.0, 0, 0
    for qid in ids:
        rel = _relevant(qrels.get(qid, {}))
        if not rel:
            skipped += 1
            continue
        seen: set[str] = set()
        ranking: list[str] = []
        for d in run.get(qid, ()):
            if d not in seen:
                seen.add(d)
                ranking.append(d)
            if len(ranking) == k:
                break
        dcg = sum(rel.get(d, 0) * discount[r] for r, d in enumerate(ranking))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g * discount[r] for r, g in enumerate(ideal))
        total += dcg / idcg
        evaluated += 1
    return RankingScore(float(total / evaluated) if evaluated else 0.0, evaluated, skipped)


def rankings(
    rows: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str]
) -> dict[str, list[str]]:
    """Turn ``rows [q, top_k]`` from `exact_search` into a ``{query_id: [doc_id, ...]}`` run."""
    return {qid: [doc_ids[r] for r in row] for qid, row in zip(query_ids, rows.tolist())}


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Banking77Data:
    """Banking77 embeddings and labels (the training split is the database side).

    Attributes:
        train_x: ``[n_train, d]`` float32. train_y: ``[n_train]`` int label ids.
        test_x: ``[n_test, d]`` float32. test_y: ``[n_test]`` int label ids.
        labels: label names, indexed by label id.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    labels: list[str]


@dataclass(frozen=True)
class BeirData:
    """A BEIR retrieval set as embeddings (the corpus is the database side).

    Attributes:
        corpus_x: ``[n_docs, d]`` float32, row i = ``corpus_ids[i]``.
        corpus_ids: document ids.
        queries_x: ``[n_queries, d]`` float32 for the queries judged in ``qrels`` only.
        query_ids: their ids, row order of ``queries_x``.
        qrels: ``{query_id: {doc_id: grade}}`` of the chosen split.
    """

    corpus_x: np.ndarray
    corpus_ids: list[str]
    queries_x: np.ndarray
    query_ids: list[str]
    qrels: dict[str, dict[str, int]]


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 2:
        raise DataError(f"{path} must hold a 2-D array, got shape {arr.shape}")
    # a writable in-memory copy: torch warns on (and must not write into) read-only memmaps
    return np.array(arr, dtype=np.float32, order="C")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR ``qrels/*.tsv`` (header ``query-id corpus-id score``) into ``{qid: {doc: grade}}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing qrels file {path}")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for n, row in enumerate(reader):
            if not row or (n == 0 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise DataError(f"{path} line {n + 1}: expected 3 tab-separated fields, got {len(row)}")
            try:
                grade = int(float(row[2]))
            except ValueError as exc:
                raise DataError(f"{path} line {n + 1}: score {row[2]!r} is not a number") from exc
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def load_beir_dir(path: str | Path, split: str = "test") -> BeirData:
    """Read a folder with ``corpus_emb.npy, corpus_ids.txt, queries_emb.npy, query_ids.txt, qrels_<split>.tsv``.

    Only queries judged in the split's qrels are kept (e.g. SciFact's 300 test queries).

    Raises:
        DataError: a missing file, row counts that do not match the id lists, unknown judged query.
    """
    path = Path(path)
    corpus_x = _load_npy(path / "corpus_emb.npy")
    corpus_ids = _read_ids(path / "corpus_ids.txt")
    queries_x = _load_npy(path / "queries_emb.npy")
    query_ids = _read_ids(path / "query_ids.txt")
    if len(corpus_ids) != len(corpus_x) or len(query_ids) != len(queries_x):
        raise DataError(
            f"{path}: {len(corpus_x)} corpus vectors for {len(corpus_ids)} ids, "
            f"{len(queries_x)} query vectors for {len(query_ids)} ids"
        )
    if queries_x.shape[1] != corpus_x.shape[1]:
        raise DataError(f"{path}: queries have dimension {queries_x.shape[1]}, corpus {corpus_x.shape[1]}")
    qrels = read_qrels(path / f"qrels_{split}.tsv")
    position = {q: i for i, q in enumerate(query_ids)}
    unknown = [q for q in qrels if q not in position]
    if unknown:
        raise DataError(f"{path}: judged queries without an embedding: {unknown[:5]}", unknown)
    keep = [q for q in query_ids if q in qrels]
    return BeirData(
        corpus_x=corpus_x,
        corpus_ids=corpus_ids,
        queries_x=queries_x[[position[q] for q in keep]],
        query_ids=keep,
        qrels=qrels,
    )


def _read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "category" not in reader.fieldnames:
            raise DataError(f"{path}: expected a 'category' column, got {reader.fieldnames}")
        return [row["category"] for row in reader]


def load_banking77_dir(path: str | Path) -> Banking77Data:
    """Read ``train.csv, test.csv`` (labels, column ``category``) and ``train_emb.npy, test_emb.npy``.

    Label ids follow ``categories.json`` when present, else the sorted label names.

    Raises:
        DataError: a missing file or row counts that differ between a CSV and its embeddings.
    """
    path = Path(path)
    train_labels = _read_labels(path / "train.csv")
    test_labels = _read_labels(path / "test.csv")
    train_x = _load_npy(path / "train_emb.npy")
    test_x = _load_npy(path / "test_emb.npy")
    if len(train_labels) != len(train_x) or len(test_labels) != len(test_x):
        raise DataError(
            f"{path}: {len(train_x)} train vectors for {len(train_labels)} labels, "
            f"{len(test_x)} test vectors for {len(test_labels)} labels"
        )
    cats = path / "categories.json"
    names = json.loads(cats.read_text(encoding="utf-8")) if cats.is_file() else []
    for lab in sorted(set(train_labels) | set(test_labels)):
        if lab not in names:
            names.append(lab)
    ids = {n: i for i, n in enumerate(names)}
    return Banking77Data(
        train_x=train_x,
        train_y=np.array([ids[x] for x in train_labels], np.int64),
        test_x=test_x,
        test_y=np.array([ids[x] for x in test_labels], np.int64),
        labels=names,
    )


# --------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class PCA:
    """PCA fitted on the database side; `transform` projects and L2-normalises.

    Attributes:
        mean: ``[d]`` mean of the fitted rows.
        components: ``[m, d]`` top principal directions, largest variance first.
    """

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, m: int) -> PCA:
        """Fit the top ``m`` components of ``x`` (``[n, d]``) by SVD of the centred rows.

        Raises:
            ConfigError: ``m`` outside ``1..d``.
        """
        x = np.asarray(x, dtype=np.float64)
        if not 1 <= m <= x.shape[1]:
            raise ConfigError(f"PCA needs 1 <= m <= {x.shape[1]}, got {m}")
        mean = x.mean(axis=0)
        # the covariance eigenvectors are the right singular vectors; d x d is small (d <= a few k)
        cov = (x - mean).T @ (x - mean)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:m]
        return cls(mean.astype(np.float32), vecs[:, order].T.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]`` -> ``[n, m]`` centred projections, unit L2 norm (cosine = dot)."""
        return l2_normalize((np.asarray(x, np.float32) - self.mean) @ self.components.T)


def truncate(x: np.ndarray, m: int) -> np.ndarray:
    """First ``m`` dimensions of ``x`` (``[n, d]``), renormalised to unit L2 norm: ``[n, m]``."""
    x = np.asarray(x, dtype=np.float32)
    if not 1 <= m <= x.shape[1]:
        raise ConfigError(f"truncation needs 1 <= m <= {x.shape[1]}, got {m}")
    return l2_normalize(x[:, :m])


def bytes_matched_dims(k: int) -> int:
    """Dense float32 dims that cost as much as a k-sparse code (8 bytes per non-zero): ``2k``."""
    return 2 * k


# --------------------------------------------------------------------------- whole-set evaluation
def evaluate_banking77(
    data: Banking77Data,
    encode: Callable[[np.ndarray], Vectors] | None = None,
    scorer: str = "cosine",
) -> float:
    """1-NN accuracy of test rows against the training split after ``encode`` (identity if None)."""
    f = encode or (lambda a: a)
    return one_nn_accuracy(f(data.train_x), data.train_y, f(data.test_x), data.test_y, scorer=scorer)


def evaluate_beir(
    data: BeirData,
    encode_docs: Callable[[np.ndarray], Vectors] | None = None,
    encode_queries: Callable[[np.ndarray], Vectors] | None = None,
    k: int = 10,
    scorer: str = "dot",
    depth: int = 100,
    rescore_queries: Callable[[np.ndarray], Vectors] | None = None,
    candidates: int = 100,
) -> dict[str, float]:
    """NDCG@k and Recall@k / Recall@depth of the corpus searched with the judged queries.

    Args:
        data: a `BeirData`.
        encode_docs: maps corpus vectors ``[n, d]`` to what is searched (identity if None).
        encode_queries: maps query vectors (defaults to ``encode_docs``).
        k: NDCG and recall cut-off.
        scorer: ``"dot"`` or ``"cosine"``.
        depth: retrieval depth for the deeper recall figure.
        rescore_queries: two-stage search (`rescored_search`, dot products): the
            ``max(candidates, depth)`` best documents by ``encode_queries`` re-scored by these codes.
        candidates: first-stage hits per query with ``rescore_queries``.

    Returns:
        ``{"ndcg@k": x, "recall@k": x, "recall@depth": x, "n_queries": n, "n_skipped": n}``.
    """
    fd = encode_docs or (lambda a: a)
    fq = encode_queries or fd
    if rescore_queries is None:
        _, rows = exact_search(fq(data.queries_x), fd(data.corpus_x), max(k, depth), metric=scorer)
    else:
        _, rows = rescored_search(
            fq(data.queries_x), rescore_queries(data.queries_x), fd(data.corpus_x), max(k, depth),
            candidates=max(candidates, depth),
        )
    run = rankings(rows, data.query_ids, data.corpus_ids)
    ndcg = ndcg_at_k(run, data.qrels, k, data.query_ids)
    return {
        f"ndcg@{k}": ndcg.value,
        f"recall@{k}": recall_at_k(run, data.qrels, k, data.query_ids).value,
        f"recall@{depth}": recall_at_k(run, data.qrels, depth, data.query_ids).value,
        "n_queries": ndcg.n_evaluated,
        "n_skipped": ndcg.n_skipped,
    }


def dataset_kind(path: str | Path) -> str | None:
    """``"banking77"`` or ``"beir"`` for a folder in one of the two layouts, else None."""
    path = Path(path)
    if (path / "train_emb.npy").is_file() and (path / "train.csv").is_file():
        return "banking77"
    if (path / "corpus_emb.npy").is_file() and (path / "queries_emb.npy").is_file():
        return "beir"
    return None


def percent_of(value: float, reference: float) -> float:
    """``100 * value / reference`` (nan when the reference is 0)."""
    return 100.0 * value / reference if reference else math.nan
