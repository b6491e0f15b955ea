"""bench/scoring.py: synthetic CSR-like codes, speed mode JSON schema, SciFact-style re-rank mode."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import clustered


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_scoring", REPO / "bench" / "scoring.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_codes_are_skewed_positive_and_distinct():
    bench = _load_bench()
    rng = np.random.default_rng(0)
    perm = rng.permutation(512)
    codes = bench.synthetic_codes(4000, 512, 16, 1.0, rng, perm)
    live = codes.values != 0
    assert (codes.values >= 0).all() and live.sum(axis=1).min() >= 14
    assert not codes.invalid_rows()  # distinct indices, in range, no empty row
    usage = np.sort(np.bincount(codes.indices[live], minlength=512))[::-1]
    uniform = bench.synthetic_codes(4000, 512, 16, 0.0, rng, perm)
    flat = np.sort(np.bincount(uniform.indices[uniform.values != 0], minlength=512))[::-1]
    # Zipf-like: the 10% most used latents carry far more of the mass than under a uniform law.
    assert usage[:51].sum() / usage.sum() > 2 * flat[:51].sum() / flat.sum()


def test_speed_mode_writes_the_agreed_keys(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "speed.json"
    argv = ["--n", "3000", "--q", "20", "--h", "256", "--k", "8", "--d", "16", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    for key in ("device", "n", "q", "h", "k", "d", "dense_ms", "torch_sparse_ms", "sparse_index_ms"):
        assert key in res
    assert res["n"] == 3000 and res["device"] == "cpu"
    assert res["max_score_diff_vs_torch_sparse"] < 1e-4
    assert "SparseIndex" in capsys.readouterr().out


def test_scifact_mode_on_a_tiny_beir_folder(tmp_path):
    bench = _load_bench()
    docs, _ = clustered(300, 16, 10, noise=0.3, seed=4)
    queries = docs[:30] + 0.05 * np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    np.save(tmp_path / "corpus_emb.npy", docs)
    np.save(tmp_path / "queries_emb.npy", queries.astype(np.float32))
    (tmp_path / "corpus_ids.txt").write_text("".join(f"doc{i}\n" for i in range(300)))
    (tmp_path / "query_ids.txt").write_text("".join(f"q{i}\n" for i in range(30)))
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tdoc{i}\t1" for i in range(30)]
    (tmp_path / "qrels_test.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "rerank.json"
    argv = ["--scifact", str(tmp_path), "--k", "4", "--scifact-h", "64", "--candidates", "20,300",
            "--train-config", '{"epochs": 2, "max_steps": 10}', "--threads", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["ndcg10_dense"] > 0.9
    # Re-ranking every document exactly by the dense vectors IS the dense ranking.
    assert res["ndcg10_sparse_top300_rerank"] == pytest.approx(res["ndcg10_dense"], abs=1e-9)
    assert res["ndcg10_sparse_top300_rerank_decoder"] == pytest.approx(res["ndcg10_dense"], abs=1e-9)
    assert 0 <= res["ndcg10_sparse"] <= 1 and "rerank_top20_vs_dense" in res
    assert 0 <= res["ndcg10_sparse_decoder"] <= 1 and "rerank_top20_vs_dense_decoder" in res
    assert res["query_k_encoder"] == 4 and res["query_k_decoder"] == 64
    # re-scoring every document from its code with the signed query is the exact signed ranking
    from csr_vdb.metrics import exact_search, ndcg_at_k, rankings
    from csr_vdb.model import CSREncoder
    from csr_vdb.recipes import default_configs
    from csr_vdb.training import train_encoder

    m, t = default_configs(16, 300, k=4, hidden_dim=64)
    enc = train_encoder(docs, m, t.model_copy(update={"epochs": 2, "max_steps": 10, "threads": 1})).encoder
    _, rows = exact_search(enc.encode_queries(queries, signed=True), enc.encode(docs), 10)
    qrels = {f"q{i}": {f"doc{i}": 1} for i in range(30)}
    ids = [f"doc{i}" for i in range(300)]
    want = ndcg_at_k(rankings(rows, [f"q{i}" for i in range(30)], ids), qrels, 10).value
    assert res["ndcg10_sparse_top300_rescore_decoder"] == pytest.approx(want, abs=1e-9)
    assert 0 <= res["ndcg10_sparse_top20_rescore_decoder"] <= 1 and "rescore_top20_vs_dense_decoder" in res
