"""csr_vdb.scoring: the deprecated module still hands out the moved names, and says where they went."""

from __future__ import annotations

import importlib
import sys
import warnings


def test_old_names_are_the_moved_objects_with_a_deprecation_warning():
    sys.modules.pop("csr_vdb.scoring", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scoring = importlib.import_module("csr_vdb.scoring")
    assert any(issubclass(w.category, DeprecationWarning) and "csr_vdb.index" in str(w.message) for w in caught)
    from csr_vdb.device import resolve_device
    from csr_vdb.index import SparseIndex
    from csr_vdb.rerank import Reranker

    assert scoring.SparseIndex is SparseIndex
    assert scoring.Reranker is Reranker
    assert scoring.resolve_device is resolve_device
    from csr_vdb.scoring import Reranker as R, SparseIndex as S  # the old import line keeps working

    assert (R, S) == (Reranker, SparseIndex)


def test_package_exports_point_at_the_new_modules():
    import csr_vdb

    assert csr_vdb.SparseIndex.__module__ == "csr_vdb.index"
    assert csr_vdb.Reranker.__module__ == "csr_vdb.rerank"
