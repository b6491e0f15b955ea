"""collection_eval: sampled-row recall of sparse vs dense on a store, and exact quality vs k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.collection_eval import evaluate_collection, quality_vs_k, sample_rows
from csr_vdb.config import CSRConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.model import CSREncoder
from tests.helpers import clustered

N, D = 200, 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=32, k=3), device="cpu")
    x, _ = clustered(N, D, 5, seed=2)
    ids = list(range(100, 100 + N))
    store = MemoryStore()
    store.create_dense_collection("src", D, metric="cosine")
    store.insert_dense("src", ids, x, [{"i": i} for i in ids])
    store.create_sparse_collection("dst", like="src")
    store.upsert("dst", ids, enc.encode(x), [{"i": i} for i in ids], dense=x)
    return store, enc, x, ids


def test_sample_rows_is_uniform_without_replacement_and_seeded(setup):
    store, _, x, ids = setup
    a_ids, a_x = sample_rows(store, "src", 50, seed=1, batch_size=30)
    b_ids, _ = sample_rows(store, "src", 50, seed=1, batch_size=30)
    c_ids, _ = sample_rows(store, "src", 50, seed=2, batch_size=30)
    assert a_ids == b_ids and a_ids != c_ids and len(set(a_ids)) == 50
    np.testing.assert_array_equal(a_x, x[[ids.index(i) for i in a_ids]])
    all_ids, _ = sample_rows(store, "src", 10_000)
    assert sorted(all_ids) == ids
    assert max(a_ids) > ids[100], "a reservoir sample reaches past the first pages"
    store.create_dense_collection("empty", D)
    with pytest.raises(DataError, match="empty"):
        sample_rows(store, "empty", 5)


def test_evaluate_collection(setup):
    store, enc, _, _ = setup
    rep = evaluate_collection(store, "src", "dst", enc, sample=40, top_k=5, candidates=N, single_queries=3)
    assert rep.queries == 40 and rep.top_k == 5
    # re-ranking every row exactly reproduces the (exact) dense search of the memory store
    assert rep.recall_rerank == pytest.approx(1.0)
    assert 0.0 <= rep.recall_sparse <= 1.0
    assert rep.dense_bytes_per_vector == D * 4
    assert rep.sparse_bytes_per_vector == pytest.approx(rep.mean_nnz * 8) and rep.mean_nnz <= 3
    assert set(rep.latency_ms) == set(rep.batch_ms_per_query) == {"dense", "sparse", "rerank", "rescore"}
    # TopK queries: re-scoring from the codes is the exact code dot product, what the memory store ranks by
    assert rep.recall_rescore == pytest.approx(rep.recall_sparse)
    few = evaluate_collection(store, "src", "dst", enc, sample=40, top_k=5, candidates=5, single_queries=1)
    assert few.recall_sparse <= few.recall_rerank + 1e-9
    with pytest.raises(ConfigError):
        evaluate_collection(store, "src", "dst", enc, top_k=10, candidates=5)


def _bias_encoder(x: np.ndarray, k: int, seed: int) -> CSREncoder:
    """The recipe's code shapes (pursuit + bias latent, decoder queries), untrained, b_pre = the mean."""
    torch.manual_seed(seed)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=32, k=k, normalize_codes=True, query_projection="decoder",
                               doc_codes="pursuit", bias_latent=True), device="cpu")
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(axis=0)))
    return enc


def test_evaluate_collection_rescores_with_the_signed_query(setup):
    """A decoder-query encoder with the bias latent: the re-score is the exact cosine of each query
    with the candidates' reconstructions, which the code-only rankings cannot beat the dense one by."""
    store, _, x, ids = setup
    enc = _bias_encoder(x, k=3, seed=1)
    if not store.has_collection("dst_bias"):
        store.create_sparse_collection("dst_bias", like="src", keep_dense=False)
        store.upsert("dst_bias", ids, enc.encode(x), None)
    rep = evaluate_collection(store, "src", "dst_bias", enc, sample=40, top_k=5, candidates=N, single_queries=1)
    # no dense vectors kept: the default re-rank is the re-score from codes
    assert rep.recall_rerank == pytest.approx(rep.recall_rescore)
    assert rep.latency_ms["rescore"] == rep.latency_ms["rerank"]
    # reference: exact top-5 of <x, reconstruction> over all rows (query row excluded), as the re-scorer ranks
    q_ids, q = sample_rows(store, "src", 40, seed=0)
    xn = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = xn @ enc.decode(enc.encode(x)).T
    dense = xn @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    rows = {i: j for j, i in enumerate(ids)}
    hit = []
    for qi, qid in enumerate(q_ids):
        s[qi, rows[qid]] = dense[qi, rows[qid]] = -np.inf
        want = set(np.argsort(-dense[qi], kind="stable")[:5])
        got = set(np.argsort(-s[qi], kind="stable")[:5])
        hit.append(len(want & got) / 5)
    assert rep.recall_rescore == pytest.approx(float(np.mean(hit)), abs=1e-9)


def test_quality_vs_k(setup):
    _, enc, x, _ = setup
    rows = quality_vs_k(x, enc, [1, 3, 8], queries=50, top_k=5, candidates=N)
    assert [r["k"] for r in rows] == [1, 3, 8]
    for r in rows:
        assert r["bytes_per_vector"] <= 8 * r["k"]
        assert 0.0 <= r["recall"] <= r["recall_rerank"] + 1e-9
        assert r["recall_rerank"] == pytest.approx(1.0)  # all rows re-ranked exactly
        assert r["recall_rescore"] == pytest.approx(r["recall"])  # TopK queries: the re-score is the code dot
    assert rows[-1]["pca_recall"] == pytest.approx(1.0)  # 2k = 16 >= d dims: PCA keeps everything
    some = quality_vs_k(x, enc, [3], queries=50, top_k=5, candidates=10)[0]
    assert some["recall"] <= some["recall_rerank"] + 1e-9 < 1.0 + 1e-9
    with pytest.raises(DataError):
        quality_vs_k(x[:5], enc, [3], top_k=5)


def test_quality_vs_k_rescores_with_the_signed_query(setup):
    _, _, x, _ = setup
    enc = _bias_encoder(x, k=4, seed=2)
    row = quality_vs_k(x, enc, [3], queries=50, top_k=5, candidates=N)[0]
    # every other row is a candidate: the re-score is the exact top-5 by <x, reconstruction at k=3>
    qi = np.sort(np.random.default_rng(0).choice(N, size=50, replace=False))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn[qi] @ enc.decode(enc.encode(x, k=3)).T
    dense = xn[qi] @ xn.T
    s[np.arange(50), qi] = dense[np.arange(50), qi] = -np.inf
    want = [set(np.argsort(-d, kind="stable")[:5]) & set(np.argsort(-r, kind="stable")[:5]) for d, r in zip(dense, s)]
    assert row["recall_rescore"] == pytest.approx(float(np.mean([len(w) / 5 for w in want])), abs=1e-9)
