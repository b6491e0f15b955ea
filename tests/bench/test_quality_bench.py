"""bench/quality.py runs end to end on a tiny synthetic data folder and writes the agreed JSON schema."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import clustered


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make_data(root):
    x, y = clustered(400, 16, 8, noise=0.3, seed=3)
    b = root / "banking77"
    b.mkdir(parents=True)
    for split, rows in (("train", slice(0, 300)), ("test", slice(300, 400))):
        np.save(b / f"{split}_emb.npy", x[rows])
        lines = ["text,category"] + [f'"text, {i}",label_{lab}' for i, lab in enumerate(y[rows])]
        (b / f"{split}.csv").write_text("\n".join(lines) + "\n")
    docs, dlab = clustered(300, 16, 10, noise=0.3, seed=4)
    s = root / "tinybeir"
    s.mkdir()
    queries = docs[:40] + 0.05 * np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    np.save(s / "corpus_emb.npy", docs)
    np.save(s / "queries_emb.npy", queries.astype(np.float32))
    (s / "corpus_ids.txt").write_text("".join(f"doc{i}\n" for i in range(300)))
    (s / "query_ids.txt").write_text("".join(f"q{i}\n" for i in range(40)))
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tdoc{i}\t1" for i in range(40)]
    (s / "qrels_test.tsv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_quality_bench_writes_the_schema(tmp_path, capsys):
    _make_data(tmp_path / "data")
    out = tmp_path / "res" / "q.json"
    bench = _load_bench()
    rc = bench.main(["--data-dir", str(tmp_path / "data"), "--out", str(out), "--ks", "2,4", "--hidden", "64", "--quick"])
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
