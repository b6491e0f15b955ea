"""CSR training loss (arXiv 2503.01776): L(k) + L(4k)/8 + beta * L_aux + gamma * L_contrastive.

Each term is a function here; `ContrastiveLoss` builds the contrastive term for the configured
positives and `csr_loss` combines the terms for one batch. Reconstruction terms are *normalized*
MSEs (fraction of variance unexplained), so their scale does not depend on the embedding model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from csr_vdb.config import TrainConfig
from csr_vdb.errors import ConfigError
from csr_vdb.kernels import selected_linear, sparse_similarity, topk_indices
from csr_vdb.model import CSREncoder

TERM_NAMES = ("loss", "reconstruction_loss_k", "reconstruction_loss_4k", "auxiliary_loss", "contrastive_loss")
"""Names of `LossTerms`' scalars, in `LossTerms.stacked` order (``loss`` is the weighted total)."""

Codes = tuple[torch.Tensor, torch.Tensor]
"""Sparse codes of a batch: ``(indices [n, w], values [n, w])``."""


def normalized_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: ``sum ||x_hat - x||^2 / sum ||x - mean(x)||^2`` over the batch.

    Args:
        x_hat: ``[n, d]`` reconstruction.
        x: ``[n, d]`` target.

    Returns:
        Scalar tensor (0 = perfect, 1 = as good as predicting the batch mean).
    """
    denom = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return (x_hat - x).pow(2).sum() / denom


def auxiliary_loss(
    model: CSREncoder,
    x: torch.Tensor,
    bias: torch.Tensor,
    pre: torch.Tensor,
    residual: torch.Tensor,
    k_aux: int,
) -> torch.Tensor:
    """AuxK loss: reconstruct the residual ``e = x - x_hat`` from the top ``k_aux`` *dead* latents.

    ``L_aux = ||e - W_dec^T TopK_aux(ReLU(pre[dead]))||^2 / ||e||^2`` (arXiv 2503.01776, after Gao et al.
    2024). It gives dead latents a gradient toward the error the live ones leave, which revives them.

    Args:
        model: the encoder (its ``rows_since_fired`` defines the dead latents).
        x: ``[n, input_dim]`` preprocessed batch.
        bias: ``model.encoder_bias()`` (with grad).
        pre: ``[n, hidden_dim]`` pre-activations computed without grad.
        residual: ``[n, input_dim]`` detached residual ``x - x_hat_k``.
        k_aux: latents to use (clamped to the number of dead latents).

    Returns:
        Scalar tensor; exactly 0 (no graph) when no latent is dead.
    """
    dead = model.dead_mask().nonzero().squeeze(1)
    if dead.numel() == 0:
        return pre.new_zeros(())
    kk = min(int(k_aux), dead.numel())
    with torch.no_grad():
        idx = dead[pre.index_select(1, dead).topk(kk, dim=1).indices]
    vals = F.relu(selected_linear(x, model.W_enc, bias, idx, pre))
    e_hat = model.decode_sparse(idx, vals, bias=False)
    # L_aux = ||e - e_hat||^2 / ||e||^2 ; e is detached so only the dead latents learn from it
    return (e_hat - residual).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-12)


def dense_codes(indices: torch.Tensor, values: torch.Tensor, hidden_dim: int) -> torch.Tensor:
    """Scatter ``[n, w]`` (indices, values) into dense-layout codes ``[n, hidden_dim]`` (differentiable)."""
    return torch.zeros(indices.shape[0], hidden_dim, dtype=values.dtype, device=values.device).scatter(
        1, indices, values
    )


def code_similarity(
    idx1: torch.Tensor,
    v1: torch.Tensor,
    idx2: torch.Tensor,
    v2: torch.Tensor,
    hidden_dim: int,
    cosine: bool,
    scale: float = 1.0,
) -> torch.Tensor:
    """Pairwise similarity of two batches of sparse codes ``[n1, w1], [n2, w2] -> [n1, n2]``: dot or cosine.

    Computed sparsely (n1 * w1 * n2 work, `csr_vdb.kernels.sparse_similarity`), never as a dense
    ``[n, hidden_dim]`` product; ``scale`` multiplies the result (e.g. ``1 / temperature``).
    """
    same = idx1 is idx2 and v1 is v2
    if cosine:
        v1 = F.normalize(v1, dim=1, eps=1e-8)
        # one batch against itself stays one tensor, so the kernel takes its cheaper Z Z^T branch
        v2 = v1 if same else F.normalize(v2, dim=1, eps=1e-8)
    return sparse_similarity(idx1, v1, idx2, v2, hidden_dim, scale)


def info_nce(logits: torch.Tensor, targets: torch.Tensor, self_mask: bool = False) -> torch.Tensor:
    """InfoNCE: ``-log exp(s(z_i, z_i+)/t) / sum_j exp(s(z_i, z_j)/t)``, mean over anchors.

    Args:
        logits: ``[n, m]`` similarities already divided by the temperature.
        targets: ``[n]`` column of each anchor's positive.
        self_mask: exclude column i from row i (anchors are also candidates).
    """
    if self_mask:
        eye = torch.eye(logits.shape[0], logits.shape[1], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    return F.cross_entropy(logits, targets)


def mask_self_(logits: torch.Tensor) -> torch.Tensor:
    """Set ``logits[i, i]`` to -inf in place (anchors that are also candidates) and return ``logits``.

    Same effect as `info_nce`'s ``self_mask`` without a mask and a copy of the ``[n, m]`` matrix;
    for a freshly computed similarity matrix that nothing else holds.
    """
    logits.diagonal().fill_(float("-inf"))
    return logits


def supcon_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, used by CSRv2) on in-batch similarities.

    ``L = -mean_i 1/|P(i)| sum_{p in P(i)} log exp(s_ip/t) / sum_{j != i} exp(s_ij/t)`` where P(i) are
    the other rows with row i's label; anchors without a positive are skipped.

    Args:
        logits: ``[n, n]`` code similarities / temperature.
        labels: ``[n]`` int labels.
    """
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(dim=1)
    has = count > 0
    if not has.any():
        return logits.new_zeros(())
    per_anchor = log_prob.masked_fill(~pos, 0.0).sum(dim=1)[has] / count[has]
    return -per_anchor.mean()


