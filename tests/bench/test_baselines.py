"""bench/baselines.py: PCA and truncation, the dense baselines of the quality benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from bench.baselines import PCA, bytes_matched_dims, truncate
from csr_vdb.errors import ConfigError


def test_pca_recovers_the_planted_subspace_and_ranks_by_variance():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    coeffs = rng.normal(size=(500, 10)) * np.array([5.0, 3.0] + [0.01] * 8)
    x = (coeffs @ basis.T + 2.0).astype(np.float32)
    pca = PCA.fit(x, 2)
    proj = np.abs(pca.components @ basis[:, :2])
    assert np.allclose(np.diag(proj), 1.0, atol=1e-2)
    out = pca.transform(x)
    assert out.shape == (500, 2)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError):
        PCA.fit(x, 11)


def test_truncate_keeps_first_dims_renormalised():
    x = np.array([[3.0, 4.0, 100.0]], np.float32)
    np.testing.assert_allclose(truncate(x, 2), [[0.6, 0.8]], rtol=1e-6)
    with pytest.raises(ConfigError):
        truncate(x, 0)




def test_bytes_matched_dims_is_two_floats_per_nonzero():
    # a stored non-zero is an int32 index + a float32 value: the bytes of two float32 dims
    assert [bytes_matched_dims(k) for k in (1, 8, 32)] == [2, 16, 64]
