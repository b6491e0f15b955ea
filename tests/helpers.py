"""Tiny builders for tests: clustered data, small configs."""

from __future__ import annotations

import numpy as np


def clustered(n: int = 512, dim: int = 8, clusters: int = 8, noise: float = 0.15, seed: int = 0):
    """Unit-norm vectors around ``clusters`` random centres; returns (x [n, dim] float32, labels [n])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    x = centres[labels] + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def write_beir_folder(
    path, docs, queries, qrels: dict[str, dict[str, int]] | None = None, doc_prefix: str = "doc"
) -> None:
    """A BEIR folder (embeddings, ids, ``qrels_test.tsv``) with documents ``<doc_prefix><i>`` and queries ``q<i>``.

    Without ``qrels``, query i's only relevant document is document i.
    """
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "corpus_emb.npy", np.asarray(docs, np.float32))
    np.save(path / "queries_emb.npy", np.asarray(queries, np.float32))
    (path / "corpus_ids.txt").write_text("".join(f"{doc_prefix}{i}\n" for i in range(len(docs))))
    (path / "query_ids.txt").write_text("".join(f"q{i}\n" for i in range(len(queries))))
    if qrels is None:
        qrels = {f"q{i}": {f"{doc_prefix}{i}": 1} for i in range(len(queries))}
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, judged in qrels.items() for d, g in judged.items()]
    (path / "qrels_test.tsv").write_text("\n".join(rows) + "\n")


def write_banking77_folder(path, x, labels, n_train: int) -> None:
    """A Banking77 folder: rows ``[:n_train]`` are the training split, the rest the test split (labels ``label_<y>``)."""
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", slice(0, n_train)), ("test", slice(n_train, len(x)))):
        np.save(path / f"{split}_emb.npy", np.asarray(x[rows], np.float32))
        lines = ["text,category"] + [f'"text, {i}",label_{lab}' for i, lab in enumerate(labels[rows])]
        (path / f"{split}.csv").write_text("\n".join(lines) + "\n")
