"""Dense baselines at equal size for the quality benchmark: PCA and truncation (Matryoshka-style)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csr_vdb.errors import ConfigError
from csr_vdb.metrics import l2_normalize


@dataclass(frozen=True)
class PCA:
    """PCA fitted on the database side; `transform` projects and L2-normalises.

    Attributes:
        mean: ``[d]`` mean of the fitted rows.
        components: ``[m, d]`` top principal directions, largest variance first.
    """

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, m: int) -> PCA:
        """Fit the top ``m`` components of ``x`` (``[n, d]``) by SVD of the centred rows.

        Raises:
            ConfigError: ``m`` outside ``1..d``.
        """
        x = np.asarray(x, dtype=np.float64)
        if not 1 <= m <= x.shape[1]:
            raise ConfigError(f"PCA needs 1 <= m <= {x.shape[1]}, got {m}")
        mean = x.mean(axis=0)
        # the covariance eigenvectors are the right singular vectors; d x d is small (d <= a few k)
        cov = (x - mean).T @ (x - mean)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:m]
        return cls(mean.astype(np.float32), vecs[:, order].T.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]`` -> ``[n, m]`` centred projections, unit L2 norm (cosine = dot)."""
        return l2_normalize((np.asarray(x, np.float32) - self.mean) @ self.components.T)


def truncate(x: np.ndarray, m: int) -> np.ndarray:
    """First ``m`` dimensions of ``x`` (``[n, d]``), renormalised to unit L2 norm: ``[n, m]``."""
    x = np.asarray(x, dtype=np.float32)
    if not 1 <= m <= x.shape[1]:
        raise ConfigError(f"truncation needs 1 <= m <= {x.shape[1]}, got {m}")
    return l2_normalize(x[:, :m])


def bytes_matched_dims(k: int) -> int:
    """Dense float32 dims that cost as much as a k-sparse code (8 bytes per non-zero): ``2k``."""
    return 2 * k
