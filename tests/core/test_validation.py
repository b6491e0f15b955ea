"""check_dense / invalid_dense_rows: shapes, dtypes, and bad rows named by position or id."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.errors import DataError
from csr_vdb.validation import check_dense, invalid_dense_rows


def test_valid_input_is_float32_contiguous():
    x = np.asfortranarray(np.random.default_rng(0).normal(size=(5, 3)))
    out = check_dense(x, dim=3)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (5, 3)
    assert np.allclose(out, x)
    assert check_dense(np.ones((2, 4), np.float16)).dtype == np.float32
    assert check_dense([[1, 2], [3, 4]]).shape == (2, 2)


def test_single_vector_is_promoted():
    assert check_dense(np.ones(4), dim=4).shape == (1, 4)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((0, 4)), "empty"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((3, 5)), "dimension 5, expected 4"),
        ([["a", "b", "c", "d"]], "not numeric"),
    ],
)
def test_shape_errors(x, match):
    with pytest.raises(DataError, match=match):
        check_dense(x, dim=4)


def test_bad_rows_named_by_position_and_id():
    x = np.ones((6, 3), np.float32)
    x[1, 0] = np.nan
    x[4, 2] = -np.inf
    with pytest.raises(DataError, match="NaN or inf at rows 1, 4") as err:
        check_dense(x)
    assert err.value.rows == [1, 4]
    ids = ["a", "b", "c", "d", "e", "f"]
    with pytest.raises(DataError, match="ids b, e") as err:
        check_dense(x, ids=ids, what="queries")
    assert err.value.rows == ["b", "e"]
    assert "queries" in str(err.value)
    y = np.ones((4, 3), np.float32)
    y[2] = 0
    with pytest.raises(DataError, match="all-zero vector at rows 2") as err:
        check_dense(y)
    assert err.value.rows == [2]


def test_many_bad_rows_are_summarised():
    x = np.zeros((20, 3), np.float32)
    with pytest.raises(DataError, match=r"\(\+15 more\)") as err:
        check_dense(x)
    assert len(err.value.rows) == 20


def test_invalid_dense_rows_reports_every_reason():
    x = np.ones((5, 2), np.float32)
    x[0] = np.nan
    x[3] = 0
    x[4] = [np.inf, 0.0]
    assert invalid_dense_rows(x) == {"NaN or inf": [0, 4], "all-zero vector": [3]}
    assert invalid_dense_rows(np.ones((2, 2))) == {}
