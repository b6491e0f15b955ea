"""Document codes by non-negative orthogonal matching pursuit over a trained decoder (``doc_codes="pursuit"``).

The TopK encoder picks a document's k latents in one shot and sets their values to its
pre-activations. The decoder atoms can reconstruct the same embedding better with k latents chosen
greedily and fitted jointly: each step adds the atom most correlated with what is still
unexplained, then refits all chosen coefficients by non-negative least squares. A better k-sparse
reconstruction is what decoder-projection queries score against, so retrieval improves with it
(bench/README.md, quality: ``csr`` against ``csr_topk``).

Everything after one dense product works on the dictionary's Gram matrix ``W W^T``:
correlations of the residual are ``c0 - G[:, S] z`` and the refit needs ``G[S, S]`` only, so a
step costs ``O(C * |S|)`` per document instead of ``O(C * d)``. Candidates are each document's
``C`` atoms most correlated with it. Batched over documents in torch; on CPU the per-document
loop runs in C (`csr_vdb.native.pursuit`, much faster) when a compiler is available.
"""

from __future__ import annotations

import torch

from csr_vdb import native
from csr_vdb.kernels import topk_indices

#: Coordinate-descent sweeps over the chosen coefficients after each pursuit step, and at the end.
STEP_SWEEPS = 2
FINAL_SWEEPS = 10


def _cd_sweeps(z: torch.Tensor, g: torch.Tensor, c: torch.Tensor, gss: torch.Tensor, t: int, sweeps: int) -> None:
    """Non-negative least squares by coordinate descent on the first ``t`` coefficients, in place.

    Minimises ``||target - sum_s z_s w_s||^2`` over ``z >= 0`` given ``c = <w_s, target>``, the Gram
    block ``gss [n, k, k]`` and ``g = gss z`` (kept up to date).
    """
    for _ in range(sweeps):
        for a in range(t):
            old = z[:, a]
            new = (old + (c[:, a] - g[:, a]) / gss[:, a, a].clamp_min(1e-12)).clamp_min_(0.0)
            delta = new - old
            g[:, :t].addcmul_(gss[:, :t, a], delta.unsqueeze(1))
            z[:, a] = new


@torch.no_grad()
def pursuit_codes(
    target: torch.Tensor,
    atoms: torch.Tensor,
    gram: torch.Tensor,
    k: int,
    candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-sparse non-negative codes of ``target`` over unit-norm ``atoms`` (greedy pursuit + NNLS refits).

    Args:
        target: ``[n, d]`` vectors to reconstruct (the preprocessed input minus ``b_pre``).
        atoms: ``[h, d]`` dictionary rows (the decoder, unit norm).
        gram: ``[h, h]`` ``atoms @ atoms.T``.
        k: atoms per code.
        candidates: atoms considered per row (the ``candidates`` most correlated with it; clamped to
            ``k..h``; `CSREncoder.encode` passes ``CSRConfig.pursuit_candidates``).

    Returns:
        ``(indices [n, k] int64, values [n, k] >= 0)``; a row whose residual no atom can reduce
        further keeps value-0 slots at the end (padding).
    """
    n = target.shape[0]
    h = atoms.shape[0]
    dev = target.device
    c_all = target @ atoms.T  # [n, h] correlations of the target with every atom
    cand_n = max(k, min(int(candidates), h))
    cand = topk_indices(c_all, cand_n) if cand_n < h else torch.arange(h, device=dev).expand(n, h)
    c0 = c_all.gather(1, cand)  # [n, C]
    lib = native.load() if dev.type == "cpu" else None
    if lib is not None and n:
        return native.pursuit(lib, c0, cand, gram, k, STEP_SWEEPS, FINAL_SWEEPS)
    rows = torch.arange(n, device=dev)
    gcs = torch.zeros(n, cand_n, k, device=dev, dtype=target.dtype)  # gram[cand_i, chosen_s]
    gss = torch.zeros(n, k, k, device=dev, dtype=target.dtype)  # gram[chosen_a, chosen_b]
    z = torch.zeros(n, k, device=dev, dtype=target.dtype)
    g = torch.zeros(n, k, device=dev, dtype=target.dtype)  # gss @ z
    cs = torch.zeros(n, k, device=dev, dtype=target.dtype)  # <atom_s, target>
    pos = torch.zeros(n, k, device=dev, dtype=torch.long)  # chosen candidate positions
    taken = torch.zeros(n, cand_n, device=dev, dtype=torch.bool)
    for t in range(k):
        # residual correlations: c0 - gram[cand, chosen] @ z
        score = c0 - torch.bmm(gcs[:, :, :t], z[:, :t].unsqueeze(2)).squeeze(2) if t else c0.clone()
        score.masked_fill_(taken, float("-inf"))
        best, p = score.max(dim=1)
        taken[rows, p] = True
        pos[:, t] = p
        atom = cand.gather(1, p.unsqueeze(1)).squeeze(1)
        gcs[:, :, t] = gram[atom.unsqueeze(1), cand]  # gram[cand_i, new atom]
        col = gcs[:, :, t].gather(1, pos[:, : t + 1])  # gram[chosen_a, new atom], a <= t
        gss[:, : t + 1, t] = col
        gss[:, t, : t + 1] = col
        cs[:, t] = c0[rows, p]
        z[:, t] = best.clamp_min(0.0)
        g[:, : t + 1] = torch.bmm(gss[:, : t + 1, : t + 1], z[:, : t + 1].unsqueeze(2)).squeeze(2)
        _cd_sweeps(z, g, cs, gss, t + 1, STEP_SWEEPS)
    _cd_sweeps(z, g, cs, gss, k, FINAL_SWEEPS)
    idx = cand.gather(1, pos)
    return idx, z
