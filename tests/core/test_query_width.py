"""csr_vdb.query_width: narrowing search queries and choosing a per-collection query width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.metrics import exact_search
from csr_vdb.model import CSREncoder
from csr_vdb.query_width import (
    apply_query_width,
    choose_query_width,
    fit_query_width,
    narrow_queries,
    posting_lengths,
    recall_at,
    self_query_sample,
)
from csr_vdb.sparse import SparseVectors
from tests.helpers import clustered


def _queries() -> SparseVectors:
    idx = np.array([[3, 1, 4, 0], [2, 5, 0, 0]])
    val = np.array([[0.9, 0.5, 0.4, 0.1], [0.7, 0.2, 0.0, 0.0]], np.float32)
    return SparseVectors(idx, val, 6)


def test_posting_lengths_counts_rows_per_latent_without_padding():
    codes = SparseVectors(np.array([[1, 2], [1, 0], [3, 0]]), np.array([[1, 1], [1, 0], [2, 0]], np.float32), 5)
    assert posting_lengths(codes).tolist() == [0, 2, 1, 1, 0]


def test_narrow_by_magnitude_keeps_the_largest_entries_sorted():
    out = narrow_queries(_queries(), 2)
    assert out.width == 2
    assert out.indices[0].tolist() == [3, 1] and out.values[0].tolist() == pytest.approx([0.9, 0.5])
    assert out.indices[1].tolist() == [2, 5]  # the second row had only two live entries
    # a width beyond the rows' width keeps every entry
    assert narrow_queries(_queries(), 10).to_dense() == pytest.approx(_queries().to_dense())


def test_narrow_by_cost_prefers_short_posting_lists():
    posting = np.array([1, 1000, 0, 1000, 1, 0])
    out = narrow_queries(_queries(), 2, select="cost", posting=posting, alpha=1.0)
    # row 0: 0.9/1001, 0.5/1001, 0.4/2, 0.1/2 -> latents 4 and 0 (sorted by value: 4 then 0)
    assert out.indices[0].tolist() == [4, 0]
    # alpha 0 is the magnitude order again
    same = narrow_queries(_queries(), 2, select="cost", posting=posting, alpha=0.0)
    assert same.indices.tolist() == narrow_queries(_queries(), 2).indices.tolist()


def test_narrow_rejects_bad_settings():
    with pytest.raises(ConfigError):
        narrow_queries(_queries(), 0)
    with pytest.raises(ConfigError):
        narrow_queries(_queries(), 2, select="random")
    with pytest.raises(ConfigError):
        narrow_queries(_queries(), 2, select="cost")
    with pytest.raises(ConfigError):
        narrow_queries(_queries(), 2, select="cost", posting=np.ones(3))


def test_recall_at_drops_the_query_row_itself():
    found = np.array([[7, 1, 2], [4, 5, 6]])
    truth = np.array([[7, 2, 3], [5, 4, 9]])
    assert recall_at(found, truth, top_k=2) == pytest.approx((0.5 + 1.0) / 2)
    # query 0 is row 7 itself: compared are [1, 2] vs [2, 3]
    assert recall_at(found, truth, self_rows=np.array([7, -1]), top_k=2) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(DataError):
        recall_at(found[:1], truth)


def _encoder_and_data(seed: int = 0):
    torch.manual_seed(seed)
    x, _ = clustered(n=600, dim=16, clusters=12, noise=0.3, seed=seed)
    cfg = CSRConfig(input_dim=16, hidden_dim=64, k=6, normalize_codes=True, query_projection="decoder",
                    doc_codes="pursuit", bias_latent=True)
    enc = CSREncoder(cfg, device="cpu")
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(axis=0)))
    return enc, x


def test_choose_query_width_on_self_queries_of_a_real_encoder():
    enc, x = _encoder_and_data()
    docs = enc.encode(x)
    rows, truth = self_query_sample(x, 60, top_k=5, seed=1)
    assert (truth[:, 0] == rows).all()  # each row is its own nearest neighbour
    search = enc.encode_queries(x[rows])  # the full-width search query (decoder projection)
    exact = enc.encode_queries(x[rows], signed=True)
    choice = choose_query_width(search, exact, docs, truth, floor=0.95, widths=(1, 2, 4, 8, 16, 64),
                                candidates=30, self_rows=rows, top_k=5)
    full = search.width
    assert set(choice.recalls) == {1, 2, 4, 8, 16, full}
    assert choice.full_recall == choice.recalls[full] and choice.met
    assert choice.floor == pytest.approx(0.95 * choice.full_recall)
    assert choice.recall >= choice.floor - 1e-12
    # the narrowest width meeting the floor: every narrower width tried falls below it
    assert all(choice.recalls[w] < choice.floor for w in choice.recalls if w < choice.width)
    # the recall of the full width is the two-stage search's, computed independently here
    from csr_vdb.metrics import rescored_search

    _, got = rescored_search(search, exact, docs, 6, candidates=30)
    assert choice.full_recall == pytest.approx(recall_at(got, truth, rows, 5))
    # an absolute floor no width can reach: the widest width, not met
    hard = choose_query_width(search, exact, docs, truth, floor=1.0, relative=False, widths=(1, 2),
                              candidates=30, self_rows=rows, top_k=5)
    if hard.full_recall < 1.0:
        assert not hard.met and hard.width == full


def test_fit_query_width_chooses_on_the_rows_and_keeps_the_choice_in_the_config(tmp_path):
    enc, x = _encoder_and_data()
    enc.config = enc.config.model_copy(update={"search_candidates": 40})
    rep = fit_query_width(enc, x, recall_floor=0.9, queries=50, max_rows=150, widths=(2, 4, 8), seed=1)
    full = enc.config.k_query_for("decoder", enc.config.k)
    assert rep.full_width == full and set(rep.recalls) == {2, 4, 8, full}
    assert (rep.candidates, rep.queries, rep.rows, rep.recall_floor) == (40, 50, 150, 0.9)
    assert rep.floor == pytest.approx(0.9 * rep.full_recall, abs=1e-6) and rep.met and rep.recall >= rep.floor - 1e-6
    assert all(rep.recalls[w] < rep.floor for w in rep.recalls if w < rep.width)
    apply_query_width(enc, rep)
    assert (enc.config.k_query, enc.config.search_candidates) == (rep.width, 40)
    enc.save(tmp_path / "m")
    loaded = CSREncoder.load(tmp_path / "m")
    assert loaded.config.query_width == rep and loaded.config.k_query_for("decoder") == rep.width
    with pytest.raises(ConfigError, match="decoder"):
        fit_query_width(enc.with_config(query_projection="encoder"), x)
    with pytest.raises(DataError, match="rows"):
        fit_query_width(enc, x[:5])


def test_choose_query_width_by_cost_uses_the_collections_posting_lengths():
    enc, x = _encoder_and_data(seed=3)
    docs = enc.encode(x)
    rows, truth = self_query_sample(x, 40, top_k=5, seed=2)
    search = enc.encode_queries(x[rows])
    exact = enc.encode_queries(x[rows], signed=True)
    choice = choose_query_width(search, exact, docs, truth, widths=(4, 8), candidates=20, select="cost",
                                alpha=0.5, self_rows=rows, top_k=5)
    assert choice.select == "cost" and set(choice.recalls) == {4, 8, search.width}
    post = posting_lengths(docs)
    narrowed = narrow_queries(search, 4, "cost", post, 0.5)
    magnitude = narrow_queries(search, 4)
    walked = lambda q: post[q.indices][q.values != 0].sum()  # noqa: E731
    assert walked(narrowed) <= walked(magnitude)


def test_choose_query_width_rejects_bad_input():
    enc, x = _encoder_and_data()
    docs = enc.encode(x[:50])
    q = enc.encode_queries(x[:5])
    s = enc.encode_queries(x[:5], signed=True)
    _, truth = exact_search(x[:5], x[:50], 5)
    with pytest.raises(ConfigError):
        choose_query_width(q, s, docs, truth, floor=0.0)
    with pytest.raises(ConfigError):
        choose_query_width(q, s, docs, truth, widths=(0,))
    with pytest.raises(ConfigError):
        choose_query_width(q, s, docs, truth, candidates=5, self_rows=np.arange(5), top_k=5)
    with pytest.raises(DataError):
        choose_query_width(q, s[:4], docs, truth)
    with pytest.raises(DataError):
        self_query_sample(x[:1], 1)
