"""Tiny builders for tests: clustered data, a tiny encoder, data folders, the numpy stand-in encoder."""

from __future__ import annotations

import numpy as np

from bench.common import MilvusLiteServer, ProjectionEncoder, free_port, journaled_rows, paced

__all__ = ["TINY", "MilvusLiteServer", "ProjectionEncoder", "clustered", "free_port", "journaled_rows", "paced", "fast_train", "tiny_config", "tiny_encoder",
           "write_banking77_folder", "write_beir_folder", "write_bench_data"]


def clustered(n: int = 512, dim: int = 8, clusters: int = 8, noise: float = 0.15, seed: int = 0):
    """Unit-norm vectors around ``clusters`` random centres; returns (x [n, dim] float32, labels [n])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    x = centres[labels] + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


TINY = {"input_dim": 8, "hidden_dim": 32, "k": 2}
"""The dimensions of the tiny test encoders."""


def tiny_config(**changes):
    """A `CSRConfig` with the `TINY` dimensions unless ``changes`` say otherwise."""
    from csr_vdb.config import CSRConfig

    return CSRConfig(**{**TINY, **changes})


def tiny_encoder(seed: int = 0, **changes):
    """An untrained `CSREncoder` of `tiny_config` on the CPU, weights drawn after ``torch.manual_seed(seed)``."""
    import torch

    from csr_vdb.model import CSREncoder

    torch.manual_seed(seed)
    return CSREncoder(tiny_config(**changes), device="cpu")


def fast_train(**changes):
    """A short CPU `TrainConfig` (3 epochs of 128 rows, seed 0, a curve entry every step) unless ``changes`` say otherwise."""
    from csr_vdb.config import TrainConfig

    return TrainConfig(**{"epochs": 3, "batch_size": 128, "device": "cpu", "seed": 0, "log_every": 1, **changes})


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


def write_bench_data(root) -> None:
    """Under ``root``: a Banking77 folder (300 train + 100 test rows, 8 labels) and a small BEIR folder ``tinybeir``."""
    from pathlib import Path

    root = Path(root)
    x, y = clustered(400, 16, 8, noise=0.3, seed=3)
    write_banking77_folder(root / "banking77", x, y, 300)
    docs, _ = clustered(300, 16, 10, noise=0.3, seed=4)
    queries = docs[:40] + 0.05 * np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    write_beir_folder(root / "tinybeir", docs, queries)


# ------------------------------------------------------------------------ fault tests
def save_tiny_model(directory, input_dim: int, seed: int = 0):
    """An untrained `CSREncoder` (``input_dim``, h=64, k=4, TopK codes) saved where the CLI's
    ``--model`` can load it; returns the folder."""
    from pathlib import Path

    enc = tiny_encoder(seed, input_dim=input_dim, hidden_dim=64, k=4, doc_codes="topk",
                       query_projection="encoder", bias_latent=False)
    enc.save(directory)
    return Path(directory)


def cli_env(state_dir, **extra: str) -> dict[str, str]:
    """The environment of a `csr-vdb` subprocess: this one's, less every ``CSR_VDB_*`` setting, plus
    ``state_dir`` and ``extra``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CSR_VDB_") and not k.startswith("JOB_")}
    env.update(CSR_VDB_STATE_DIR=str(state_dir), CSR_VDB_DEVICE="cpu", OMP_NUM_THREADS="1", **extra)
    return env


def cli_process(args, env: dict[str, str], cwd, *, file_size_limit: int | None = None, **popen):
    """Start ``csr-vdb ARGS`` as a subprocess (stdout/stderr piped, text); ``file_size_limit`` caps
    every file it writes (RLIMIT_FSIZE), as a full disk would."""
    import subprocess
    import sys

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen(
        [sys.executable, "-m", "csr_vdb.cli.main", *map(str, args)], env=env, cwd=str(cwd), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit if file_size_limit else None, **popen,
    )  # fmt: skip
