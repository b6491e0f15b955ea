"""Helpers the bench scripts share: a numpy stand-in encoder, result output, a placeholder model folder."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.sparse import SparseVectors


class ProjectionEncoder:
    """Deterministic numpy stand-in for a CSR encoder: ``|x W|`` with a fixed random ``W [dim, hidden_dim]``, top-k.

    Fast and torch-free, so that a benchmark or test of the migration engine measures the engine
    and the store, not the encoder. ``calls`` counts the batches encoded.

    Args:
        dim: dimension of the dense vectors.
        hidden_dim: dimension of the codes.
        k: non-zeros per code (a call may ask for another ``k``).
        seed: seed of ``W``.
    """

    def __init__(self, dim: int, hidden_dim: int = 64, k: int = 4, seed: int = 7) -> None:
        self.w = np.random.default_rng(seed).normal(size=(dim, hidden_dim)).astype(np.float32)
        self.k = k
        self.hidden_dim = hidden_dim
        self.calls = 0

    @property
    def hidden(self) -> int:
        """Deprecated spelling of `hidden_dim`."""
        return self.hidden_dim

    def __call__(self, x: np.ndarray, k: int | None = None) -> SparseVectors:
        self.calls += 1
        z = np.abs(np.asarray(x, np.float32) @ self.w)
        k = k or self.k
        idx = np.argpartition(-z, k - 1, axis=1)[:, :k]
        return SparseVectors(idx, np.take_along_axis(z, idx, axis=1), self.hidden_dim)


def store_arguments(p: argparse.ArgumentParser, prefix: str) -> argparse.ArgumentParser:
    """The options of a bench script that runs on a store: --store, --uri, --rows, --batch-size,
    --prefix (of its collection names), --keep and --out."""
    p.add_argument("--store", required=True, choices=["milvus", "qdrant-edge", "memory"])
    p.add_argument("--uri", help="store location (default: a temporary file/folder, removed afterwards)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--prefix", default=prefix, help="collection name prefix")
    p.add_argument("--keep", action="store_true", help="keep the collections and temporary files")
    p.add_argument("--out", help="write the result as JSON here")
    return p


def bench_main(parser: argparse.ArgumentParser, argv: list[str] | None, run: Any, table: Any) -> int:
    """The body of a store bench's ``main``: parse, ``run(args)``, print ``table([result])`` and
    write the result as JSON with ``--out``."""
    args = parser.parse_args(argv)
    res = run(args)
    emit(res, table([res]), args.out)
    return 0


def placeholder_model(directory: str | Path, weights: bytes = b"bench") -> Path:
    """A folder with the two files a `MigrationPlan` checksums (the engine never loads the model itself)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{}")
    return path


def percent_of(value: float, reference: float) -> float:
    """``100 * value / reference`` (nan when the reference is 0)."""
    return 100.0 * value / reference if reference else math.nan


def write_json(path: str | Path, result: Any) -> None:
    """Write ``result`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def emit(result: Any, text: str, out: str | Path | None) -> None:
    """Print a script's table and, with ``--out``, write its result as JSON."""
    print(text)
    if out:
        write_json(out, result)
