"""csr_vdb.metrics: hand-computed NDCG and recall, exact search and its ties, 1-NN accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from csr_vdb.errors import ConfigError, DataError
from csr_vdb.metrics import exact_search, ndcg_at_k, one_nn_accuracy, rankings, recall_at_k
from csr_vdb.sparse import SparseVectors
from tests.helpers import clustered

L2 = math.log2


# ------------------------------------------------------------------ NDCG / recall by hand
def test_ndcg_binary_by_hand():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": ["x", "a", "y", "b"]}
    dcg = 1 / L2(3) + 1 / L2(5)
    idcg = 1 / L2(2) + 1 / L2(3)
    assert ndcg_at_k(run, qrels, 10).value == pytest.approx(dcg / idcg)


def test_ndcg_graded_linear_gain_and_ideal_over_all_judged():
    # grade 2 doc retrieved second, grade 1 doc retrieved first, a grade-3 doc never retrieved
    qrels = {"q": {"a": 1, "b": 2, "c": 3, "z": 0}}
    run = {"q": ["a", "b", "z"]}
    dcg = 1 / L2(2) + 2 / L2(3)
    idcg = 3 / L2(2) + 2 / L2(3) + 1 / L2(4)  # all judged-relevant docs, not just the retrieved
    assert ndcg_at_k(run, qrels, 10).value == pytest.approx(dcg / idcg)


def test_ndcg_cutoff_and_duplicates():
    qrels = {"q": {"a": 1}}
    assert ndcg_at_k({"q": ["x", "y", "a"]}, qrels, 2).value == 0.0
    # a duplicated doc id must not earn gain twice nor push the rest down
    res = ndcg_at_k({"q": ["a", "a"]}, {"q": {"a": 1, "b": 1}}, 10).value
    assert res == pytest.approx(1 / (1 + 1 / L2(3)))


def test_queries_without_relevant_docs_are_skipped_and_counted():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {}}
    run = {"q1": ["a"], "q2": ["b"]}
    res = ndcg_at_k(run, qrels, 10)
    assert (res.value, res.n_evaluated, res.n_skipped) == (1.0, 1, 2)
    rec = recall_at_k(run, qrels, 10)
    assert (rec.value, rec.n_evaluated, rec.n_skipped) == (1.0, 1, 2)


def test_missing_ranking_scores_zero():
    res = ndcg_at_k({}, {"q1": {"a": 1}, "q2": {"b": 1}}, 10, query_ids=["q1", "q2"])
    assert (res.value, res.n_evaluated) == (0.0, 2)


def test_recall_by_hand():
    qrels = {"q1": {"a": 1, "b": 1, "c": 1, "d": 1}, "q2": {"e": 2}}
    run = {"q1": ["a", "x", "b", "c"], "q2": ["y", "e"]}
    assert recall_at_k(run, qrels, 3).value == pytest.approx((2 / 4 + 1) / 2)
    assert recall_at_k(run, qrels, 1).value == pytest.approx((1 / 4 + 0) / 2)


# ------------------------------------------------------------------ exact search, 1-NN
def test_exact_search_dense_matches_brute_force_and_breaks_ties_by_row():
    x, _ = clustered(200, 8, 4, seed=1)
    q = x[:13] + 0.01
    scores, rows = exact_search(q, x, 5, chunk_size=4)
    full = q @ x.T
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :5], rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, rows, 1), scores, rtol=1e-5)
    db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    _, r = exact_search(np.array([[1.0, 0.0]], np.float32), db, 3)
    assert r.tolist() == [[0, 2, 1]]


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_exact_search_sparse_equals_dense(metric):
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((60, 40)) < 0.15, rng.random((60, 40)), 0).astype(np.float32)
    dense[:, 0] += 0.01  # no empty row
    sv = SparseVectors.from_dense(dense)
    s1, r1 = exact_search(sv[:9], sv, 7, metric=metric, chunk_size=2)
    s2, r2 = exact_search(dense[:9], dense, 7, metric=metric)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
    assert (r1 == r2).all()


def test_exact_search_rejects_mixed_or_mismatched_inputs():
    sv = SparseVectors.from_dense(np.eye(4, dtype=np.float32))
    with pytest.raises(DataError):
        exact_search(np.eye(4, dtype=np.float32), sv, 1)
    with pytest.raises(DataError):
        exact_search(np.ones((2, 3), np.float32), np.ones((5, 4), np.float32), 1)
    with pytest.raises(ConfigError):
        exact_search(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), 1, metric="l1")


def test_one_nn_accuracy_by_hand_and_sparse():
    train = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    test = np.array([[0.9, 0.1, 0], [0.1, 0.2, 0.9], [0, 1, 0.2], [0.6, 0.5, 0]], np.float32)
    # nearest: 0, 2, 1, 0 -> labels a, c, b, a vs truth a, c, c, b -> 2/4
    acc = one_nn_accuracy(train, ["a", "b", "c"], test, ["a", "c", "c", "b"])
    assert acc == 0.5
    sparse = one_nn_accuracy(
        SparseVectors.from_dense(train), ["a", "b", "c"], SparseVectors.from_dense(test), ["a", "c", "c", "b"]
    )
    assert sparse == 0.5
    with pytest.raises(DataError):
        one_nn_accuracy(train, ["a"], test, ["a"] * 4)


def test_cosine_differs_from_dot_when_norms_differ():
    train = np.array([[10.0, 1.0], [0.0, 1.0]], np.float32)
    test = np.array([[0.1, 1.0]], np.float32)
    assert one_nn_accuracy(train, [0, 1], test, [1], scorer="cosine") == 1.0
    assert one_nn_accuracy(train, [0, 1], test, [1], scorer="dot") == 0.0


def test_rankings_maps_rows_to_ids():
    assert rankings(np.array([[1, 0]]), ["q"], ["a", "b"]) == {"q": ["b", "a"]}


def test_exact_search_ties_at_the_cut_keep_the_lowest_rows():
    rng = np.random.default_rng(2)
    # many exact ties (integer scores), as sparse codes produce
    q = rng.integers(0, 3, size=(7, 5)).astype(np.float32)
    db = rng.integers(0, 3, size=(300, 5)).astype(np.float32)
    for top_k in (1, 4, 17, 300):
        scores, rows = exact_search(q, db, top_k, chunk_size=3)
        full = q @ db.T
        expect = np.lexsort((np.broadcast_to(np.arange(300), full.shape), -full), axis=1)[:, :top_k]
        assert (rows == expect).all(), top_k
        np.testing.assert_allclose(scores, np.take_along_axis(full, expect, axis=1), rtol=1e-6)
