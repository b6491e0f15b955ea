"""Reranker against a float64 reference (ties keep input order), by ids and lookups or by candidate
arrays as a search returns them, CPU and GPU."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.errors import ConfigError, DataError
from csr_vdb.rerank import Reranker
from csr_vdb.sparse import SparseVectors
from tests.core.test_index import DEVICES, random_codes


# ------------------------------------------------------------------------------------- Reranker
def reference_rerank(scores: list[list[float]], ids: list[list[object]], top_k: int | None):
    out = []
    for s, i in zip(scores, ids):
        order = sorted(range(len(i)), key=lambda j: (-s[j], j))[:top_k]
        out.append(([i[j] for j in order], [s[j] for j in order]))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("id_kind", ["int", "str"])
@pytest.mark.parametrize("lookup", ["mapping", "callable"])
def test_rerank_dense_matches_float64_reference(device, id_kind, lookup):
    rng = np.random.default_rng(20)
    base = rng.normal(size=(200, 24)).astype(np.float32)
    base[7] = base[3]  # exact duplicates tie: input order decides
    ids = list(range(200)) if id_kind == "int" else [f"doc-{i}" for i in range(200)]
    queries = rng.normal(size=(6, 24)).astype(np.float32)
    cands = [[ids[j] for j in rng.choice(200, 30, replace=False)] for _ in range(6)]
    cands[0] = [ids[7], ids[3]] + cands[0]
    vectors = {i: base[n] for n, i in enumerate(ids)}
    src = vectors if lookup == "mapping" else (lambda want: np.stack([vectors[i] for i in want]))
    got = Reranker(device=device).rerank_dense(queries, cands, src, top_k=12)
    q64 = queries.astype(np.float64)
    ref_scores = [[float(q64[n] @ vectors[i].astype(np.float64)) for i in c] for n, c in enumerate(cands)]
    ref = reference_rerank(ref_scores, cands, 12)
    for (g_ids, g_scores), (r_ids, r_scores) in zip(got, ref):
        assert g_ids == r_ids
        np.testing.assert_allclose(g_scores, r_scores, rtol=1e-12, atol=1e-12)
    first = got[0][0]
    if ids[7] in first and ids[3] in first:
        assert first.index(ids[7]) < first.index(ids[3])


def test_rerank_dense_ties_keep_input_order_and_duplicates_count_once():
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([2.0, 0.0])}
    got = Reranker().rerank_dense(np.array([[1.0, 0.0]]), [["b", "a", "b", "c"]], vectors)
    assert got[0][0] == ["c", "b", "a"]
    assert got[0][1].tolist() == [2.0, 1.0, 1.0]
    got = Reranker().rerank_dense(np.array([[1.0, 0.0]]), [["a", "b"]], vectors)
    assert got[0][0] == ["a", "b"]


def test_rerank_empty_candidates():
    vectors = {1: np.ones(3, np.float32)}
    got = Reranker().rerank_dense(np.ones((2, 3), np.float32), [[], [1]], vectors)
    assert got[0][0] == [] and got[1][0] == [1] and got[1][1].tolist() == [3.0]
    got = Reranker().rerank_dense(np.ones((1, 3), np.float32), [[]], vectors)
    assert got[0][0] == [] and len(got[0][1]) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["sparse_vectors", "milvus", "qdrant", "callable"])
def test_rerank_sparse_matches_float64_reference(device, form):
    docs = random_codes(150, 64, 8, seed=21, dyadic=False)
    queries = random_codes(5, 64, 8, seed=22, dyadic=False)
    rng = np.random.default_rng(23)
    ids = [f"id{i}" for i in range(150)] if form == "milvus" else list(range(1000, 1150))
    cands = [[ids[j] for j in rng.choice(150, 40, replace=False)] for _ in range(5)]
    pos = {i: n for n, i in enumerate(ids)}
    if form == "sparse_vectors":
        lookup = {i: docs[[n]] for i, n in pos.items()}
    elif form == "milvus":
        lookup = dict(zip(ids, docs.to_milvus()))
    elif form == "qdrant":
        lookup = dict(zip(ids, docs.to_qdrant()))
    else:
        lookup = lambda want: docs[np.array([pos[i] for i in want])]  # noqa: E731
    got = Reranker(device=device, batch_size=17).rerank_sparse(queries, cands, lookup, top_k=15)
    full = (queries.to_scipy().astype(np.float64) @ docs.to_scipy().astype(np.float64).T).toarray()
    ref_scores = [[full[n, pos[i]] for i in c] for n, c in enumerate(cands)]
    for (g_ids, g_scores), (r_ids, r_scores) in zip(got, reference_rerank(ref_scores, cands, 15)):
        assert g_ids == r_ids
        np.testing.assert_allclose(g_scores, r_scores, rtol=1e-12, atol=1e-12)


def test_rerank_errors():
    vectors = {1: np.ones(3, np.float32), 2: np.array([np.nan, 0, 0], np.float32)}
    r = Reranker()
    with pytest.raises(DataError, match="no vector for candidate ids 9"):
        r.rerank_dense(np.ones((1, 3)), [[1, 9]], vectors)
    with pytest.raises(DataError, match="NaN or inf at ids 2"):
        r.rerank_dense(np.ones((1, 3)), [[1, 2]], vectors)
    with pytest.raises(DataError, match="2 queries but 1 candidate lists"):
        r.rerank_dense(np.ones((2, 3)), [[1]], vectors)
    with pytest.raises(DataError, match="dimension"):
        r.rerank_dense(np.ones((1, 4)), [[1]], vectors)
    with pytest.raises(DataError, match="NaN or inf at rows 0"):
        r.rerank_dense(np.full((1, 3), np.inf), [[1]], vectors)
    with pytest.raises(DataError, match="different dimensions"):
        r.rerank_dense(np.ones((1, 3)), [[1, 3]], {1: np.ones(3), 3: np.ones(4)})
    with pytest.raises(DataError, match="returned shape"):
        r.rerank_dense(np.ones((1, 3)), [[1]], lambda ids: np.ones((5, 3)))
    with pytest.raises(ConfigError, match="top_k"):
        r.rerank_dense(np.ones((1, 3)), [[1]], vectors, top_k=0)
    q = random_codes(1, 16, 3, seed=1)
    with pytest.raises(DataError, match="no sparse code for candidate ids 5"):
        r.rerank_sparse(q, [[5]], {})
    with pytest.raises(DataError, match="dimension"):
        r.rerank_sparse(q, [[5]], lambda ids: random_codes(1, 8, 2, seed=1))


# ------------------------------------------------------------------ candidates as arrays (search_candidates)
def _groups(lengths: list[int], seed: int) -> tuple[np.ndarray, list[int]]:
    """Row positions of each query's candidates in one flat array, and the lengths."""
    rng = np.random.default_rng(seed)
    return rng.permutation(sum(lengths)), lengths


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [[30, 0, 45, 15], [30, 0, 45, 15] * 5], ids=["few queries", "a batch of 20"])
def test_rank_codes_matches_float64_reference_per_group(device, sizes):
    """A few queries are scored in one gather, more in batches of pairs: the same ranking."""
    docs = random_codes(sum(sizes), 64, 8, seed=31, dyadic=False)
    queries = random_codes(len(sizes), 64, 12, seed=32, dyadic=False, negative=True)  # signed, as the re-score
    rows, lengths = _groups(sizes, seed=33)
    cand = docs[rows]
    ranked = Reranker(device=device, batch_size=7).rank_codes(queries, cand, lengths, top_k=10)
    full = (queries.to_scipy().astype(np.float64) @ cand.to_scipy().astype(np.float64).T).toarray()
    start = 0
    for q, (m, (pos, scores)) in enumerate(zip(lengths, ranked)):
        want = np.arange(m)
        s = full[q, start : start + m]
        order = sorted(want, key=lambda j: (-s[j], j))[:10]
        assert pos.tolist() == order
        np.testing.assert_allclose(scores, s[order], rtol=1e-12, atol=1e-12)
        start += m
    assert ranked[1][0].size == 0


