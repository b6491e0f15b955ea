"""Sparse autograd kernels that keep CSR training at O(n*k*d) instead of dense O(n*h*d) products.

A batch of k-sparse codes is held as row-aligned ``(indices [n, w], values [n, w])``. Stock autograd
through ``topk`` / ``embedding_bag`` / dense ``z @ z.T`` spends most of a training step in dense
``[n, hidden_dim]`` matrix products and in a slow ``embedding_bag`` backward; these functions
compute the same values and gradients with a sampled dense-dense product
(``torch.sparse.sampled_addmm``) and a per-latent ``embedding_bag`` for ``Z^T @ dense``, both of
which touch only the k selected latents per row; the contrastive ``z z^T`` and its backward
drop from three dense ``[n, h] x [h, n]`` products to n*k*n work.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from csr_vdb import native


def spmm_t(indices: torch.Tensor, values: torch.Tensor, hidden_dim: int, dense: torch.Tensor) -> torch.Tensor:
    """``Z^T @ dense`` for codes ``Z`` ``[n, hidden_dim]`` and ``dense`` ``[n, m]`` -> ``[hidden_dim, m]``.

    Entries are sorted by latent and summed per latent with ``embedding_bag`` (one bag per latent),
    which beats ``torch.sparse.mm`` on a COO matrix on CPU.
    """
    n, w = indices.shape
    flat = indices.reshape(-1)
    # narrow keys sort faster
    key_dtype = torch.int16 if hidden_dim <= torch.iinfo(torch.int16).max else torch.int32
    order = torch.argsort(flat.to(key_dtype))
    counts = torch.bincount(flat, minlength=hidden_dim)
    offsets = torch.zeros(hidden_dim, dtype=torch.long, device=flat.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    rows = torch.div(order, w, rounding_mode="floor")
    weights = values.reshape(-1)[order].to(dense.dtype)
    return F.embedding_bag(rows, dense, offsets, per_sample_weights=weights, mode="sum")


def sddmm(indices: torch.Tensor, a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sampled product ``out[i, s] = <a[i], rows[indices[i, s]]>``.

    Args:
        indices: ``[n, w]`` int64 row ids of ``rows``.
        a: ``[n, d]``.
        rows: ``[h, d]``.

    Returns:
        ``[n, w]`` (the entries of ``a @ rows.T`` at ``indices``, without forming it).
    """
    n, w = indices.shape
    if n == 0 or w == 0:
        return a.new_zeros(n, w)
    crow = torch.arange(0, n * w + 1, w, device=indices.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow,
            indices.reshape(-1),
            torch.ones(n * w, dtype=a.dtype, device=a.device),
            (n, rows.shape[0]),
            check_invariants=False,
        )
    # CPU reads the transposed view in place; other backends get a contiguous copy to be safe
    mat2 = rows.T if rows.device.type == "cpu" else rows.T.contiguous()
    return torch.sparse.sampled_addmm(pattern, a.contiguous(), mat2, beta=0.0).values().view(n, w)


