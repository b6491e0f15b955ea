"""csr_vdb.sources: arrays, .npy memmaps and streams as training sources, row checks, hold-out, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from csr_vdb.errors import DataError
from csr_vdb.sources import (
    ArraySource,
    EmbeddingSource,
    IteratorSource,
    NpySource,
    as_float32,
    check_rows,
    data_fingerprint,
    holdout_mask,
    split_batch,
)
from csr_vdb.training import train_encoder
from tests.helpers import TINY, clustered, fast_train

torch.set_num_threads(1)


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
    res = train_encoder(src, CSRConfig(**TINY), fast_train(epochs=1))
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
    res = train_encoder(src, CSRConfig(**TINY), fast_train(epochs=2, k_start=4))
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


def test_array_source_batches_every_row_once_per_epoch_with_labels():
    x, y = clustered(250, 8)
    src = ArraySource(torch.from_numpy(x), y)
    assert isinstance(src, EmbeddingSource) and (src.n_rows, src.dim) == (250, 8)
    batches = list(src.batches(64, shuffle=True, seed=0, epoch=0))
    assert [len(b[0]) for b in batches] == [64, 64, 64, 58]
    xs = np.concatenate([b[0] for b in batches])
    ys = np.concatenate([b[1] for b in batches])
    order = np.lexsort(xs.T[::-1])
    ref = np.lexsort(x.T[::-1])
    assert np.array_equal(xs[order], x[ref]) and np.array_equal(ys[order], y[ref])  # rows keep their labels
    again = np.concatenate([b[0] for b in src.batches(64, shuffle=True, seed=0, epoch=0)])
    assert np.array_equal(again, xs)  # the same seed and epoch: the same order
    with pytest.raises(DataError, match="labels must have shape"):
        ArraySource(x, y[:10])
    with pytest.raises(DataError, match="non-empty 2-D"):
        ArraySource(np.zeros((0, 8), np.float32))


def test_check_rows_names_rows_by_offset_or_by_explicit_numbers():
    x = np.ones((4, 3), np.float32)
    x[2] = np.nan
    with pytest.raises(DataError, match="NaN or inf at rows 102") as err:
        check_rows(x, 100, "vectors")
    assert err.value.rows == [102]
    with pytest.raises(DataError) as err:
        check_rows(x, np.array([7, 8, 9, 10]), "vectors")
    assert err.value.rows == [9]
    check_rows(np.ones((2, 3), np.float32), 0, "vectors")  # nothing to report


def test_split_batch_and_as_float32():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    got, labels = split_batch(x)
    assert got.dtype == np.float32 and labels is None
    got, labels = split_batch((torch.from_numpy(x), np.array([4, 5])))
    assert got.dtype == np.float32 and labels.tolist() == [4, 5]
    assert as_float32(torch.ones(2, 2, dtype=torch.float16)).dtype == np.float32


def test_data_fingerprint_depends_on_rows_count_and_dim():
    x, _ = clustered(20, 8)
    fp = data_fingerprint(x, 20, 8)
    assert len(fp) == 64 and fp == data_fingerprint(x.astype(np.float64), 20, 8)
    assert fp != data_fingerprint(x, 21, 8)
    y = x.copy()
    y[3, 1] += 1e-3
    assert fp != data_fingerprint(y, 20, 8)
