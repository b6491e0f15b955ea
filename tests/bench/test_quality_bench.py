"""bench/quality.py runs end to end on a tiny synthetic data folder and writes the agreed JSON schema."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.helpers import clustered, write_banking77_folder, write_beir_folder


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_data(root):
    """A Banking77 folder and a small BEIR folder ("tinybeir") of clustered vectors under ``root``."""
    x, y = clustered(400, 16, 8, noise=0.3, seed=3)
    write_banking77_folder(root / "banking77", x, y, 300)
    docs, _ = clustered(300, 16, 10, noise=0.3, seed=4)
    queries = docs[:40] + 0.05 * np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    write_beir_folder(root / "tinybeir", docs, queries)


@pytest.mark.slow
def test_quality_bench_writes_the_schema(tmp_path, capsys):
    make_data(tmp_path / "data")
    out = tmp_path / "res" / "q.json"
    bench = _load_bench()
    rc = bench.main(["--data-dir", str(tmp_path / "data"), "--out", str(out), "--ks", "2,4", "--hidden-dim", "64", "--quick"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) == {"banking77", "tinybeir"}
    assert res["banking77"]["metric"] == "1nn_accuracy" and res["tinybeir"]["metric"] == "ndcg@10"
    for name, r in res.items():
        assert set(r) == {"metric", "dense", "csr", "csr_search", "csr_topk", "pca", "trunc", "pca_bytes", "trunc_bytes", "train_s", "dead_frac"}
        for key in ("csr", "csr_search", "csr_topk", "pca", "trunc", "pca_bytes", "trunc_bytes"):
            assert set(r[key]) == {"2", "4"}, (name, key)
            assert all(0.0 <= v <= 1.0 for v in r[key].values())
        assert 0.0 < r["dense"] <= 1.0 and r["train_s"] > 0 and 0.0 <= r["dead_frac"] <= 1.0
    # dense separates the clusters; codes must carry real signal, far above chance (1/8 labels)
    assert res["banking77"]["dense"] > 0.9
    assert res["banking77"]["csr"]["4"] > 0.5
    printed = capsys.readouterr().out
    assert "CSR k" in printed and "tinybeir" in printed


def test_quality_bench_rejects_an_empty_folder(tmp_path):
    bench = _load_bench()
    assert bench.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2


def test_train_recipe_follows_the_seed():
    bench = _load_bench()
    x, _ = clustered(300, 16, 8, noise=0.3, seed=3)
    a, b, c = (bench.train_recipe(x, 4, seed=s, hidden_dim=32, steps=3) for s in (0, 0, 1))
    assert a.config.hidden_dim == 32 and a.config.k == 4
    assert torch.allclose(a.W_enc, b.W_enc, atol=1e-6)  # same seed: the same model
    assert not torch.allclose(a.W_enc, c.W_enc, atol=1e-3)  # another seed: another model
