"""csr_vdb.kernels: each sparse autograd kernel equals the dense computation it replaces, in value
and in gradient (float64, so the comparison is tight and the two summation orders barely matter)."""

from __future__ import annotations

import pytest
import torch

from csr_vdb import kernels

N, H, D, W = 12, 40, 7, 5


def codes(n: int = N, h: int = H, w: int = W, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-aligned codes: w distinct latents per row, positive values (float64)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.argsort(torch.rand(n, h, generator=g), dim=1)[:, :w]
    val = torch.rand(n, w, generator=g, dtype=torch.float64) + 0.1
    return idx, val


def dense_of(idx: torch.Tensor, val: torch.Tensor, h: int = H) -> torch.Tensor:
    return torch.zeros(idx.shape[0], h, dtype=val.dtype).scatter_add(1, idx, val)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_spmm_t_is_the_transposed_product():
    idx, val = codes()
    m = torch.randn(N, D, dtype=torch.float64)
    close(kernels.spmm_t(idx, val, H, m), dense_of(idx, val).T @ m)


def test_sddmm_samples_the_product_at_the_indices():
    idx, _ = codes()
    a = torch.randn(N, D, dtype=torch.float64)
    rows = torch.randn(H, D, dtype=torch.float64)
    close(kernels.sddmm(idx, a, rows), (a @ rows.T).gather(1, idx))
    assert kernels.sddmm(idx[:0], a[:0], rows).shape == (0, W)


def test_sparse_decode_value_and_gradients():
    idx, val = codes(seed=1)
    weight = torch.randn(H, D, dtype=torch.float64)
    v1, w1 = val.clone().requires_grad_(), weight.clone().requires_grad_()
    v2, w2 = val.clone().requires_grad_(), weight.clone().requires_grad_()
    g = torch.randn(N, D, dtype=torch.float64)
    out = kernels.sparse_decode(idx, v1, w1)
    ref = dense_of(idx, v2) @ w2
    close(out, ref)
    out.backward(g)
    ref.backward(g)
    close(v1.grad, v2.grad)
    close(w1.grad, w2.grad)


def test_selected_linear_passes_gradients_through_the_selected_entries_only():
    x = torch.randn(N, D, dtype=torch.float64)
    weight = torch.randn(H, D, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(H, dtype=torch.float64, requires_grad=True)
    w2, b2 = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    with torch.no_grad():
        pre = x @ weight.T + bias
    idx = pre.topk(W, dim=1).indices
    out = kernels.selected_linear(x, weight, bias, idx, pre)
    ref = (x @ w2.T + b2).gather(1, idx)
    close(out, ref)
    g = torch.randn(N, W, dtype=torch.float64)
    out.backward(g)
    ref.backward(g)
    close(weight.grad, w2.grad)
    close(bias.grad, b2.grad)


@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_sparse_similarity_value_and_gradients(same, scale):
    idx1, val1 = codes(seed=2)
    idx2, val2 = (idx1, val1) if same else codes(n=9, seed=3)
    a = val1.clone().requires_grad_()
    b = a if same else val2.clone().requires_grad_()
    ra = val1.clone().requires_grad_()
    rb = ra if same else val2.clone().requires_grad_()
    out = kernels.sparse_similarity(idx1, a, idx1 if same else idx2, b, H, scale=scale)
    ref = scale * dense_of(idx1, ra) @ dense_of(idx1 if same else idx2, rb).T
    close(out, ref)
    g = torch.randn(out.shape, dtype=torch.float64)
    out.backward(g)
    ref.backward(g)
    close(a.grad, ra.grad)
    if not same:
        close(b.grad, rb.grad)


def test_topk_indices_selects_the_largest_with_the_head_in_order():
    torch.manual_seed(4)
    scores = torch.randn(64, 300)
    got = kernels.topk_indices(scores, 50, 10)  # native radix select on CPU when it builds
    want = scores.topk(50, dim=1)
    assert torch.equal(got[:, :10], want.indices[:, :10])  # random floats: no ties
    assert torch.equal(got.sort(dim=1).values, want.indices.sort(dim=1).values)
    # elsewhere (float64 here) it is torch.topk itself
    assert torch.equal(kernels.topk_indices(scores.double(), 5), scores.double().topk(5, dim=1).indices)
