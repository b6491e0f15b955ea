"""Tests for csr_vdb.recipes.default_configs: valid, size-aware settings that train a usable encoder."""

from __future__ import annotations

import pytest

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError
from csr_vdb.metrics import one_nn_accuracy, rescored_search
from csr_vdb.recipes import default_configs, with_overrides
from csr_vdb.training import train_encoder
from tests.helpers import clustered


def test_defaults_follow_the_collection_size():
    model, train = default_configs(384, 5000)
    assert isinstance(model, CSRConfig) and isinstance(train, TrainConfig)
    assert (model.input_dim, model.hidden_dim, model.k) == (384, 1536, 32)
    assert (model.doc_codes, model.query_projection, model.normalize_codes) == ("pursuit", "decoder", True)
    assert model.bias_latent and model.code_dim == 1537
    assert not default_configs(8, 100, k=1)[0].bias_latent  # k=1 leaves no room for an atom
    small_steps = train.epochs * -(-5000 // train.batch_size)
    _, big = default_configs(384, 5_000_000)
    big_steps = big.epochs * -(-5_000_000 // big.batch_size)
    assert big.batch_size >= train.batch_size
    assert big.epochs < train.epochs
    # a big collection is not trained for fewer steps than a small one
    assert big_steps >= small_steps
    m2, t2 = default_configs(8, 3, k=2, hidden_dim=32)
    assert (m2.hidden_dim, m2.k) == (32, 2) and t2.batch_size <= 3


def test_search_width_and_candidates_of_the_recipe_and_of_its_topk_variant():
    model, _ = default_configs(384, 5000)
    assert (model.k_query, model.search_candidates) == (16, 300)
    assert model.k_query_for("decoder") == 16 and model.k_query_for("decoder", k=32) == 512  # the full width
    assert default_configs(8, 100, k=2, hidden_dim=12)[0].k_query == 12  # never wider than h
    topk = with_overrides(model, query_projection="encoder")
    assert (topk.k_query, topk.search_candidates, topk.bias_latent) == (None, None, False)
    assert topk.k_query_for("encoder") == 32  # TopK queries keep k non-zeros
    kept = with_overrides(model, query_projection="encoder", k_query=24, bias_latent=True)
    assert (kept.k_query, kept.bias_latent) == (24, True)
    assert with_overrides(model, hidden_dim=3072).k_query == 16


@pytest.mark.parametrize("args", [(0, 10), (8, 0), (8, 10, 40, 32)])
def test_bad_sizes_raise_config_error(args):
    with pytest.raises(ConfigError):
        default_configs(*args)


def test_recipe_trains_an_encoder_that_keeps_neighbourhoods():
    x, y = clustered(600, 16, 6, noise=0.35, seed=5)
    model, train = default_configs(16, 500, k=4)
    train = train.model_copy(update={"epochs": 4, "threads": 1})
    enc = train_encoder(x[:500], model, train).encoder
    codes = enc.encode(x)
    # h=64 latents + the bias latent; 3 atoms + the bias latent per document
    assert codes.dim == 65 and int(codes.nnz().max()) <= 4 and (codes.indices[:, 0] == 64).any()
    dense = one_nn_accuracy(x[:500], y[:500], x[500:], y[500:])
    # the recipe's pairing: pursuit document codes, decoder-projection query codes
    queries = enc.encode_queries(x[500:])
    assert int(queries.nnz().max()) > 4
    sparse = one_nn_accuracy(codes[:500], y[:500], queries, y[500:], scorer="dot")
    assert sparse > 0.8 * dense
    # and the search + exact re-score of 20 candidates with the signed query
    _, rows = rescored_search(queries, enc.encode_queries(x[500:], signed=True), codes[:500], 1, candidates=20)
    assert float((y[:500][rows[:, 0]] == y[500:]).mean()) > 0.8 * dense

