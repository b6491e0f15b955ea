"""csr_vdb.native: the compiled kernels against numpy/torch references, and how the library is built,
cached and turned off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse as sp

from csr_vdb import native

LIB = native.load()
needs_lib = pytest.mark.skipif(LIB is None, reason="no C compiler: native kernels unavailable")


def postings(n: int, h: int, k: int, seed: int) -> tuple[sp.csc_array, np.ndarray, np.ndarray, np.ndarray]:
    """k distinct latents per row with dyadic values (float32 sums exact, so scores can tie)."""
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n, h)), axis=1)[:, :k]
    val = rng.integers(1, 5, size=(n, k)).astype(np.float32) / 4
    csr = sp.csr_array((val.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, h))
    csc = csr.tocsc()
    return csr, csc.indptr.astype(np.int64), csc.indices.astype(np.int32), csc.data.astype(np.float32)


@needs_lib
@pytest.mark.parametrize("tile", [1, 5, 1000])
def test_topk_is_the_exact_top_k_with_ties_by_row(tile):
    docs, ptr, rows, vals = postings(300, 24, 3, seed=1)
    rng = np.random.default_rng(2)
    q_idx = np.argsort(rng.random((6, 24)), axis=1)[:, :4].astype(np.int64)
    q_val = (rng.integers(-3, 4, size=(6, 4)) / 2).astype(np.float32)  # signed, some zero (padding)
    scores, got = native.topk(LIB, 300, ptr, rows, vals, q_idx, q_val, 40, tile)
    q = sp.csr_array((q_val.ravel(), q_idx.ravel(), np.arange(0, 25, 4)), shape=(6, 24))
    ref = (q.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    for i in range(6):
        want = sorted(range(300), key=lambda r: (-ref[i, r], r))[:40]
        assert got[i].tolist() == want
        np.testing.assert_array_equal(scores[i], ref[i, want].astype(np.float32))  # dyadic: exact sums


@needs_lib
def test_topk_without_queries_returns_empty_arrays():
    _, ptr, rows, vals = postings(10, 8, 2, seed=3)
    scores, got = native.topk(LIB, 10, ptr, rows, vals, np.zeros((0, 2), np.int64), np.zeros((0, 2), np.float32), 3, 4)
    assert scores.shape == (0, 3) and got.shape == (0, 3)


@needs_lib
@pytest.mark.parametrize("threads", [1, 3])
def test_row_topk_selects_the_largest_with_the_head_sorted(threads):
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.integers(0, 50, size=(400, 97)).astype(np.float32))  # many ties
    out = native.row_topk(LIB, x, 20, 6, threads=threads)
    assert out.shape == (400, 20) and out.dtype == torch.int64
    xs = x.numpy()
    for r in range(400):
        order = sorted(range(97), key=lambda j: (-xs[r, j], j))
        assert out[r, :6].tolist() == order[:6]  # descending, ties by smaller position
        kth = xs[r, order[19]]
        picked = xs[r, out[r].numpy()]
        assert len(set(out[r].tolist())) == 20
        assert (picked >= kth).all() and (xs[r] > kth).sum() <= 20


@needs_lib
def test_row_topk_rejects_bad_arguments():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="1 <= k <= K <= h"):
        native.row_topk(LIB, x, 6, 1)
    with pytest.raises(ValueError, match="float32 CPU"):
        native.row_topk(LIB, x.double(), 2, 1)


@needs_lib
def test_pursuit_matches_the_torch_steps(monkeypatch):
    from csr_vdb.pursuit import pursuit_codes

    rng = np.random.default_rng(5)
    atoms = torch.from_numpy(rng.normal(size=(48, 12)).astype(np.float32))
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    target = torch.from_numpy(rng.normal(size=(30, 12)).astype(np.float32))
    gram = atoms @ atoms.T
    idx_c, val_c = pursuit_codes(target, atoms, gram, k=5, candidates=16)  # the native path (compiler present)
    monkeypatch.setattr(native, "load", lambda: None)
    idx_t, val_t = pursuit_codes(target, atoms, gram, k=5, candidates=16)  # the same steps in torch
    assert (val_c >= 0).all()
    np.testing.assert_array_equal(idx_c.numpy(), idx_t.numpy())
    np.testing.assert_allclose(val_c.numpy(), val_t.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="1 <= k <= C"):
        native.pursuit(LIB, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), gram, 4, 1, 1)


# ------------------------------------------------------------------------------------ build
def test_disabled_by_environment(monkeypatch):
    for off in ("0", "false", "No", " off "):
        monkeypatch.setenv("CSR_VDB_NATIVE", off)
        assert native.disabled() and native.load() is None
    monkeypatch.setenv("CSR_VDB_NATIVE", "1")
    assert not native.disabled()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CSR_VDB_CACHE_DIR", str(tmp_path))
    assert native.cache_dir() == tmp_path / "native"
    monkeypatch.delenv("CSR_VDB_CACHE_DIR")
    assert native.cache_dir().parts[-2:] == ("csr-vdb", "native")


def test_a_failing_compiler_leaves_nothing_and_a_working_one_builds_once(monkeypatch, tmp_path):
    monkeypatch.setenv("CSR_VDB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.setenv("CC", "false")
    assert native.load() is None
    assert not list(tmp_path.rglob("*.so*"))
    assert native.load() is None  # the answer is cached: no second build attempt
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.delenv("CC")
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    lib = native.load()
    assert lib is not None and native.load() is lib
    built = list((tmp_path / "native").glob("csr_topk_*.so"))
    assert len(built) == 1
    monkeypatch.setattr(native, "_cache", {})
    assert native.load() is not None  # a fresh process loads the cached library without rebuilding
    assert list((tmp_path / "native").glob("csr_topk_*.so")) == built
