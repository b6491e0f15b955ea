"""Readers for the benchmark data sets (Banking77, BEIR folders) and whole-set evaluation drivers.

The layouts are those of the shared benchmark data (``../shared/data``, see its README):
``banking77/`` holds ``train.csv, test.csv`` (column ``category``) and ``train_emb.npy,
test_emb.npy``; a BEIR folder holds ``corpus_emb.npy, corpus_ids.txt, queries_emb.npy,
query_ids.txt, qrels_<split>.tsv``. Used by the bench scripts and their tests only.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csr_vdb.errors import DataError
from csr_vdb.metrics import Vectors, exact_search, ndcg_at_k, one_nn_accuracy, rankings, recall_at_k, rescored_search

Encode = Callable[[np.ndarray], Vectors]
"""Maps dense vectors ``[n, d]`` to what is searched (dense vectors or `SparseVectors`)."""

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


def _load_rows(path: Path, names: list[str], what: str) -> np.ndarray:
    """`_load_npy`, checked to hold one row per entry of ``names`` (ids or labels)."""
    x = _load_npy(path)
    if len(x) != len(names):
        raise DataError(f"{path}: {len(x)} vectors for {len(names)} {what}")
    return x


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
    corpus_ids = _read_ids(path / "corpus_ids.txt")
    corpus_x = _load_rows(path / "corpus_emb.npy", corpus_ids, "ids")
    query_ids = _read_ids(path / "query_ids.txt")
    queries_x = _load_rows(path / "queries_emb.npy", query_ids, "ids")
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
    train_x = _load_rows(path / "train_emb.npy", train_labels, "labels")
    test_labels = _read_labels(path / "test.csv")
    test_x = _load_rows(path / "test_emb.npy", test_labels, "labels")
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


def dataset_kind(path: str | Path) -> str | None:
    """``"banking77"`` or ``"beir"`` for a folder in one of the two layouts, else None."""
    path = Path(path)
    if (path / "train_emb.npy").is_file() and (path / "train.csv").is_file():
        return "banking77"
    if (path / "corpus_emb.npy").is_file() and (path / "queries_emb.npy").is_file():
        return "beir"
    return None


def find_datasets(root: str | Path) -> dict[str, tuple[str, Path]]:
    """``{name: (kind, folder)}`` for ``root`` itself or its immediate sub-folders in either layout."""
    root = Path(root)
    found: dict[str, tuple[str, Path]] = {}
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        kind = dataset_kind(folder)
        if kind is not None:
            found[folder.name] = (kind, folder)
    return found


def load_dataset(kind: str, folder: str | Path) -> Banking77Data | BeirData:
    """`load_banking77_dir` or `load_beir_dir` by ``kind`` (``"banking77"`` or ``"beir"``)."""
    return load_banking77_dir(folder) if kind == "banking77" else load_beir_dir(folder)


def evaluate_banking77(
    data: Banking77Data,
    encode: Encode | None = None,
    scorer: str = "cosine",
    encode_queries: Encode | None = None,
    rescore_queries: Encode | None = None,
    candidates: int = 100,
) -> float:
    """1-NN accuracy of the test rows (queries) against the training split (documents).

    Args:
        data: a `Banking77Data`.
        encode: maps both sides to what is searched (identity if None); documents only when
            ``encode_queries`` is given.
        scorer: ``"cosine"`` or ``"dot"`` (the two-stage search scores by dot products).
        encode_queries: maps the test rows (defaults to ``encode``).
        rescore_queries: two-stage search (`csr_vdb.metrics.rescored_search`): the ``candidates``
            best training rows by ``encode_queries``, re-scored by these codes.
        candidates: first-stage hits per query with ``rescore_queries``.
    """
    fd = encode or (lambda a: a)
    fq = encode_queries or fd
    if rescore_queries is None:
        return one_nn_accuracy(fd(data.train_x), data.train_y, fq(data.test_x), data.test_y, scorer=scorer)
    _, rows = rescored_search(
        fq(data.test_x), rescore_queries(data.test_x), fd(data.train_x), 1, candidates=candidates
    )
    return float((np.asarray(data.train_y)[rows[:, 0]] == np.asarray(data.test_y)).mean())


def evaluate_beir(
    data: BeirData,
    encode_docs: Encode | None = None,
    encode_queries: Encode | None = None,
    k: int = 10,
    scorer: str = "dot",
    depth: int = 100,
    rescore_queries: Encode | None = None,
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
        rescore_queries: two-stage search (`csr_vdb.metrics.rescored_search`, dot products): the
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