class _SparseDecode(torch.autograd.Function):
    """``out = Z @ weight`` for codes ``Z`` given as ``(indices, values)``."""

    @staticmethod
    def forward(ctx, indices, values, weight):  # type: ignore[override]
        ctx.save_for_backward(indices, values, weight)
        return F.embedding_bag(indices, weight, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        indices, values, weight = ctx.saved_tensors
        grad = grad.contiguous()
        g_values = sddmm(indices, grad, weight) if ctx.needs_input_grad[1] else None
        g_weight = spmm_t(indices, values, weight.shape[0], grad) if ctx.needs_input_grad[2] else None
        return None, g_values, g_weight


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_s values[:, s] * weight[indices[:, s]]``: ``[n, w] x [h, d] -> [n, d]``.

    Differentiable in ``values`` and ``weight`` (sparse backward, see the module docstring).
    """
    return _SparseDecode.apply(indices, values, weight)


class _SelectedLinear(torch.autograd.Function):
    """Entries ``pre[i, indices[i, s]]`` of ``pre = x @ weight.T + bias`` (``pre`` computed without grad)."""

    @staticmethod
    def forward(ctx, x, weight, bias, indices, pre):  # type: ignore[override]
        ctx.save_for_backward(x, indices)
        ctx.hidden_dim = weight.shape[0]
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, indices = ctx.saved_tensors
        h = ctx.hidden_dim
        grad = grad.contiguous()
        g_weight = spmm_t(indices, grad, h, x) if ctx.needs_input_grad[1] else None
        g_bias = None
        if ctx.needs_input_grad[2]:
            g_bias = torch.zeros(h, dtype=grad.dtype, device=grad.device).index_add_(
                0, indices.reshape(-1), grad.reshape(-1)
            )
        return None, g_weight, g_bias, None, None


def selected_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, indices: torch.Tensor, pre: torch.Tensor
) -> torch.Tensor:
    """Differentiable ``pre[i, indices[i, s]]`` where ``pre = x @ weight.T + bias`` was computed under no_grad.

    Gradients reach ``weight`` and ``bias`` only through the selected entries (what TopK passes back
    anyway), as a sparse product instead of a dense ``[n, h]^T x [n, d]`` one. ``x`` gets no gradient.

    Args:
        x: ``[n, d]``; weight: ``[h, d]``; bias: ``[h]``; indices: ``[n, w]``; pre: ``[n, h]``.

    Returns:
        ``[n, w]``.
    """
    return _SelectedLinear.apply(x, weight, bias, indices, pre)


def topk_indices(scores: torch.Tensor, K: int, k: int | None = None) -> torch.Tensor:
    """Positions of each row's ``K`` largest scores, the ``k`` largest first and in descending order.

    On CPU (float32) this uses the native radix select (`csr_vdb.native.row_topk`), faster than
    ``torch.topk`` for the K of training. Elsewhere, or without a C compiler, it is ``torch.topk``
    (fully sorted). Both select the same set up to the order of tied values.

    Args:
        scores: ``[n, h]`` (no NaN).
        K: entries per row (``<= h``).
        k: leading slots that must be the ``k`` largest, in descending order (default ``K``).

    Returns:
        ``[n, K]`` int64; slots ``k..K-1`` hold the next ``K-k`` in no particular order.
    """
    k = K if k is None else k
    if scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.shape[0] > 0:
        lib = native.load()
        if lib is not None:
            return native.row_topk(lib, scores, K, k)
    return scores.topk(K, dim=1).indices


def _dense_t(indices: torch.Tensor, values: torch.Tensor, hidden_dim: int) -> torch.Tensor:
    """Codes as a dense ``Z^T`` ``[hidden_dim, n]`` (duplicate indices add up)."""
    n, w = indices.shape
    cols = torch.arange(n, device=indices.device).repeat_interleave(w)
    zt = torch.zeros(hidden_dim, n, dtype=values.dtype, device=values.device)
    return zt.index_put_((indices.reshape(-1), cols), values.reshape(-1), accumulate=True)


class _SparseSimilarity(torch.autograd.Function):
    """``Z1 @ Z2.T`` for two batches of sparse codes."""

    @staticmethod
    def forward(ctx, idx1, v1, idx2, v2, hidden_dim, scale):  # type: ignore[override]
        same = idx1 is idx2 and v1 is v2
        z2t = _dense_t(idx2, v2, hidden_dim)
        ctx.save_for_backward(idx1, v1, idx2, z2t)
        ctx.same = same
        ctx.hidden_dim = hidden_dim
        ctx.scale = scale
        # row i of the result sums the rows of Z2^T at row i's latents: n1 * w1 * n2 work; the
        # scale rides on the [n1, w1] weights instead of a pass over the [n1, n2] result
        w1 = v1 if scale == 1.0 else v1 * scale
        return F.embedding_bag(idx1, z2t, per_sample_weights=w1, mode="sum")

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        idx1, v1, idx2, z2t = ctx.saved_tensors
        grad = grad.contiguous()
        scale = ctx.scale
        g1 = g2 = None
        if ctx.same:
            # Z Z^T: both factors are the same tensor, so one sampled product of (G + G^T) covers both
            g = sddmm(idx1, grad + grad.T, z2t)
            return None, g if scale == 1.0 else g * scale, None, None, None, None
        if ctx.needs_input_grad[1]:
            # d/dv1[i,s] = sum_j G[i,j] Z2[j, idx1[i,s]] = <G[i], Z2^T[idx1[i,s]]>
            g1 = sddmm(idx1, grad, z2t)
            g1 = g1 if scale == 1.0 else g1 * scale
        if ctx.needs_input_grad[3]:
            # d/dv2[j,s] = sum_i G[i,j] Z1[i, idx2[j,s]] = <G^T[j], Z1^T[idx2[j,s]]>
            z1t = _dense_t(idx1, v1 if scale == 1.0 else v1 * scale, ctx.hidden_dim)
            g2 = sddmm(idx2, grad.T, z1t)
        return None, g1, None, g2, None, None


def sparse_similarity(
    idx1: torch.Tensor,
    v1: torch.Tensor,
    idx2: torch.Tensor,
    v2: torch.Tensor,
    hidden_dim: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale`` x dot products of two batches of sparse codes: ``[n1, w1], [n2, w2] -> [n1, n2]``.

    Differentiable in the values. Pass the same ``(indices, values)`` objects twice for ``Z Z^T``:
    the backward then takes one sampled product instead of two.
    """
    return _SparseSimilarity.apply(idx1, v1, idx2, v2, hidden_dim, float(scale))
