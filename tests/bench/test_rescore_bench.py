"""bench/rescore.py: every search mode runs on a real embedded store and the JSON has its schema."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from csr_vdb.model import CSREncoder
from tests.conftest import REPO


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_rescore", REPO / "bench" / "rescore.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("store", ["memory", "qdrant-edge"])
def test_rescore_bench_on_synthetic_data(tmp_path, capsys, store):
    bench = _load_bench()
    torch.manual_seed(0)
    enc = CSREncoder(CSRConfig(input_dim=384, hidden_dim=256, k=8, normalize_codes=True, query_projection="decoder",
                               doc_codes="pursuit", bias_latent=True), device="cpu")
    x, _ = bench.load_data(bench.argparse.Namespace(beir=None, synthetic_rows=300))
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(axis=0)))
    enc.save(tmp_path / "m")
    out = tmp_path / "r.json"
    argv = ["--store", store, "--synthetic-rows", "300", "--model", str(tmp_path / "m"), "--copies", "2",
            "--queries", "6", "--threads", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["rows"] == 600 and res["queries"] == 6 and res["bias_latent"] is True
    modes = {"encode", "raw_search", "raw_search_full", "search", "rescore", "rerank_dense", "raw_search_bias"}
    assert set(res["median_ms"]) == set(res["p95_ms"]) == modes
    assert all(v > 0 for v in res["median_ms"].values())
    assert all(res["p95_ms"][m] >= res["median_ms"][m] for m in modes)
    assert set(res["ratio_vs_search"]) == {"rescore", "rerank_dense", "raw_search_bias"}
    assert res["queries_with_bias_entry"] > 0  # the mean as b_pre correlates with every query
    assert "rescore" in capsys.readouterr().out


def test_with_entry_adds_only_positive_values():
    bench = _load_bench()
    from csr_vdb.sparse import SparseVectors

    codes = SparseVectors(np.array([[1, 2], [3, 0]]), np.array([[0.5, 0.25], [1.0, 0.0]], np.float32), 10)
    out = bench.with_entry(codes, 9, np.array([0.3, -0.1]))
    dense = out.to_dense()
    assert dense[0, 9] == pytest.approx(0.3) and dense[1, 9] == 0 and dense[0, 1] == 0.5 and dense[1, 3] == 1.0
    assert not out.invalid_rows()


def test_rescore_bench_rejects_bad_counts():
    assert _load_bench().main(["--copies", "0"]) == 2
