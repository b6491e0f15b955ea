"""train_encoder and the embedding sources: learning, dead-latent revival, annealing, early stopping, streaming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from csr_vdb.errors import ConfigError
from csr_vdb.model import REPORT_FILE, CSREncoder
from csr_vdb.sources import ArraySource
from csr_vdb.training import k_schedule, train_encoder
from tests.helpers import TINY, clustered, fast_train

torch.set_num_threads(1)

def one_nn_accuracy(train_x, train_y, test_x, test_y) -> float:
    sims = test_x @ train_x.T
    return float((train_y[sims.argmax(axis=1)] == test_y).mean())


def test_loss_decreases_and_csr_beats_pca_at_equal_active_dims():
    x, y = clustered(1200, dim=8, clusters=8, noise=0.25, seed=1)
    tr, te = slice(0, 1000), slice(1000, 1200)
    res = train_encoder(ArraySource(x[tr]), CSRConfig(**TINY), fast_train(epochs=15, patience=None))
    rep = res.report
    for term in ("loss", "reconstruction_loss_k"):
        curve = rep["curves"][term]
        assert np.mean(curve[-5:]) < 0.85 * np.mean(curve[:3]), term
    assert rep["final_fvu"] < 0.5
    codes_tr = res.encoder.encode(x[tr]).to_dense()
    codes_te = res.encoder.encode(x[te]).to_dense()
    csr = one_nn_accuracy(codes_tr, y[tr], codes_te, y[te])
    # PCA keeping k=2 dimensions: the same number of active values per vector
    mean = x[tr].mean(0)
    _, _, vt = np.linalg.svd(x[tr] - mean, full_matrices=False)
    p_tr, p_te = (x[tr] - mean) @ vt[:2].T, (x[te] - mean) @ vt[:2].T
    pca = one_nn_accuracy(p_tr, y[tr], p_te, y[te])
    assert csr > pca + 0.05, (csr, pca)


def test_cosine_lr_decay_follows_the_planned_steps():
    x, _ = clustered(400, 8)
    kw = dict(epochs=3, log_every=1, patience=None, val_fraction=0.0)
    const = train_encoder(x, CSRConfig(**TINY), fast_train(**kw)).report["curves"]
    assert set(const["lr"]) == {fast_train().lr}
    rep = train_encoder(x, CSRConfig(**TINY), fast_train(**kw, lr_decay="cosine")).report
    lr, steps = rep["curves"]["lr"], rep["curves"]["step"]
    total = 3 * math.ceil(400 / 128)
    assert rep["steps"] == total == steps[-1]
    assert lr == sorted(lr, reverse=True) and lr[0] == fast_train().lr and lr[-1] < 0.05 * fast_train().lr
    # step s (1-based) runs at lr * (1 + cos(pi * (s - 1) / total)) / 2
    for s, v in zip(steps, lr):
        assert v == pytest.approx(fast_train().lr * 0.5 * (1 + math.cos(math.pi * (s - 1) / total)), rel=1e-6)


def test_decoder_unit_norm_after_training_and_report(tmp_path):
    x, _ = clustered(400, 8)
    seen = []
    res = train_encoder(
        x, CSRConfig(**TINY), fast_train(epochs=2), progress=lambda s, t, m: seen.append((s, t, dict(m)))
    )
    enc = res.encoder
    assert torch.allclose(enc.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    assert not torch.equal(enc.W_enc, enc.W_dec)  # untied after training
    # b_pre starts at the data mean, not zero
    assert enc.b_pre.norm() > 0.05
    rep = res.report
    for key in ("curves", "validation", "epochs", "final_fvu", "final_dead_fraction", "data_fingerprint", "steps"):
        assert key in rep
    terms = ("reconstruction_loss_k", "reconstruction_loss_4k", "auxiliary_loss", "contrastive_loss", "dead_fraction")
    for term in terms:
        assert len(rep["curves"][term]) == len(rep["curves"]["step"]) > 0
    assert all(e["rows_per_s"] > 0 for e in rep["epochs"])
    assert rep["val_rows"] > 0 and rep["validation"]
    assert enc.config.data_fingerprint == rep["data_fingerprint"]
    assert seen and seen[-1][1] == rep["total_steps_planned"]
    assert {"loss", "fvu", "k", "dead_fraction"} <= set(seen[0][2])
    res.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / REPORT_FILE).read_text())
    assert saved["steps"] == rep["steps"]
    back = CSREncoder.load(tmp_path / "m")
    assert back.config.data_fingerprint == rep["data_fingerprint"]
    assert back.encode(x).equals(enc.encode(x), atol=1e-6)


def test_same_seed_same_model():
    x, _ = clustered(300, 8)
    a = train_encoder(x, CSRConfig(**TINY), fast_train(epochs=1)).encoder
    b = train_encoder(x, CSRConfig(**TINY), fast_train(epochs=1)).encoder
    assert torch.allclose(a.W_enc, b.W_enc, rtol=0, atol=1e-6) and torch.allclose(a.W_dec, b.W_dec, rtol=0, atol=1e-6)


def test_dead_latents_are_revived():
    x, _ = clustered(2000, 8, clusters=32, seed=3)
    cfg = CSRConfig(input_dim=8, hidden_dim=32, k=2, k_aux=16, dead_threshold=256)
    # force latents 0..23 dead: shrunken encoder rows never win TopK at init, but their small positive
    # pre-activations still carry the aux gradient (an all-negative latent gets none through ReLU)
    orig_init = CSREncoder.__init__

    def init_with_dead(self, config, device=None):
        orig_init(self, config, device)
        with torch.no_grad():
            self.W_enc[:24] *= 0.1

    try:
        CSREncoder.__init__ = init_with_dead
        train = fast_train(epochs=10, lr=3e-3, gamma=0.0, positives="none", beta_aux=1.0, val_fraction=0.0)
        res = train_encoder(x, cfg, train)
    finally:
        CSREncoder.__init__ = orig_init
    curves = res.report["curves"]
    assert max(curves["dead_fraction"]) >= 0.5  # they were dead ...
    assert max(curves["auxiliary_loss"]) > 0  # ... the aux loss saw them ...
    codes = res.encoder.encode(x)
    fired = set(np.unique(codes.indices[codes.values > 0]).tolist())
    revived = fired & set(range(24))
    assert len(revived) >= 6, revived  # ... and they fire again
    assert curves["dead_fraction"][-1] < max(curves["dead_fraction"])


def test_dead_latents_counted_in_rows():
    from csr_vdb.losses import update_dead_counts_

    enc = CSREncoder(CSRConfig(**TINY, dead_threshold=100), device="cpu")
    idx = torch.tensor([[0, 1]] * 60)
    vals = torch.tensor([[1.0, 0.0]] * 60)  # latent 1 selected but not positive: not fired
    update_dead_counts_(enc, idx, vals)
    update_dead_counts_(enc, idx, vals)
    assert enc.rows_since_fired[0] == 0 and enc.rows_since_fired[1] == 120
    assert enc.dead_mask()[1] and not enc.dead_mask()[0]


def test_k_annealing_schedule():
    assert k_schedule(0, 100, k=8, k_start=None) == 8
    assert k_schedule(0, 100, k=8, k_start=64) == 64
    assert k_schedule(35, 100, k=8, k_start=64) == 36  # p = 0.5 -> 64*0.5 + 8*0.5
    assert k_schedule(70, 100, k=8, k_start=64) == 8
    assert k_schedule(99, 100, k=8, k_start=64) == 8
    assert k_schedule(10, None, k=8, k_start=64) == 64  # unknown total: stay at k0
    x, _ = clustered(600, 8)
    rep = train_encoder(x, CSRConfig(**TINY), fast_train(epochs=4, k_start=8)).report
    ks = rep["curves"]["k"]
    assert ks[0] == 8 and ks[-1] == 2 and all(a >= b for a, b in zip(ks, ks[1:]))
    with pytest.raises(ConfigError, match="k_start"):
        train_encoder(x, CSRConfig(**TINY), fast_train(k_start=16))


@pytest.mark.parametrize("mode", ["neighbors", "noise", "labels", "pairs", "none"])
def test_each_positives_mode_trains(mode):
    x, y = clustered(500, 8, seed=2)
    kwargs = {}
    if mode == "pairs":
        rng = np.random.default_rng(0)
        q = x[:200] + 0.05 * rng.normal(size=(200, 8)).astype(np.float32)
        kwargs["pairs"] = (q, x[:200])
    src = ArraySource(x, y) if mode == "labels" else ArraySource(x)
    res = train_encoder(src, CSRConfig(**TINY, k_query=3), fast_train(epochs=2, positives=mode, neighbor_pool=256), **kwargs)
    cl = res.report["curves"]["contrastive_loss"]
    if mode == "none":
        assert all(v == 0 for v in cl)
    else:
        assert all(np.isfinite(cl)) and max(cl) > 0
    assert res.encoder.encode(x).nnz().min() >= 1


def test_positives_modes_need_their_data():
    x, _ = clustered(300, 8)
    with pytest.raises(ConfigError, match="pairs"):
        train_encoder(x, CSRConfig(**TINY), fast_train(positives="pairs"))
    with pytest.raises(ConfigError, match="labels"):
        train_encoder(x, CSRConfig(**TINY), fast_train(positives="labels"))
    with pytest.raises(ConfigError, match="dimension"):
        train_encoder(np.ones((10, 4), np.float32), CSRConfig(**TINY), fast_train())


def test_early_stopping_stops_and_restores_best():
    x, _ = clustered(600, 8)
    # a learning rate this high makes validation loss bounce: patience 1 must cut training short
    res = train_encoder(x, CSRConfig(**TINY), fast_train(epochs=40, lr=0.5, patience=1, eval_every=2))
    rep = res.report
    assert rep["stopped_early"]
    assert rep["steps"] < rep["total_steps_planned"]
    best = min(e["val_loss"] for e in rep["validation"])
    assert rep["best_val_loss"] == pytest.approx(best)


def test_max_steps_and_val_source():
    x, _ = clustered(600, 8)
    v, _ = clustered(100, 8, seed=9)
    rep = train_encoder(x, CSRConfig(**TINY), fast_train(max_steps=5), val_source=v).report
    assert rep["steps"] == 5 and rep["val_rows"] is None and rep["validation"]
    # tensors are accepted as sources too
    rep = train_encoder(
        torch.from_numpy(x), CSRConfig(**TINY), fast_train(max_steps=2), val_source=torch.from_numpy(v)
    ).report
    assert rep["steps"] == 2 and rep["n_rows"] == 600
