"""Deprecated module: its contents moved by role.

`SparseIndex` (exact brute-force top-k) is in `csr_vdb.index`, `Reranker` (exact re-ranking of
candidates) in `csr_vdb.rerank`, `resolve_device` in `csr_vdb.device`. The old names stay
importable from here.
"""

from __future__ import annotations

import warnings

from csr_vdb.device import resolve_device
from csr_vdb.index import SparseIndex
from csr_vdb.rerank import Reranker

__all__ = ["Reranker", "SparseIndex", "resolve_device"]

warnings.warn(
    "csr_vdb.scoring is deprecated: import SparseIndex from csr_vdb.index, Reranker from csr_vdb.rerank "
    "and resolve_device from csr_vdb.device",
    DeprecationWarning,
    stacklevel=2,
)