def test_rank_dense_ties_keep_the_order_given_and_top_k_none_keeps_all():
    vec = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    ranked = Reranker().rank_dense(np.array([[1.0, 0.0], [0.0, 3.0]], np.float32), vec, [3, 1])
    assert ranked[0][0].tolist() == [1, 0, 2]
    np.testing.assert_allclose(ranked[0][1], [2.0, 1.0, 1.0])
    assert ranked[1][0].tolist() == [0] and ranked[1][1].tolist() == [3.0]


def test_rank_errors():
    r = Reranker()
    q = random_codes(2, 16, 3, seed=1)
    codes = random_codes(5, 16, 3, seed=2)
    with pytest.raises(DataError, match="do not add up"):
        r.rank_codes(q, codes, [2, 2])
    with pytest.raises(DataError, match="2 queries but 1 candidate lists"):
        r.rank_codes(q, codes, [5])
    with pytest.raises(DataError, match="dimension"):
        r.rank_codes(q, random_codes(5, 8, 3, seed=2), [2, 3])
    bad = SparseVectors(codes.indices, np.where(codes.values > 0, np.nan, 0).astype(np.float32), 16)
    with pytest.raises(DataError, match="NaN"):
        r.rank_codes(q, bad, [2, 3])
    with pytest.raises(DataError, match="dimension"):
        r.rank_dense(np.ones((1, 3), np.float32), np.ones((2, 4), np.float32), [2])
    with pytest.raises(ConfigError, match="top_k"):
        r.rank_dense(np.ones((1, 3), np.float32), np.ones((2, 3), np.float32), [2], top_k=0)


def test_database_row_formats_are_deprecated_but_still_read():
    docs = random_codes(6, 32, 4, seed=3, dyadic=False)
    q = random_codes(1, 32, 4, seed=4, dyadic=False)
    want = Reranker().rerank_sparse(q, [list(range(6))], {i: docs[[i]] for i in range(6)})
    for rows in (docs.to_milvus(), docs.to_qdrant()):
        with pytest.warns(DeprecationWarning, match="SparseVectors"):
            got = Reranker().rerank_sparse(q, [list(range(6))], dict(enumerate(rows)))
        assert got[0][0] == want[0][0]
        np.testing.assert_allclose(got[0][1], want[0][1], rtol=1e-12)
