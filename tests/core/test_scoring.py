"""SparseIndex and Reranker against a float64 reference (ties by row / input order), CPU and GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb import native, scoring
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.scoring import Reranker, SparseIndex, resolve_device
from csr_vdb.sparse import SparseVectors

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# The native CPU kernel needs a C compiler; without one SparseIndex runs (and these tests check) pure torch.
NATIVE = pytest.param(
    "native", marks=pytest.mark.skipif(native.load() is None, reason="no C compiler: native kernel unavailable")
)


def random_codes(n: int, dim: int, k: int, seed: int, dyadic: bool = True, negative: bool = False) -> SparseVectors:
    """k distinct latents per row; dyadic values (multiples of 1/4, exact in float32 sums) make ties."""
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n, dim)), axis=1)[:, :k]
    if dyadic:
        val = rng.integers(1, 6, size=(n, k)).astype(np.float32) / 4
    else:
        val = rng.lognormal(0, 0.5, size=(n, k)).astype(np.float32)
    if negative:
        val *= rng.choice([-1.0, 1.0], size=(n, k)).astype(np.float32)
    # Some padding slots (value 0) as real codes have when fewer than k latents fire.
    val[rng.random((n, k)) < 0.15] = 0
    return SparseVectors(idx, val, dim)


def reference_topk(queries: SparseVectors, docs: SparseVectors, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores over all rows; order by score desc then row asc; pad (-inf, -1) past N."""
    s = (queries.to_scipy().astype(np.float64) @ docs.to_scipy().astype(np.float64).T).toarray()
    n = s.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), s.shape), -s), axis=1)[:, :top_k]
    scores = np.full((len(queries), top_k), -np.inf)
    rows = np.full((len(queries), top_k), -1, np.int64)
    scores[:, : order.shape[1]] = np.take_along_axis(s, order, axis=1)
    rows[:, : order.shape[1]] = order
    return scores, rows


# ---------------------------------------------------------------------------------- SparseIndex
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", [NATIVE, "loop", "vectorised"])
@pytest.mark.parametrize("top_k", [1, 10, 137])
def test_search_identical_to_float64_reference(device, method, top_k):
    if method == "native" and device != "cpu":
        pytest.skip("the native kernel is CPU only")
    docs = random_codes(1500, 48, 6, seed=1)
    queries = random_codes(37, 48, 5, seed=2)
    index = SparseIndex(docs, device=device, method=method, query_block=5)
    scores, rows = index.search(queries, top_k)
    ref_s, ref_r = reference_topk(queries, docs, top_k)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert scores.shape == rows.shape == (37, top_k)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


@pytest.mark.parametrize("method", [NATIVE, "loop", "vectorised"])
@pytest.mark.parametrize("shard_rows", [1, 97, 500])
def test_shards_merge_to_the_same_exact_top_k(method, shard_rows):
    # Few distinct scores: many ties span shard borders and must still come out by row.
    n = 40 if shard_rows == 1 else 1000
    docs = random_codes(n, 12, 2, seed=40)
    queries = random_codes(15, 12, 2, seed=41)
    index = SparseIndex(docs, method=method, shard_rows=shard_rows, query_block=4)
    for top_k in (1, 17, n, n + 3):
        ref_s, ref_r = reference_topk(queries, docs, top_k)
        scores, rows = index.search(queries, top_k)
        np.testing.assert_array_equal(rows, ref_r)
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("query_block", [1, 3, 64])
def test_threads_and_blocks_do_not_change_results(threads, query_block):
    docs = random_codes(800, 32, 4, seed=3)
    queries = random_codes(20, 32, 4, seed=4)
    ref_s, ref_r = reference_topk(queries, docs, 25)
    scores, rows = SparseIndex(docs, device="cpu", threads=threads, query_block=query_block).search(queries, 25)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


def test_many_ties_are_broken_by_smaller_row():
    # Every doc has the same single latent and value: all scores tie, so rows must be 0..k-1.
    n = 1000
    docs = SparseVectors(np.zeros((n, 1), np.int64), np.ones((n, 1), np.float32), 4)
    q = SparseVectors(np.array([[0], [1]]), np.array([[2.0], [1.0]], np.float32), 4)
    scores, rows = SparseIndex(docs).search(q, 300)
    np.testing.assert_array_equal(rows, np.tile(np.arange(300), (2, 1)))
    assert (scores[0] == 2.0).all() and (scores[1] == 0.0).all()


