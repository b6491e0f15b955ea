"""csr_vdb.config: CSRConfig's size rules and query k, TrainConfig's ranges, the deprecated query-k spellings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from csr_vdb.config import DECODER_QUERY_K_FACTOR, CSRConfig, TrainConfig


def test_config_rules():
    with pytest.raises(ValueError):
        CSRConfig(input_dim=8, hidden_dim=4, k=5)
    with pytest.raises(ValueError):
        CSRConfig(input_dim=8, hidden_dim=32, k=2, unknown=1)
    assert CSRConfig(input_dim=8, hidden_dim=32, k=2).k_query_for() == 2
    assert CSRConfig(input_dim=8, hidden_dim=32, k=2, k_query=8).k_query_for() == 8


def test_size_rules_name_the_field():
    with pytest.raises(ValidationError, match=r"k_query \(40\) must not exceed hidden_dim \(32\)"):
        CSRConfig(input_dim=8, hidden_dim=32, k=2, k_query=40)
    with pytest.raises(ValidationError, match="bias_latent needs k >= 2"):
        CSRConfig(input_dim=8, hidden_dim=32, k=1, bias_latent=True)
    with pytest.raises(ValidationError):
        CSRConfig(input_dim=0, hidden_dim=32, k=2)


def test_code_dim_counts_the_bias_latent():
    assert CSRConfig(input_dim=8, hidden_dim=32, k=2).code_dim == 32
    assert CSRConfig(input_dim=8, hidden_dim=32, k=2, bias_latent=True).code_dim == 33


def test_k_query_for_each_projection():
    cfg = CSRConfig(input_dim=8, hidden_dim=256, k=4)
    assert cfg.k_query_for("encoder") == 4
    assert cfg.k_query_for("decoder") == DECODER_QUERY_K_FACTOR * 4
    # the decoder width is capped at hidden_dim
    assert CSRConfig(input_dim=8, hidden_dim=32, k=4).k_query_for("decoder") == 32
    # k_query wins for either projection, unless a k is given (a k sweep)
    set_q = cfg.model_copy(update={"k_query": 10})
    assert (set_q.k_query_for("encoder"), set_q.k_query_for("decoder")) == (10, 10)
    assert (set_q.k_query_for("encoder", 2), set_q.k_query_for("decoder", 2)) == (2, 2 * DECODER_QUERY_K_FACTOR)


def test_k_query_alone_is_the_full_width_whatever_k_query_says():
    cfg = CSRConfig(input_dim=8, hidden_dim=256, k=4, query_projection="decoder", k_query=10)
    assert cfg.k_query_alone() == DECODER_QUERY_K_FACTOR * 4
    assert CSRConfig(input_dim=8, hidden_dim=32, k=4, query_projection="decoder").k_query_alone() == 32
    # TopK queries: the query k in effect
    assert CSRConfig(input_dim=8, hidden_dim=256, k=4).k_query_alone() == 4
    assert CSRConfig(input_dim=8, hidden_dim=256, k=4, k_query=6).k_query_alone() == 6


def test_deprecated_query_k_spellings_still_answer():
    cfg = CSRConfig(input_dim=8, hidden_dim=64, k=2, k_query=6)
    with pytest.warns(DeprecationWarning, match="k_query_for"):
        assert cfg.query_k == 6
    with pytest.warns(DeprecationWarning, match="k_query_for"):
        assert cfg.query_k_for("decoder", 3) == cfg.k_query_for("decoder", 3) == 48


def test_config_round_trips_through_its_dump():
    cfg = CSRConfig(input_dim=8, hidden_dim=32, k=3, doc_codes="pursuit", bias_latent=True, source_model="m")
    assert CSRConfig(**cfg.model_dump()) == cfg
    train = TrainConfig(epochs=2, positives="noise", k_start=8)
    assert TrainConfig(**train.model_dump(mode="json")) == train


@pytest.mark.parametrize(
    "field, value",
    [("batch_size", 1), ("lr", 0.0), ("val_fraction", 0.5), ("positives", "friends"), ("anneal_fraction", 1.5),
     ("device", "tpu"), ("epochs", 0)],
)
def test_train_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{field: value})


def test_train_config_forbids_unknown_fields():
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate=1e-3)
