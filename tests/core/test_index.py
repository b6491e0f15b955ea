"""SparseIndex against a float64 reference (ties by row), CPU (native kernel and torch) and GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb import index as index_module
from csr_vdb import native
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.device import resolve_device
from csr_vdb.index import SparseIndex
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
    monkeypatch.setattr(index_module, "_NATIVE_TILE_ROWS", tile)
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
