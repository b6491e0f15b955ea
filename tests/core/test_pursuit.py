"""Matching-pursuit document codes (``doc_codes="pursuit"``): recovery, native vs torch, encode contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb import native, pursuit
from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.model import CSREncoder
from csr_vdb.training import train_encoder
from tests.helpers import clustered

torch.set_num_threads(1)

_needs_native = pytest.mark.skipif(native.load() is None, reason="no C compiler: native kernel unavailable")


def _dictionary(h: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, d, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def _planted(n: int, h: int, d: int, k: int, seed: int = 0):
    """Targets that are non-negative combinations of k atoms of an incoherent dictionary."""
    w = _dictionary(h, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    support = torch.stack([torch.randperm(h, generator=g)[:k] for _ in range(n)])
    coef = 0.5 + torch.rand(n, k, generator=g)
    target = torch.einsum("nk,nkd->nd", coef, w[support])
    return w, support, coef, target


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=_needs_native)])
def test_pursuit_recovers_a_planted_sparse_combination(monkeypatch, use_native):
    if not use_native:
        monkeypatch.setenv("CSR_VDB_NATIVE", "0")
    w, support, coef, target = _planted(n=40, h=256, d=128, k=3)
    idx, val = pursuit.pursuit_codes(target, w, w @ w.T, k=3, candidates=64)
    for r in range(40):
        got = dict(zip(idx[r].tolist(), val[r].tolist()))
        want = dict(zip(support[r].tolist(), coef[r].tolist()))
        assert set(got) == set(want)
        assert all(got[a] == pytest.approx(want[a], abs=1e-3) for a in want)


@_needs_native
def test_native_and_torch_pursuit_agree(monkeypatch):
    torch.manual_seed(0)
    w = _dictionary(96, 16, seed=3)
    target = torch.randn(200, 16)
    gram = w @ w.T
    i_nat, v_nat = pursuit.pursuit_codes(target, w, gram, k=6, candidates=40)
    monkeypatch.setenv("CSR_VDB_NATIVE", "0")
    i_torch, v_torch = pursuit.pursuit_codes(target, w, gram, k=6, candidates=40)
    # same steps in the same order; only float rounding differs (C axpy vs batched matmul), which may
    # flip a near-tied choice on some row of some CPU, so: nearly all rows identical, and those exactly
    same = (i_nat == i_torch).all(dim=1)
    assert same.float().mean() >= 0.97
    assert torch.allclose(v_nat[same], v_torch[same], atol=1e-4)


def test_pursuit_codes_are_non_negative_distinct_and_reduce_the_residual():
    torch.manual_seed(1)
    w = _dictionary(80, 12, seed=5)
    target = torch.randn(100, 12)
    idx, val = pursuit.pursuit_codes(target, w, w @ w.T, k=5, candidates=30)
    assert (val >= 0).all()
    assert all(len(set(r)) == 5 for r in idx.tolist())
    recon = torch.einsum("nk,nkd->nd", val, w[idx])
    assert ((target - recon).norm(dim=1) <= target.norm(dim=1) + 1e-5).all()


def _trained(doc_codes: str) -> tuple[CSREncoder, np.ndarray]:
    x, _ = clustered(600, 16, clusters=12)
    torch.manual_seed(0)
    cfg = CSRConfig(input_dim=16, hidden_dim=64, k=4, normalize_codes=True)
    enc = train_encoder(x, cfg, TrainConfig(epochs=3, batch_size=128, val_fraction=0.0, device="cpu")).encoder
    if doc_codes != "topk":
        enc = enc.with_config(doc_codes=doc_codes)
    return enc, x


def test_pursuit_doc_codes_reconstruct_better_than_topk_and_keep_the_encode_contract(tmp_path):
    topk, x = _trained("topk")
    purs, _ = _trained("pursuit")
    b = purs.b_pre.detach().numpy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)

    def rel_err(enc):
        codes = enc.encode(x)
        recon = enc.decode(codes) - b
        # the codes are normalised, so compare directions: the best rescaling of each reconstruction
        scale = (recon * (xn - b)).sum(1) / np.maximum((recon * recon).sum(1), 1e-12)
        return float(np.mean(np.linalg.norm(xn - b - scale[:, None] * recon, axis=1)))

    assert rel_err(purs) < rel_err(topk)
    codes = purs.encode(x)
    assert codes.width == 4 and (codes.values >= 0).all() and (codes.values[:, 0] > 0).all()
    assert (np.diff(codes.values, axis=1) <= 0).all()  # slots sorted by value
    # normalize_codes with pursuit: the reconstruction without b_pre has unit norm
    assert np.allclose(np.linalg.norm(purs.decode(codes) - b, axis=1), 1.0, atol=1e-4)
    # queries keep their own projection (TopK here), and the setting survives save/load
    assert np.array_equal(purs.encode_queries(x[:5]).indices, topk.encode_queries(x[:5]).indices)
    loaded = CSREncoder.load(purs.save(tmp_path / "m"), device="cpu")
    assert loaded.config.doc_codes == "pursuit"
    assert np.array_equal(loaded.encode(x[:50]).indices, codes.indices[:50])


@_needs_native
def test_native_pursuit_rejects_inconsistent_arguments():
    lib = native.load()
    w = _dictionary(20, 4)
    c0, cand = torch.randn(3, 8), torch.randint(0, 20, (3, 8))
    with pytest.raises(ValueError, match="1 <= k <= C"):
        native.pursuit(lib, c0, cand, w @ w.T, k=9, step_sweeps=1, final_sweeps=1)
    with pytest.raises(ValueError, match="matching shapes"):
        native.pursuit(lib, c0, cand[:, :5], w @ w.T, k=2, step_sweeps=1, final_sweeps=1)
