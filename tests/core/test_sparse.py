"""SparseVectors: every conversion round-trips, padding is ignored, validate() names bad rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb.errors import DataError
from csr_vdb.sparse import MAX_SPARSE_DIM, SparseVectors


def sample(n: int = 6, dim: int = 50, width: int = 4, seed: int = 0) -> SparseVectors:
    """Random k-sparse rows with unique indices in random slot order, some rows padded."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(dim, width, replace=False) for _ in range(n)])
    val = rng.uniform(0.1, 2.0, size=(n, width)).astype(np.float32)
    if n > 3:
        val[1, 2:] = 0.0  # padding
        val[3, 0] = 0.0  # padding in the middle
    return SparseVectors(idx, val, dim)


def test_construction_casts_and_checks_shapes():
    s = SparseVectors(np.array([[1, 2]], np.int32), np.array([[1.0, 2.0]], np.float64), 5)
    assert s.indices.dtype == np.int64 and s.values.dtype == np.float32 and s.dim == 5
    assert len(s) == 1 and s.width == 2
    with pytest.raises(DataError):
        SparseVectors(np.zeros((2, 3)), np.zeros((2, 2)), 5)
    with pytest.raises(DataError):
        SparseVectors(np.zeros(3), np.zeros(3), 5)
    with pytest.raises(DataError):
        SparseVectors(np.zeros((1, 1)), np.ones((1, 1)), 0)
    with pytest.raises(DataError):
        SparseVectors(np.zeros((1, 1)), np.ones((1, 1)), MAX_SPARSE_DIM + 1)


def test_nnz_nbytes_getitem():
    s = sample()
    assert s.nnz().tolist() == [4, 2, 4, 3, 4, 4]
    assert s.nbytes() == 21 * 8
    sub = s[[0, 3]]
    assert len(sub) == 2 and sub.nnz().tolist() == [4, 3]
    assert s[1:3].equals(SparseVectors(s.indices[1:3], s.values[1:3], s.dim))


@pytest.mark.parametrize("conv", ["dense", "scipy", "torch", "milvus", "qdrant"])
def test_round_trips(conv):
    s = sample()
    if conv == "dense":
        back = SparseVectors.from_dense(s.to_dense(), dim=s.dim)
    elif conv == "scipy":
        back = SparseVectors.from_scipy(s.to_scipy())
    elif conv == "torch":
        back = SparseVectors.from_torch(s.to_torch())
    elif conv == "milvus":
        rows = s.to_milvus()
        assert all(isinstance(r, dict) and 0.0 not in r.values() for r in rows)
        back = SparseVectors.from_milvus(rows, s.dim)
    else:
        pairs = s.to_qdrant()
        assert all(list(i) == sorted(i) for i, _ in pairs)
        assert all(len(i) == len(v) for i, v in pairs)
        back = SparseVectors.from_qdrant(pairs, s.dim)
    assert back.dim == s.dim
    assert back.equals(s)
    assert np.allclose(back.to_dense(), s.to_dense())


def test_torch_dense_and_coo_inputs():
    s = sample()
    dense = torch.from_numpy(s.to_dense())
    assert SparseVectors.from_torch(dense).equals(s)
    assert SparseVectors.from_torch(dense.to_sparse()).equals(s)
    t = s.to_torch()
    assert t.layout == torch.sparse_csr and tuple(t.shape) == (6, 50)


def test_scipy_matrix_is_canonical():
    m = sample().to_scipy()
    assert m.shape == (6, 50) and m.nnz == 21
    assert m.has_sorted_indices
    assert (m.data != 0).all()


def test_canonical_and_equals_ignore_slot_order_and_padding():
    s = sample()
    c = s.canonical()
    live = c.values != 0
    for row_idx, row_live in zip(c.indices, live):
        kept = row_idx[row_live]
        assert list(kept) == sorted(kept)
        assert (row_idx[~row_live] == 0).all()
    assert c.equals(s) and s.equals(c)
    shuffled = SparseVectors(s.indices[:, ::-1], s.values[:, ::-1], s.dim)
    assert shuffled.equals(s)
    wider = SparseVectors(np.pad(s.indices, ((0, 0), (0, 3))), np.pad(s.values, ((0, 0), (0, 3))), s.dim)
    assert wider.equals(s)
    tweaked = SparseVectors(s.indices, s.values + 1e-4 * (s.values != 0), s.dim)
    assert not tweaked.equals(s) and tweaked.equals(s, atol=1e-3)
    assert not s.equals(SparseVectors(s.indices, s.values, s.dim + 1))
    assert not s.equals(s[:5])
    moved = s.indices.copy()
    moved[0, 0] = (moved[0, 0] + 1) % 50 if (moved[0, 0] + 1) % 50 not in moved[0] else (moved[0, 0] + 2) % 50
    assert not SparseVectors(moved, s.values, s.dim).equals(s)


def test_concat_pads_to_widest():
    a = sample(4, width=2)
    b = sample(2, width=5, seed=1)
    c = SparseVectors.concat([a, b])
    assert len(c) == 6 and c.width == 5
    assert c[:4].equals(a) and c[4:].equals(b)
    with pytest.raises(DataError):
        SparseVectors.concat([])
    with pytest.raises(DataError):
        SparseVectors.concat([a, SparseVectors(b.indices, b.values, 99)])


def test_empty():
    e = SparseVectors.empty(10, width=3)
    assert len(e) == 0 and e.width == 3 and e.dim == 10
    assert e.to_scipy().shape == (0, 10)
    assert e.to_milvus() == [] and e.to_qdrant() == []
    e.validate()


def test_validate_names_rows_and_ids():
    s = sample()
    s.validate()
    vals = s.values.copy()
    vals[2, 1] = np.nan
    with pytest.raises(DataError, match="non-finite") as err:
        SparseVectors(s.indices, vals, s.dim).validate(ids=["a", "b", "c", "d", "e", "f"])
    assert err.value.rows == ["c"]
    idx = s.indices.copy()
    idx[4, 0] = 50
    with pytest.raises(DataError, match="outside") as err:
        SparseVectors(idx, s.values, s.dim).validate()
    assert err.value.rows == [4]
    idx = s.indices.copy()
    idx[0, 0] = -1
    with pytest.raises(DataError, match="outside"):
        SparseVectors(idx, s.values, s.dim).validate()
    vals = s.values.copy()
    vals[5] = 0
    with pytest.raises(DataError, match="no non-zero") as err:
        SparseVectors(s.indices, vals, s.dim).validate(ids=[10, 11, 12, 13, 14, 15])
    assert err.value.rows == [15]
    SparseVectors(s.indices, vals, s.dim).validate(allow_empty=True)
    idx = s.indices.copy()
    idx[0, 1] = idx[0, 0]
    with pytest.raises(DataError, match="duplicate") as err:
        SparseVectors(idx, s.values, s.dim).validate()
    assert err.value.rows == [0]
    # an index out of range on a padding slot is harmless
    idx = s.indices.copy()
    idx[1, 3] = 999
    SparseVectors(idx, s.values, s.dim).validate()


def test_pairs_of_unequal_length_are_rejected():
    with pytest.raises(DataError, match="row 1"):
        SparseVectors.from_qdrant([([1, 2], [0.5, 0.5]), ([3], [0.1, 0.2])], 10)


def test_invalid_rows_groups_reasons():
    vals = np.array([[np.inf, 1.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    idx = np.array([[0, 1], [0, 1], [2, 2]])
    problems = SparseVectors(idx, vals, 5).invalid_rows()
    assert problems == {"non-finite value": [0], "no non-zero entry": [1], "duplicate index": [2]}