def test_zero_score_rows_complete_the_top_k_in_row_order():
    # Query touches rows 5 and 700 only; the rest of the top-k are zero-score rows 0, 1, 2, ...
    n = 1000
    idx = np.full((n, 1), 3, np.int64)
    val = np.zeros((n, 1), np.float32)
    idx[5, 0], val[5, 0] = 1, 1.0
    idx[700, 0], val[700, 0] = 1, 2.0
    docs = SparseVectors(idx, val, 8)
    q = SparseVectors(np.array([[1]]), np.array([[1.0]], np.float32), 8)
    scores, rows = SparseIndex(docs).search(q, 6)
    assert rows[0].tolist() == [700, 5, 0, 1, 2, 3]
    assert scores[0].tolist() == [2.0, 1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("method", [NATIVE, "loop", "vectorised"])
def test_negative_scores_rank_below_untouched_rows(method):
    docs = random_codes(600, 16, 4, seed=5, negative=True)
    queries = random_codes(12, 16, 3, seed=6, negative=True)
    ref_s, ref_r = reference_topk(queries, docs, 600)  # the full order, negatives last
    scores, rows = SparseIndex(docs, method=method).search(queries, 600)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
    assert (scores[:, -1] < 0).any()


@pytest.mark.skipif(native.load() is None, reason="no C compiler: native kernel unavailable")
@pytest.mark.parametrize("tile", [1, 7, 64, 5000])
def test_native_kernel_tiles_give_the_exact_top_k(monkeypatch, tile):
    # Tiles smaller than the shard: posting cursors carry over tile borders, ties span them.
    monkeypatch.setattr(scoring, "_NATIVE_TILE_ROWS", tile)
    docs = random_codes(700, 20, 3, seed=50)
    queries = random_codes(9, 20, 4, seed=51, negative=True)
    index = SparseIndex(docs, method="native", threads=2)
    for top_k in (1, 13, 700, 705):
        ref_s, ref_r = reference_topk(queries, docs, top_k)
        scores, rows = index.search(queries, top_k)
        np.testing.assert_array_equal(rows, ref_r)
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


@pytest.mark.skipif(native.load() is None, reason="no C compiler: native kernel unavailable")
def test_native_and_torch_paths_return_identical_float_scores():
    # Non-dyadic values: float32 sums depend on their order, which both paths share.
    docs = random_codes(3000, 64, 8, seed=60, dyadic=False)
    queries = random_codes(25, 64, 8, seed=61, dyadic=False)
    s1, r1 = SparseIndex(docs, method="native").search(queries, 50)
    s2, r2 = SparseIndex(docs, method="loop").search(queries, 50)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(r1, r2)


def test_native_kernel_can_be_turned_off_or_fail_to_build(monkeypatch, tmp_path):
    docs = random_codes(50, 16, 3, seed=1)
    monkeypatch.setenv("CSR_VDB_NATIVE", "0")
    assert SparseIndex(docs).method == "loop"
    with pytest.raises(ConfigError, match="native kernel is unavailable"):
        SparseIndex(docs, method="native")
    monkeypatch.delenv("CSR_VDB_NATIVE")
    # a compiler that fails: the auto method falls back to pure torch, results unchanged
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.setenv("CSR_VDB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    index = SparseIndex(docs)
    assert index.method == "loop"
    queries = random_codes(4, 16, 3, seed=2)
    np.testing.assert_array_equal(index.search(queries, 5)[1], reference_topk(queries, docs, 5)[1])
    assert not list(tmp_path.rglob("*.so*"))  # no half-written library left behind
    # a working compiler builds into the cache folder
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.delenv("CC")
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert SparseIndex(docs).method == "native"
    assert len(list((tmp_path / "native").glob("csr_topk_*.so"))) == 1
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        with pytest.raises(ConfigError, match="CPU only"):
            SparseIndex(docs, device="cuda", method="native")


def test_float_values_match_reference_up_to_summation_order():
    docs = random_codes(2000, 256, 16, seed=7, dyadic=False)
    queries = random_codes(30, 256, 16, seed=8, dyadic=False)
    ref_s, ref_r = reference_topk(queries, docs, 20)
    scores, rows = SparseIndex(docs).search(queries, 20)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-6, atol=1e-6)
    # Rows agree wherever the reference scores are not within float32 rounding of each other.
    full = (queries.to_scipy().astype(np.float64) @ docs.to_scipy().astype(np.float64).T).toarray()
    got = np.take_along_axis(full, rows, axis=1)
    np.testing.assert_allclose(got, ref_s, rtol=1e-6, atol=1e-6)
    assert (rows == ref_r).mean() > 0.99


def test_top_k_beyond_size_pads_with_minus_one():
    docs = random_codes(7, 16, 3, seed=9)
    queries = random_codes(3, 16, 3, seed=10)
    scores, rows = SparseIndex(docs).search(queries, 10)
    ref_s, ref_r = reference_topk(queries, docs, 10)
    np.testing.assert_array_equal(rows, ref_r)
    assert (rows[:, 7:] == -1).all() and np.isneginf(scores[:, 7:]).all()
    assert sorted(rows[0, :7].tolist()) == list(range(7))


def test_empty_query_row_and_empty_index():
    docs = random_codes(50, 16, 3, seed=11)
    q = SparseVectors(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), 16)
    scores, rows = SparseIndex(docs).search(q, 4)
    assert rows[0].tolist() == [0, 1, 2, 3] and (scores == 0).all()
    empty = SparseIndex(SparseVectors.empty(16, 3))
    assert len(empty) == 0
    s, r = empty.search(random_codes(2, 16, 3, seed=12), 3)
    assert (r == -1).all() and np.isneginf(s).all()
    s, r = SparseIndex(docs).search(SparseVectors.empty(16, 3), 3)
    assert s.shape == r.shape == (0, 3)


