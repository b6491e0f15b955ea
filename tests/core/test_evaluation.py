"""csr_vdb.evaluation: the deprecated metric names still import, with a DeprecationWarning; moved names say where."""

from __future__ import annotations

import pytest

import bench.baselines
import bench.loaders
import csr_vdb.evaluation as evaluation
import csr_vdb.metrics as metrics


@pytest.mark.parametrize("name", ["ndcg_at_k", "recall_at_k", "exact_search", "rescored_search", "one_nn_accuracy"])
def test_metric_names_come_from_csr_vdb_metrics(name):
    with pytest.warns(DeprecationWarning, match=f"moved to csr_vdb.metrics.{name}"):
        assert getattr(evaluation, name) is getattr(metrics, name)


@pytest.mark.parametrize("name, home", [("load_beir_dir", "bench/loaders.py"), ("PCA", "bench/baselines.py")])
def test_loaders_and_baselines_name_their_new_home(name, home):
    # the core never imports the bench scripts: the moved names say where they went
    assert hasattr(bench.loaders, "load_beir_dir") and hasattr(bench.baselines, "PCA")
    with pytest.raises(AttributeError, match=home):
        getattr(evaluation, name)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        evaluation.nothing_here  # noqa: B018
