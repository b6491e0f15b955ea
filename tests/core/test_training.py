"""train_encoder and the embedding sources: learning, dead-latent revival, annealing, early stopping, streaming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.model import REPORT_FILE, CSREncoder
from csr_vdb.sources import ArraySource, EmbeddingSource, IteratorSource, NpySource, holdout_mask
from csr_vdb.training import k_schedule, train_encoder
from tests.helpers import clustered

torch.set_num_threads(1)

TINY = dict(input_dim=8, hidden_dim=32, k=2)


def fast(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=128, device="cpu", seed=0, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def one_nn_accuracy(train_x, train_y, test_x, test_y) -> float:
    sims = test_x @ train_x.T
    return float((train_y[sims.argmax(axis=1)] == test_y).mean())


def test_loss_decreases_and_csr_beats_pca_at_equal_active_dims():
    x, y = clustered(1200, dim=8, clusters=8, noise=0.25, seed=1)
    tr, te = slice(0, 1000), slice(1000, 1200)
    res = train_encoder(ArraySource(x[tr]), CSRConfig(**TINY), fast(epochs=15, patience=None))
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
    const = train_encoder(x, CSRConfig(**TINY), fast(**kw)).report["curves"]
    assert set(const["lr"]) == {fast().lr}
    rep = train_encoder(x, CSRConfig(**TINY), fast(**kw, lr_decay="cosine")).report
    lr, steps = rep["curves"]["lr"], rep["curves"]["step"]
    total = 3 * math.ceil(400 / 128)
    assert rep["steps"] == total == steps[-1]
    assert lr == sorted(lr, reverse=True) and lr[0] == fast().lr and lr[-1] < 0.05 * fast().lr
    # step s (1-based) runs at lr * (1 + cos(pi * (s - 1) / total)) / 2
    for s, v in zip(steps, lr):
        assert v == pytest.approx(fast().lr * 0.5 * (1 + math.cos(math.pi * (s - 1) / total)), rel=1e-6)


def test_decoder_unit_norm_after_training_and_report(tmp_path):
    x, _ = clustered(400, 8)
    seen = []
    res = train_encoder(
        x, CSRConfig(**TINY), fast(epochs=2), progress=lambda s, t, m: seen.append((s, t, dict(m)))
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
    assert back.encode(x).equals(enc.encode(x))


def test_same_seed_same_model():
    x, _ = clustered(300, 8)
    a = train_encoder(x, CSRConfig(**TINY), fast(epochs=1)).encoder
    b = train_encoder(x, CSRConfig(**TINY), fast(epochs=1)).encoder
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)


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
        train = fast(epochs=10, lr=3e-3, gamma=0.0, positives="none", beta_aux=1.0, val_fraction=0.0)
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
    rep = train_encoder(x, CSRConfig(**TINY), fast(epochs=4, k_start=8)).report
    ks = rep["curves"]["k"]
    assert ks[0] == 8 and ks[-1] == 2 and all(a >= b for a, b in zip(ks, ks[1:]))
    with pytest.raises(ConfigError, match="k_start"):
        train_encoder(x, CSRConfig(**TINY), fast(k_start=16))


@pytest.mark.parametrize("mode", ["neighbors", "noise", "labels", "pairs", "none"])
def test_each_positives_mode_trains(mode):
    x, y = clustered(500, 8, seed=2)
    kwargs = {}
    if mode == "pairs":
        rng = np.random.default_rng(0)
        q = x[:200] + 0.05 * rng.normal(size=(200, 8)).astype(np.float32)
        kwargs["pairs"] = (q, x[:200])
    src = ArraySource(x, y) if mode == "labels" else ArraySource(x)
    res = train_encoder(src, CSRConfig(**TINY, k_query=3), fast(epochs=2, positives=mode, neighbor_pool=256), **kwargs)
    cl = res.report["curves"]["contrastive_loss"]
    if mode == "none":
        assert all(v == 0 for v in cl)
    else:
        assert all(np.isfinite(cl)) and max(cl) > 0
    assert res.encoder.encode(x).nnz().min() >= 1


def test_positives_modes_need_their_data():
    x, _ = clustered(300, 8)
    with pytest.raises(ConfigError, match="pairs"):
        train_encoder(x, CSRConfig(**TINY), fast(positives="pairs"))
    with pytest.raises(ConfigError, match="labels"):
        train_encoder(x, CSRConfig(**TINY), fast(positives="labels"))
    with pytest.raises(ConfigError, match="dimension"):
        train_encoder(np.ones((10, 4), np.float32), CSRConfig(**TINY), fast())


def test_early_stopping_stops_and_restores_best():
    x, _ = clustered(600, 8)
    # a learning rate this high makes validation loss bounce: patience 1 must cut training short
    res = train_encoder(x, CSRConfig(**TINY), fast(epochs=40, lr=0.5, patience=1, eval_every=2))
    rep = res.report
    assert rep["stopped_early"]
    assert rep["steps"] < rep["total_steps_planned"]
    best = min(e["val_loss"] for e in rep["validation"])
    assert rep["best_val_loss"] == pytest.approx(best)


def test_max_steps_and_val_source():
    x, _ = clustered(600, 8)
    v, _ = clustered(100, 8, seed=9)
    rep = train_encoder(x, CSRConfig(**TINY), fast(max_steps=5), val_source=v).report
    assert rep["steps"] == 5 and rep["val_rows"] is None and rep["validation"]
    # tensors are accepted as sources too
    rep = train_encoder(
        torch.from_numpy(x), CSRConfig(**TINY), fast(max_steps=2), val_source=torch.from_numpy(v)
    ).report
    assert rep["steps"] == 2 and rep["n_rows"] == 600


def test_bad_training_rows_are_named():
    x, _ = clustered(50, 8)
    x[7] = np.nan
    x[9] = 0
    with pytest.raises(DataError) as err:
        ArraySource(x)
    assert err.value.rows == [7]
    with pytest.raises(DataError, match="9"):
        ArraySource(np.where(np.isnan(x), 1.0, x))


def test_holdout_is_by_content_not_position():
    x, _ = clustered(2000, 8)
    m = holdout_mask(x, 0.1, seed=0)
    assert 0.06 < m.mean() < 0.14
    perm = np.random.default_rng(1).permutation(2000)
    assert np.array_equal(holdout_mask(x[perm], 0.1, seed=0), m[perm])


def test_npy_source_streams_through_a_memmap(tmp_path, monkeypatch):
    x, _ = clustered(1000, 8)
    path = tmp_path / "emb.npy"
    np.save(path, x.astype(np.float16))
    calls = []
    real_load = np.load

    def spy(*a, **kw):
        calls.append(kw.get("mmap_mode"))
        return real_load(*a, **kw)

    monkeypatch.setattr(np, "load", spy)
    src = NpySource(path, block_rows=64, buffer_blocks=2)
    assert calls == ["r"] and isinstance(src._arr, np.memmap)
    assert isinstance(src, EmbeddingSource) and src.n_rows == 1000 and src.dim == 8
    seen = [b for b in src.batches(100, shuffle=True, seed=0, epoch=0)]
    assert all(b.dtype == np.float32 and b.shape[0] <= 100 for b in seen)
    rows = np.concatenate(seen)
    assert rows.shape == (1000, 8)
    # every row exactly once, in a shuffled order
    key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731
    ref = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(rows[key(rows)], ref[key(ref)])
    assert not np.array_equal(rows, ref)
    other = np.concatenate(list(src.batches(100, shuffle=True, seed=0, epoch=1)))
    assert not np.array_equal(rows, other)
    plain = np.concatenate(list(src.batches(100, shuffle=False, seed=0, epoch=0)))
    assert np.array_equal(plain, ref)
    res = train_encoder(src, CSRConfig(**TINY), fast(epochs=1))
    assert res.report["n_rows"] == 1000


def test_npy_source_names_bad_rows_by_file_position(tmp_path):
    x, _ = clustered(300, 8)
    x[123] = np.inf
    np.save(tmp_path / "bad.npy", x)
    src = NpySource(tmp_path / "bad.npy", block_rows=50)
    with pytest.raises(DataError) as err:
        list(src.batches(64, shuffle=True, seed=0, epoch=0))
    assert err.value.rows == [123]
    np.save(tmp_path / "one.npy", np.ones(5, np.float32))
    with pytest.raises(DataError, match="2-D"):
        NpySource(tmp_path / "one.npy")
    with pytest.raises(DataError, match="cannot read"):
        NpySource(tmp_path / "missing.npy")


def test_iterator_source_rebatches_shuffles_and_trains():
    x, _ = clustered(700, 8)
    calls = []

    def factory():
        calls.append(1)
        for start in range(0, 700, 33):  # odd page sizes, as from a database
            yield x[start : start + 33]

    src = IteratorSource(factory, dim=8, shuffle_buffer=200)
    batches = list(src.batches(64, shuffle=True, seed=0, epoch=0))
    assert all(b.shape[0] == 64 for b in batches[:-1])
    rows = np.concatenate(batches)
    assert rows.shape == (700, 8) and not np.array_equal(rows, x)
    assert np.array_equal(np.concatenate(list(src.batches(64, shuffle=False, seed=0, epoch=0))), x)
    res = train_encoder(src, CSRConfig(**TINY), fast(epochs=2, k_start=4))
    rep = res.report
    assert rep["n_rows"] == 700 and rep["total_steps_planned"] == 2 * rep["epochs"][0]["steps"]
    assert rep["curves"]["k"][0] == 4 and rep["curves"]["k"][-1] == 2
    bad = IteratorSource(lambda: iter([np.ones((3, 5), np.float32)]), dim=8)
    with pytest.raises(DataError, match="shape"):
        list(bad.batches(4, shuffle=False, seed=0, epoch=0))
    nan = IteratorSource(lambda: iter([x[:10], np.full((2, 8), np.nan, np.float32)]), dim=8)
    with pytest.raises(DataError) as err:
        list(nan.batches(4, shuffle=False, seed=0, epoch=0))
    assert err.value.rows == [10, 11]