def test_padding_slots_with_any_index_are_ignored():
    docs = random_codes(200, 16, 4, seed=30)
    messy = SparseVectors(np.where(docs.values != 0, docs.indices, -7), docs.values, 16)
    queries = random_codes(5, 16, 3, seed=31)
    ref_s, ref_r = reference_topk(queries, docs, 9)
    scores, rows = SparseIndex(messy).search(queries, 9)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
    assert SparseIndex(messy).nbytes == SparseIndex(docs).nbytes


def test_add_appends_rows_and_equals_one_index_over_all():
    a, b = random_codes(300, 32, 4, seed=13), random_codes(200, 32, 6, seed=14)
    queries = random_codes(9, 32, 4, seed=15)
    index = SparseIndex(a)
    index.search(queries, 5)  # built once before the add: the add must rebuild
    index.add(b)
    assert len(index) == 500
    both = SparseVectors.concat([a, b])
    ref_s, ref_r = reference_topk(queries, both, 30)
    scores, rows = index.search(queries, 30)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
    # Posting lists: h+1 int64 pointers + per non-zero an int32 row and a float32 value.
    assert index.nbytes == (32 + 1) * 8 + int(both.nnz().sum()) * 8


def test_errors():
    docs = random_codes(20, 16, 3, seed=16)
    index = SparseIndex(docs)
    with pytest.raises(DataError, match="dimension"):
        index.search(random_codes(2, 17, 3, seed=1), 3)
    bad = random_codes(3, 16, 3, seed=17)
    bad.values[1, 0] = np.nan
    with pytest.raises(DataError, match="rows 1") as err:
        index.search(bad, 3)
    assert err.value.rows == [1]
    with pytest.raises(DataError, match="NaN"):
        SparseIndex(bad)
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="top_k"):
            index.search(random_codes(1, 16, 3, seed=1), top_k)
    dup = SparseVectors(np.array([[1, 2], [3, 3]]), np.ones((2, 2), np.float32), 16)
    with pytest.raises(DataError, match="duplicate index within rows 1"):
        SparseIndex(dup).search(random_codes(1, 16, 3, seed=1), 1)
    with pytest.raises(DataError, match="dimension"):
        index.add(random_codes(2, 8, 3, seed=1))
    with pytest.raises(ConfigError, match="method"):
        SparseIndex(docs, method="magic")
    with pytest.raises(ConfigError, match="shard_rows"):
        SparseIndex(docs, shard_rows=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA"):
        SparseIndex(random_codes(4, 8, 2, seed=1), device="cuda")
    assert resolve_device(None).type == "cpu"


def test_concurrent_searches_are_correct_and_restore_torch_threads():
    from concurrent.futures import ThreadPoolExecutor

    docs, queries = random_codes(3000, 32, 4, seed=1), random_codes(40, 32, 4, seed=2)
    index = SparseIndex(docs, threads=2, query_block=1)
    ref_s, ref_r = reference_topk(queries, docs, 7)
    before = torch.get_num_threads()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: index.search(queries, 7), range(6)))
    assert torch.get_num_threads() == before
    for scores, rows in results:
        np.testing.assert_array_equal(rows, ref_r)
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


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
