"""csr_vdb.evaluation: the deprecated names still import, from their new homes, with a DeprecationWarning."""

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


def test_loaders_and_baselines_come_from_bench():
    with pytest.warns(DeprecationWarning, match="bench.loaders.load_beir_dir"):
        from csr_vdb.evaluation import load_beir_dir
    assert load_beir_dir is bench.loaders.load_beir_dir
    with pytest.warns(DeprecationWarning, match="bench.baselines.PCA"):
        assert evaluation.PCA is bench.baselines.PCA


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        evaluation.nothing_here  # noqa: B018
