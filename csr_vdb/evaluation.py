"""Deprecated module: metrics moved to `csr_vdb.metrics`, data-set readers and baselines to ``bench/``.

``from csr_vdb.evaluation import X`` keeps working, with a `DeprecationWarning`. The readers of the
benchmark data sets (``bench/loaders.py``) and the PCA/truncation baselines (``bench/baselines.py``)
serve the bench scripts and their tests only, so they live beside them; they import from here only
in a source checkout, where ``bench/`` exists.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

_METRICS = (
    "Vectors", "Qrels", "l2_normalize", "exact_search", "rescored_search", "RankingScore",
    "one_nn_accuracy", "recall_at_k", "ndcg_at_k", "rankings",
)
_BENCH = {
    **{name: "bench.loaders" for name in (
        "Banking77Data", "BeirData", "read_qrels", "load_beir_dir", "load_banking77_dir", "dataset_kind",
        "evaluate_banking77", "evaluate_beir",
    )},
    **{name: "bench.baselines" for name in ("PCA", "truncate", "bytes_matched_dims")},
    "percent_of": "bench.common",
}

__all__ = [*_METRICS, *_BENCH]


def _bench_module(name: str) -> ModuleType:
    """A ``bench.*`` module, from the source checkout that holds this package when it is not importable."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[1]
        if not (root / "bench" / "__init__.py").is_file():
            raise
        sys.path.append(str(root))
        return importlib.import_module(name)


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        module = importlib.import_module("csr_vdb.metrics")
    elif name in _BENCH:
        try:
            module = _bench_module(_BENCH[name])
        except ModuleNotFoundError as exc:
            raise AttributeError(
                f"csr_vdb.evaluation.{name} moved to {_BENCH[name].replace('.', '/')}.py in the source checkout"
            ) from exc
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"csr_vdb.evaluation.{name} moved to {module.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(module, name)