@torch.no_grad()
def nearest_neighbors(x: torch.Tensor, pool: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's dense nearest neighbour (dot product) among the other rows and an optional pool.

    Args:
        x: ``[n, d]`` batch.
        pool: ``[p, d]`` extra candidates (recent rows) or None.

    Returns:
        ``[n]`` int64 column in ``cat([x, pool])`` (never the row itself).
    """
    cand = x if pool is None or pool.shape[0] == 0 else torch.cat([x, pool])
    if x.device.type == "cpu" and x.dtype == torch.float32 and _fast_bf16_cpu():
        # bfloat16 products: much faster on CPUs with bf16 instructions (AVX512-BF16/AMX); the
        # positive only has to be a near neighbour, and a near tie may go either way
        sims = (x.bfloat16() @ cand.bfloat16().T).float()  # argmax over float32 is faster than over bf16
    else:
        sims = x @ cand.T
    sims.fill_diagonal_(float("-inf"))
    return sims.argmax(dim=1)


@functools.cache
def _fast_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ContrastiveLoss:
    """The contrastive term of one batch for ``TrainConfig.positives`` (InfoNCE / SupCon on the codes).

    Positives: ``"neighbors"``, each row's dense nearest neighbour in the batch or in a pool of the
    ``neighbor_pool`` most recent rows; ``"noise"``, a noisy, dropped-out view of the row;
    ``"labels"``, the rows sharing its label (SupCon); ``"pairs"``, the document of a (query,
    document) pair against the batch's other documents; ``"none"`` (or ``gamma == 0``) gives 0.
    Similarities are code dot products or cosines divided by ``temperature``.

    Args:
        model: the encoder being trained (its TopK codes of other rows are differentiable).
        train: the training settings.
        generator: CPU generator of the noise views.
    """

    def __init__(self, model: CSREncoder, train: TrainConfig, generator: torch.Generator) -> None:
        self.model = model
        self.train = train
        self.mode = train.positives if train.gamma > 0 else "none"
        self.cosine = train.similarity == "cosine"
        self.gen = generator
        self.pool: torch.Tensor | None = None

    def codes(self, x: torch.Tensor, k: int) -> Codes:
        """Top-k codes ``(indices [n, k], values [n, k])`` of preprocessed rows (differentiable)."""
        return self.model.topk_codes(x, k)

    def sim(self, a: Codes, b: Codes) -> torch.Tensor:
        """Code similarities / temperature, ``[n_a, n_b]``."""
        h = self.model.config.hidden_dim
        return code_similarity(a[0], a[1], b[0], b[1], h, self.cosine, scale=1.0 / self.train.temperature)

    def __call__(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        vals: torch.Tensor,
        labels: torch.Tensor | None,
        k: int,
        kq: int,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
        update_pool: bool = True,
    ) -> torch.Tensor:
        """The term for a preprocessed batch ``x [n, input_dim]`` and its top-k codes ``(idx, vals)``.

        Args:
            labels: ``[n]`` labels (``"labels"`` mode).
            k: document k (codes of positives and pair documents).
            kq: query k (pair queries).
            pairs: this step's ``(queries [m, input_dim], docs [m, input_dim])`` (``"pairs"`` mode).
            update_pool: add ``x`` to the neighbour pool and mine it; False (validation) mines
                inside the batch only, so the result does not depend on training state.

        Raises:
            ConfigError: ``"labels"`` mode without labels.
        """
        if self.mode == "none" or (self.mode == "pairs" and pairs is None):
            return x.new_zeros(())
        if self.mode == "pairs":
            return self.pairs_loss(pairs, k, kq)
        z = (idx, vals)
        if self.mode == "labels":
            if labels is None:
                raise ConfigError("positives='labels' needs a source with labels, e.g. ArraySource(x, labels)")
            return supcon_loss(self.sim(z, z), labels)
        if self.mode == "noise":
            return self._noise_loss(x, z, k)
        return self._neighbors_loss(x, z, k, update_pool)

    def pairs_loss(self, pairs: tuple[torch.Tensor, torch.Tensor], k: int, kq: int) -> torch.Tensor:
        """In-batch negatives: query i's positive is document i, every other document a negative."""
        q, d = pairs
        logits = self.sim(self.codes(q, kq), self.codes(d, k))
        return info_nce(logits, torch.arange(q.shape[0], device=q.device))

    def _noise_loss(self, x: torch.Tensor, z: Codes, k: int) -> torch.Tensor:
        n, dim = x.shape
        noise = torch.randn(n, dim, generator=self.gen, device="cpu").to(x.device)
        keep = (torch.rand(n, dim, generator=self.gen, device="cpu") > 0.1).to(x.device)
        view = self.model.preprocess((x + noise * (self.train.noise_std / math.sqrt(dim))) * keep / 0.9)
        return info_nce(self.sim(z, self.codes(view, k)), torch.arange(n, device=x.device))

    def _neighbors_loss(self, x: torch.Tensor, z: Codes, k: int, update_pool: bool) -> torch.Tensor:
        n = x.shape[0]
        pool = self.pool if self.train.neighbor_pool > 0 and update_pool else None
        nn_idx = nearest_neighbors(x, pool)
        cand = z
        targets = nn_idx
        if pool is not None and pool.shape[0]:
            from_pool = nn_idx >= n
            if from_pool.any():
                # codes only for the pool rows that are someone's positive
                uniq, inv = torch.unique(nn_idx[from_pool] - n, return_inverse=True)
                pi, pv = self.codes(pool[uniq], k)
                cand = (torch.cat([z[0], pi]), torch.cat([z[1], pv]))
                targets = nn_idx.clone()
                targets[from_pool] = n + inv
        if update_pool and self.train.neighbor_pool > 0:
            fresh = x.detach()
            self.pool = fresh if self.pool is None else torch.cat([fresh, self.pool])[: self.train.neighbor_pool]
        return info_nce(mask_self_(self.sim(z, cand)), targets)


@dataclass
class LossTerms:
    """One batch's loss: the weighted total plus each (unweighted) term, and the top-k codes."""

    total: torch.Tensor
    reconstruction_loss_k: torch.Tensor
    reconstruction_loss_4k: torch.Tensor
    auxiliary_loss: torch.Tensor
    contrastive_loss: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """The scalar terms, detached, as one ``[5]`` tensor in `TERM_NAMES` order (no device sync)."""
        return torch.stack(
            [
                self.total.detach(),
                self.reconstruction_loss_k.detach(),
                self.reconstruction_loss_4k.detach(),
                self.auxiliary_loss.detach(),
                self.contrastive_loss.detach(),
            ]
        )

    def as_floats(self) -> dict[str, float]:
        """The scalar terms as Python floats (one device sync)."""
        return dict(zip(TERM_NAMES, self.stacked().tolist()))


def csr_loss(
    model: CSREncoder,
    x: torch.Tensor,
    k: int,
    k_aux: int,
    contrastive: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    beta_aux: float = 1 / 32,
    gamma: float = 1.0,
) -> LossTerms:
    """The CSR loss of a preprocessed batch ``x [n, input_dim]``.

    Args:
        model: the encoder.
        x: the batch.
        k: active latents (the k of this step, with annealing).
        k_aux: dead latents of the auxiliary loss.
        contrastive: the contrastive term given the batch's top-k codes ``(indices, values)``.
        beta_aux: weight of the auxiliary loss.
        gamma: weight of the contrastive term.
    """
    recon_k, recon_4k, aux, idx, vals = reconstruction_terms(model, x, k, k_aux)
    cl = contrastive(idx, vals)
    # total = L(k) + L(4k)/8 + beta * L_aux + gamma * L_contrastive
    total = recon_k + recon_4k / 8 + beta_aux * aux + gamma * cl
    return LossTerms(total, recon_k, recon_4k, aux, cl, idx, vals)


def reconstruction_terms(
    model: CSREncoder, x: torch.Tensor, k: int, k_aux: int, with_aux: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """L(k), L(4k) and L_aux for a preprocessed batch ``x [n, input_dim]``.

    The 4k pass uses the FULL pre-activations (sentence-transformers' CSRLoss uses the dead-masked
    ones, which is a bug). One ``topk(4k)`` serves both passes: its first k slots are the top k, and
    ``x_hat_4k = x_hat_k + decode(slots k..4k)`` reuses the k-sparse reconstruction. The dense
    pre-activations are computed once without grad; gradients flow through the selected entries
    only (`csr_vdb.kernels`), which is all TopK passes back.

    Returns:
        ``(recon_k, recon_4k, aux, indices_k [n, k], values_k [n, k])``.
    """
    h = model.config.hidden_dim
    k4 = min(4 * k, h)
    bias = model.encoder_bias()
    with torch.no_grad():
        pre = torch.addmm(bias, x, model.W_enc.T)
        idx4 = topk_indices(pre, k4, k)
    vals4 = F.relu(selected_linear(x, model.W_enc, bias, idx4, pre))
    idx_k, vals_k = idx4[:, :k], vals4[:, :k]
    x_hat_k = model.decode_sparse(idx_k, vals_k)
    # L(k) = ||x - x_hat_k||^2 / ||x - mean(x)||^2
    recon_k = normalized_mse(x_hat_k, x)
    if k4 > k:
        # L(4k) = ||x - x_hat_4k||^2 / ||x - mean(x)||^2  (keeps the dictionary useful beyond k)
        x_hat_4k = x_hat_k + model.decode_sparse(idx4[:, k:], vals4[:, k:], bias=False)
        recon_4k = normalized_mse(x_hat_4k, x)
    else:
        recon_4k = recon_k.detach()
    aux = (
        auxiliary_loss(model, x, bias, pre, (x - x_hat_k).detach(), k_aux) if with_aux else pre.new_zeros(())
    )
    return recon_k, recon_4k, aux, idx_k, vals_k


@torch.no_grad()
def update_dead_counts_(model: CSREncoder, indices: torch.Tensor, values: torch.Tensor) -> None:
    """Count ROWS since each latent last fired (a positive top-k activation) — not forward calls."""
    fired = torch.zeros(model.config.hidden_dim, dtype=torch.bool, device=indices.device)
    fired[indices[values > 0]] = True
    model.rows_since_fired.add_(indices.shape[0])
    model.rows_since_fired.masked_fill_(fired, 0)
