"""bench/quality.py runs end to end on a tiny synthetic data folder and writes the agreed JSON schema."""

from __future__ import annotations

import json

import pytest
import torch

from bench import quality
from tests.helpers import clustered, write_bench_data


@pytest.mark.slow
def test_quality_bench_writes_the_schema(tmp_path, capsys):
    write_bench_data(tmp_path / "data")
    out = tmp_path / "res" / "q.json"
    rc = quality.main(["--data-dir", str(tmp_path / "data"), "--out", str(out), "--ks", "2,4", "--hidden-dim", "64", "--quick"])
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
    assert quality.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2


def test_train_recipe_follows_the_seed():
    x, _ = clustered(300, 16, 8, noise=0.3, seed=3)
    small = quality.Overrides(hidden_dim=32, steps=3)
    a, b, c = (quality.train_recipe(x, 4, small, seed=s) for s in (0, 0, 1))
    assert a.config.hidden_dim == 32 and a.config.k == 4
    assert torch.allclose(a.W_enc, b.W_enc, atol=1e-6)  # same seed: the same model
    assert not torch.allclose(a.W_enc, c.W_enc, atol=1e-3)  # another seed: another model


def test_recipe_overrides_from_the_command_line():
    parser = quality.argparse.ArgumentParser()
    quality.add_recipe_arguments(parser)
    args = parser.parse_args(["--hidden", "32", "--steps", "3", "--model", "doc_codes=topk", "--train", "lr=1e-3",
                              "--train", "positives=noise"])
    over = quality.overrides_from(args)
    assert over == quality.Overrides(hidden_dim=32, steps=3, model={"doc_codes": "topk"},
                                     train={"lr": 0.001, "positives": "noise"})
    x, _ = clustered(300, 16, 8, noise=0.3, seed=3)
    enc = quality.train_recipe(x, 4, over)
    assert (enc.config.hidden_dim, enc.config.doc_codes) == (32, "topk")
    report = enc.training_report
    assert report["steps"] == 3 and report["train_config"]["lr"] == 0.001
    assert report["train_config"]["positives"] == "noise"
    with pytest.raises(SystemExit):
        parser.parse_args(["--train", "lr"])  # not KEY=VALUE
    with pytest.raises(ValueError, match="no_such_field"):
        quality.train_recipe(x, 4, quality.Overrides(steps=1, train={"no_such_field": 1}))
