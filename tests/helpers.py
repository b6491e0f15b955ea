"""Tiny builders for tests: clustered data, small configs."""

from __future__ import annotations

import numpy as np


def clustered(n: int = 512, dim: int = 8, clusters: int = 8, noise: float = 0.15, seed: int = 0):
    """Unit-norm vectors around ``clusters`` random centres; returns (x [n, dim] float32, labels [n])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    x = centres[labels] + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels
