"""Deprecated module: the metrics moved to `csr_vdb.metrics`.

``from csr_vdb.evaluation import X`` keeps working for the metrics, with a `DeprecationWarning`.
The readers of the benchmark data sets and the PCA/truncation baselines serve the bench scripts
only and live beside them (``bench/loaders.py``, ``bench/baselines.py``); the installed package
does not carry them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_METRICS = (
    "Vectors", "Qrels", "l2_normalize", "exact_search", "rescored_search", "RankingScore",
    "one_nn_accuracy", "recall_at_k", "ndcg_at_k", "rankings",
)
_MOVED_TO_BENCH = {
    **{name: "bench/loaders.py" for name in (
        "Banking77Data", "BeirData", "read_qrels", "load_beir_dir", "load_banking77_dir", "dataset_kind",
        "evaluate_banking77", "evaluate_beir",
    )},
    **{name: "bench/baselines.py" for name in ("PCA", "truncate", "bytes_matched_dims")},
    "percent_of": "bench/common.py",
}

__all__ = list(_METRICS)


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        warnings.warn(f"csr_vdb.evaluation.{name} moved to csr_vdb.metrics.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("csr_vdb.metrics"), name)
    if name in _MOVED_TO_BENCH:
        raise AttributeError(
            f"csr_vdb.evaluation.{name} moved to {_MOVED_TO_BENCH[name]} of the source checkout (benchmarks only)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
