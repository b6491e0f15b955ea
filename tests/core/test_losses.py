"""Loss terms and the sparse autograd kernels, checked against plain dense autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from csr_vdb import native
from csr_vdb.errors import ConfigError
from csr_vdb.kernels import sddmm, selected_linear, sparse_decode, sparse_similarity, spmm_t, topk_indices
from csr_vdb.losses import (
    TERM_NAMES,
    ContrastiveLoss,
    auxiliary_loss,
    code_similarity,
    csr_loss,
    dense_codes,
    info_nce,
    mask_self_,
    nearest_neighbors,
    normalized_mse,
    reconstruction_terms,
    supcon_loss,
)
from tests.helpers import clustered, tiny_encoder

torch.set_num_threads(1)


def _unique_idx(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(h, generator=g)[:w] for _ in range(n)])


def test_normalized_mse_is_fraction_of_variance_unexplained():
    x = torch.randn(64, 8)
    assert normalized_mse(x, x) == 0
    mean_pred = x.mean(0, keepdim=True).expand_as(x)
    assert normalized_mse(mean_pred, x).item() == pytest.approx(1.0, rel=1e-5)
    assert normalized_mse(0.5 * (x + mean_pred), x).item() == pytest.approx(0.25, rel=1e-4)


def test_sddmm_and_spmm_t_match_dense():
    torch.manual_seed(0)
    idx = _unique_idx(20, 16, 4)
    a, rows = torch.randn(20, 6), torch.randn(16, 6)
    assert torch.allclose(sddmm(idx, a, rows), (a @ rows.T).gather(1, idx), atol=1e-5)
    vals, m = torch.rand(20, 4), torch.randn(20, 5)
    assert torch.allclose(spmm_t(idx, vals, 16, m), dense_codes(idx, vals, 16).T @ m, atol=1e-5)


def test_kernel_gradients_match_dense_autograd():
    torch.manual_seed(0)
    n, d, h, w = 40, 8, 32, 5
    x = torch.randn(n, d)
    W = torch.randn(h, d, requires_grad=True)
    b = torch.randn(h, requires_grad=True)
    with torch.no_grad():
        pre = torch.addmm(b, x, W.T)
    idx = pre.topk(w, dim=1).indices[:, torch.randperm(w)]  # any slot order
    out = selected_linear(x, W, b, idx, pre)
    (out.relu() ** 2).sum().backward()
    got = (W.grad.clone(), b.grad.clone())
    W.grad = b.grad = None
    ref = (x @ W.T + b).gather(1, idx)
    (ref.relu() ** 2).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(got[0], W.grad, atol=1e-5) and torch.allclose(got[1], b.grad, atol=1e-5)

    vals = torch.rand(n, w, requires_grad=True)
    D = torch.randn(h, d, requires_grad=True)
    t = torch.randn(n, d)
    ((sparse_decode(idx, vals, D) - t) ** 2).sum().backward()
    got = (vals.grad.clone(), D.grad.clone())
    vals.grad = D.grad = None
    ((dense_codes(idx, vals, h) @ D - t) ** 2).sum().backward()
    assert torch.allclose(got[0], vals.grad, atol=1e-4) and torch.allclose(got[1], D.grad, atol=1e-4)

    idx2 = _unique_idx(30, h, 3, seed=1)
    v1, v2 = torch.rand(n, w, requires_grad=True), torch.rand(30, 3, requires_grad=True)
    G = torch.randn(n, 30)
    s = sparse_similarity(idx, v1, idx2, v2, h)
    (s * G).sum().backward()
    got = (v1.grad.clone(), v2.grad.clone())
    v1.grad = v2.grad = None
    s_ref = dense_codes(idx, v1, h) @ dense_codes(idx2, v2, h).T
    (s_ref * G).sum().backward()
    assert torch.allclose(s, s_ref, atol=1e-5)
    assert torch.allclose(got[0], v1.grad, atol=1e-4) and torch.allclose(got[1], v2.grad, atol=1e-4)

    # self-similarity: the same tensor on both sides gets both gradients
    v1.grad = None
    G2 = torch.randn(n, n)
    (sparse_similarity(idx, v1, idx, v1, h) * G2).sum().backward()
    got = v1.grad.clone()
    v1.grad = None
    z = dense_codes(idx, v1, h)
    ((z @ z.T) * G2).sum().backward()
    assert torch.allclose(got, v1.grad, atol=1e-4)


def test_code_similarity_cosine():
    idx = _unique_idx(6, 16, 3)
    v = torch.rand(6, 3) + 0.1
    cos = code_similarity(idx, v, idx, v, 16, cosine=True)
    assert torch.allclose(cos.diagonal(), torch.ones(6), atol=1e-5)
    dot = code_similarity(idx, v, idx, v, 16, cosine=False)
    assert torch.allclose(dot.diagonal(), (v**2).sum(1), atol=1e-5)


def test_reconstruction_terms_match_a_plain_implementation():
    x = torch.from_numpy(clustered(64, 8)[0])
    m = tiny_encoder()
    with torch.no_grad():
        m.b_pre.copy_(x.mean(0))
        m.b_enc.normal_(0, 0.1)
    rk, r4, aux, idx, vals = reconstruction_terms(m, x, k=2, k_aux=8)
    pre = (x - m.b_pre) @ m.W_enc.T + m.b_enc
    v4, i4 = pre.topk(8, dim=1)
    zk = torch.zeros_like(pre).scatter(1, i4[:, :2], v4[:, :2].relu())
    z4 = torch.zeros_like(pre).scatter(1, i4, v4.relu())
    ref_k = normalized_mse(zk @ m.W_dec + m.b_pre, x)
    ref_4k = normalized_mse(z4 @ m.W_dec + m.b_pre, x)
    assert rk.item() == pytest.approx(ref_k.item(), rel=1e-4)
    assert r4.item() == pytest.approx(ref_4k.item(), rel=1e-4)
    assert aux.item() == 0  # nothing is dead yet
    assert torch.equal(idx, i4[:, :2])


def test_4k_pass_uses_full_pre_activations_even_with_dead_latents():
    x = torch.from_numpy(clustered(64, 8)[0])
    m = tiny_encoder(dead_threshold=1)
    _, r4_alive, *_ = reconstruction_terms(m, x, k=2, k_aux=8)
    with torch.no_grad():
        m.rows_since_fired.fill_(10)  # every latent "dead"
    _, r4_dead, aux, *_ = reconstruction_terms(m, x, k=2, k_aux=8)
    # sentence-transformers would mask dead latents out of the 4k pass; here it must not change
    assert r4_dead.item() == pytest.approx(r4_alive.item(), rel=1e-6)
    assert aux.item() > 0


def test_aux_loss_trains_only_dead_latents():
    x = torch.from_numpy(clustered(64, 8)[0])
    m = tiny_encoder(dead_threshold=5)
    with torch.no_grad():
        m.rows_since_fired[:16] = 100  # latents 0..15 dead
    bias = m.encoder_bias()
    with torch.no_grad():
        pre = torch.addmm(bias, x, m.W_enc.T)
    residual = torch.randn(64, 8)
    loss = auxiliary_loss(m, x, bias, pre, residual, k_aux=4)
    loss.backward()
    live_rows = m.W_dec.grad[16:]
    assert live_rows.abs().sum() == 0 and m.W_dec.grad[:16].abs().sum() > 0
    assert m.b_enc.grad[16:].abs().sum() == 0


def test_info_nce_and_supcon_values():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 3.0, 0.0]])
    want = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 2]) / 2
    assert info_nce(logits, torch.tensor([0, 2])).item() == pytest.approx(want.item(), rel=1e-6)
    sq = torch.tensor([[9.0, 1.0, 2.0], [1.0, 9.0, 3.0], [2.0, 3.0, 9.0]])
    masked = info_nce(sq, torch.tensor([2, 2, 1]), self_mask=True)
    ref = -(math.log(math.exp(2) / (math.exp(1) + math.exp(2))) + math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
            + math.log(math.exp(3) / (math.exp(2) + math.exp(3)))) / 3
    assert masked.item() == pytest.approx(ref, rel=1e-5)
    # SupCon: rows 0 and 1 share a label; row 2 has no positive and is skipped
    labels = torch.tensor([0, 0, 1])
    sc = supcon_loss(sq, labels)
    e = math.exp
    ref = -(math.log(e(1) / (e(1) + e(2))) + math.log(e(1) / (e(1) + e(3)))) / 2
    assert sc.item() == pytest.approx(ref, rel=1e-5)
    assert supcon_loss(sq, torch.tensor([0, 1, 2])).item() == 0


def test_nearest_neighbors_never_self_and_uses_pool():
    x = F.normalize(torch.randn(10, 4), dim=1)
    nn = nearest_neighbors(x)
    assert (nn != torch.arange(10)).all()
    pool = x[:3] * 1.0001  # near-copies of rows 0..2
    nn = nearest_neighbors(x, pool)
    assert nn[0] == 10 and nn[1] == 11 and nn[2] == 12


def test_code_similarity_of_a_batch_with_itself_has_the_dense_cosine_gradient():
    # the cosine path hands the kernel one tensor for both sides (its Z Z^T branch); values and
    # gradients must equal plain dense autograd on normalised codes
    torch.manual_seed(1)
    idx = _unique_idx(7, 20, 4)
    v = (torch.rand(7, 4) + 0.1).requires_grad_()
    G = torch.randn(7, 7)
    got = code_similarity(idx, v, idx, v, 20, cosine=True)
    (got * G).sum().backward()
    g_got = v.grad.clone()
    v.grad = None
    z = F.normalize(dense_codes(idx, v, 20), dim=1)
    ref = z @ z.T
    (ref * G).sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(g_got, v.grad, atol=1e-5)


_needs_native = pytest.mark.skipif(native.load() is None, reason="no C compiler: native kernel unavailable")


@_needs_native
@pytest.mark.parametrize(("n", "h", "K", "k"), [(50, 1536, 128, 32), (9, 40, 40, 3), (5, 7, 1, 1), (300, 257, 64, 64)])
def test_native_row_topk_selects_what_torch_topk_selects(n, h, K, k):
    torch.manual_seed(n + h)
    x = torch.randn(n, h) * torch.rand(n, 1) * 10 - 1  # negative and positive, row scales differ
    got = topk_indices(x, K, k)
    ref = x.topk(K, dim=1)
    assert got.shape == (n, K) and got.dtype == torch.int64
    assert torch.equal(got[:, :k], ref.indices[:, :k])  # the k largest, in descending order
    assert torch.equal(got.sort(1).values, ref.indices.sort(1).values)  # the same K entries


@_needs_native
def test_native_row_topk_breaks_ties_by_smaller_position_and_handles_special_values():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0, -1.0, 3.0], [0.0] * 8, [-0.0, 0.0, -2.0, -1.0, -0.0, 5.0, 1.0, 1.0]])
    got = native.row_topk(native.load(), x, 5, 2)
    assert got[0, :2].tolist() == [1, 2]
    assert sorted(got[0].tolist()) == [1, 2, 3, 4, 7]
    assert got[1, :2].tolist() == [0, 1] and sorted(got[1].tolist()) == [0, 1, 2, 3, 4]
    assert got[2, :2].tolist() == [5, 6]
    assert set(got[2].tolist()) >= {5, 6, 7} and set(got[2].tolist()) <= {0, 1, 4, 5, 6, 7}
    inf = torch.tensor([[float("-inf"), 1.0, float("inf"), 0.5]])
    assert native.row_topk(native.load(), inf, 3, 1).tolist()[0][0] == 2
    with pytest.raises(ValueError, match="k <= K <= h"):
        native.row_topk(native.load(), x, 9, 2)
    with pytest.raises(ValueError, match="float32"):
        native.row_topk(native.load(), x.double(), 2, 1)


def test_topk_indices_falls_back_to_torch_topk(monkeypatch):
    monkeypatch.setenv("CSR_VDB_NATIVE", "0")
    x = torch.randn(6, 30)
    assert torch.equal(topk_indices(x, 8, 2), x.topk(8, dim=1).indices)
    assert torch.equal(topk_indices(x.double(), 4), x.double().topk(4, dim=1).indices)


@pytest.mark.parametrize("same", [False, True])
def test_sparse_similarity_scale_matches_scaling_the_dense_product(same):
    torch.manual_seed(2)
    h = 24
    idx1, idx2 = _unique_idx(9, h, 4, seed=3), _unique_idx(6, h, 3, seed=4)
    v1 = torch.rand(9, 4, requires_grad=True)
    v2 = v1 if same else torch.rand(6, 3, requires_grad=True)
    idx2 = idx1 if same else idx2
    G = torch.randn(9, v2.shape[0])
    (sparse_similarity(idx1, v1, idx2, v2, h, scale=2.5) * G).sum().backward()
    got = [v1.grad.clone()] + ([] if same else [v2.grad.clone()])
    v1.grad = None
    if not same:
        v2.grad = None
    ref = 2.5 * dense_codes(idx1, v1, h) @ dense_codes(idx2, v2, h).T
    (ref * G).sum().backward()
    want = [v1.grad] + ([] if same else [v2.grad])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, want))


def test_mask_self_in_place_equals_the_self_mask_of_info_nce():
    torch.manual_seed(3)
    idx = _unique_idx(8, 16, 3)
    v = torch.rand(8, 3, requires_grad=True)
    targets = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    info_nce(mask_self_(code_similarity(idx, v, idx, v, 16, cosine=True, scale=10.0)), targets).backward()
    got = v.grad.clone()
    v.grad = None
    ref = info_nce(code_similarity(idx, v, idx, v, 16, cosine=True) / 0.1, targets, self_mask=True)
    ref.backward()
    assert torch.allclose(got, v.grad, atol=1e-5)


# ------------------------------------------------------------------ the combined loss and the contrastive term
def test_csr_loss_is_the_weighted_sum_of_its_terms():
    x = torch.from_numpy(clustered(64, 8)[0])
    m = tiny_encoder()
    with torch.no_grad():
        m.b_pre.copy_(x.mean(0))
    m.rows_since_fired.fill_(10**6)  # every latent dead: the auxiliary term is live
    seen = []

    def contrastive(idx, vals):
        seen.append((idx.shape, vals.shape))
        return vals.sum() * 0 + 0.5

    terms = csr_loss(m, x, 2, 8, contrastive, beta_aux=0.25, gamma=2.0)
    assert seen == [((64, 2), (64, 2))]  # called once with the batch's top-k codes
    assert terms.indices.shape == (64, 2) and terms.values.shape == (64, 2)
    want = terms.reconstruction_loss_k + terms.reconstruction_loss_4k / 8 + 0.25 * terms.auxiliary_loss + 2.0 * 0.5
    assert terms.total.item() == pytest.approx(want.item(), rel=1e-6)
    assert terms.auxiliary_loss.item() > 0 and terms.total.requires_grad
    floats = terms.as_floats()
    assert tuple(floats) == TERM_NAMES and floats["contrastive_loss"] == pytest.approx(0.5)
    assert terms.stacked().shape == (5,) and not terms.stacked().requires_grad


def _contrastive(**train):
    from csr_vdb.config import TrainConfig

    m = tiny_encoder()
    return m, ContrastiveLoss(m, TrainConfig(**train), torch.Generator().manual_seed(0))


def test_contrastive_loss_modes_without_their_data():
    x = torch.from_numpy(clustered(32, 8)[0])
    m, none = _contrastive(gamma=0.0)
    idx, vals = m.topk_codes(x, 2)
    assert none.mode == "none" and none(x, idx, vals, None, 2, 2).item() == 0.0
    _, pairs = _contrastive(positives="pairs")
    assert pairs(x, idx, vals, None, 2, 2, pairs=None).item() == 0.0
    _, labels = _contrastive(positives="labels")
    with pytest.raises(ConfigError, match="labels"):
        labels(x, idx, vals, None, 2, 2)
    assert labels(x, idx, vals, torch.arange(32) % 4, 2, 2).item() > 0


def test_contrastive_loss_neighbour_pool_fills_in_training_only():
    x, _ = clustered(96, 8)
    m, loss = _contrastive(positives="neighbors", neighbor_pool=40)
    for start in (0, 32):
        xb = torch.from_numpy(x[start : start + 32])
        loss(xb, *m.topk_codes(xb, 2), None, 2, 2)
    assert loss.pool.shape == (40, 8)  # 64 rows seen, capped at neighbor_pool, newest first
    assert torch.allclose(loss.pool[:32], torch.from_numpy(x[32:64]))
    xb = torch.from_numpy(x[64:])
    before = loss.pool.clone()
    val = loss(xb, *m.topk_codes(xb, 2), None, 2, 2, update_pool=False)
    assert torch.equal(loss.pool, before) and val.item() > 0  # validation neither mines nor grows the pool


def test_contrastive_noise_views_follow_the_generator():
    xb = torch.from_numpy(clustered(32, 8)[0])
    m, a = _contrastive(positives="noise")
    _, b = _contrastive(positives="noise")
    idx, vals = m.topk_codes(xb, 2)
    first = a(xb, idx, vals, None, 2, 2).item()
    assert first == pytest.approx(b(xb, idx, vals, None, 2, 2).item(), rel=1e-6)  # the same seed: the same views
    assert a(xb, idx, vals, None, 2, 2).item() != pytest.approx(first, rel=1e-6)  # the next draw: other views
