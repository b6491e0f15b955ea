"""adapters/_common.py: the columns a search is shaped from (`FoundBatch`), ranked as the reference store ranks."""

from __future__ import annotations

import numpy as np

from csr_vdb.adapters._common import Found, FoundBatch
from csr_vdb.sparse import SparseVectors


def _batch() -> FoundBatch:
    rows = [
        Found(5, 2.0, {"a": 5}, ([1, 3], [0.5, 0.25])),
        Found(3, 2.0, {"a": 3}, ([2], [1.0])),  # tied with id 5: id 3 goes first
        Found(8, 0.0, {"a": 8}, ([4, 6, 7], [1.0, 1.0, 1.0])),  # no positive score: not a hit
        Found(1, 3.0, {"a": 1}, ([], [])),
    ]
    return FoundBatch.from_rows(rows, with_payload=True, with_codes=True, dense_dim=None)


def test_ranked_drops_non_positive_scores_and_orders_ties_by_id_with_their_codes():
    b = _batch().ranked()
    assert b.ids == [1, 3, 5] and b.scores.tolist() == [3.0, 2.0, 2.0]
    assert b.payloads == [{"a": 1}, {"a": 3}, {"a": 5}]
    codes = SparseVectors.from_flat(b.code_lengths, b.code_indices, b.code_values, 10)
    assert codes.to_qdrant() == [([], []), ([2], [1.0]), ([1, 3], [0.5, 0.25])]


def test_ranked_keeps_an_engine_order_that_is_already_the_reference_one():
    b = FoundBatch.from_rows([Found(2, 0.9, None), Found(1, 0.5, None)], False, False, None)
    assert b.ranked() is b


def test_take_reorders_dense_rows_and_empty_batches_have_empty_columns():
    rows = [Found(i, float(3 - i), None, None, [float(i)] * 2) for i in range(3)]
    b = FoundBatch.from_rows(rows, False, False, 2).take(np.array([2, 0]))
    assert b.ids == [2, 0] and b.dense.tolist() == [[2.0, 2.0], [0.0, 0.0]]
    e = FoundBatch.empty(True, True, 4)
    assert e.ids == [] and e.payloads == [] and len(e.code_lengths) == 0 and e.dense.shape == (0, 4)
