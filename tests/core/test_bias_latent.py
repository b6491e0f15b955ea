"""The bias latent (``CSRConfig.bias_latent``) and signed decoder queries: exact scores, contract, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.metrics import exact_search, rescored_search
from csr_vdb.model import CSREncoder
from csr_vdb.training import train_encoder
from tests.helpers import clustered

torch.set_num_threads(1)

D, H, K = 16, 64, 6


@pytest.fixture(scope="module")
def trained() -> tuple[CSREncoder, np.ndarray]:
    x, _ = clustered(400, D, 8, noise=0.4, seed=2)
    cfg = CSRConfig(input_dim=D, hidden_dim=H, k=K, normalize_codes=True, query_projection="decoder",
                    doc_codes="pursuit", bias_latent=True)
    enc = train_encoder(x, cfg, TrainConfig(epochs=3, batch_size=64, threads=1, seed=0)).encoder
    return enc, x


@pytest.mark.parametrize("doc_codes", ["pursuit", "topk"])
def test_doc_codes_are_k_minus_one_atoms_plus_the_bias(trained, doc_codes):
    enc, x = trained
    enc = enc.with_config(doc_codes=doc_codes)
    codes = enc.encode(x)
    assert codes.dim == H + 1 == enc.config.code_dim
    assert codes.width == K and (codes.values >= 0).all()
    live = codes.values > 0
    assert (live.sum(axis=1) <= K).all()
    assert ((codes.indices == H) & live).sum(axis=1).tolist() == [1] * len(x)  # the bias latent, once per row
    assert (np.diff(codes.values, axis=1) <= 0).all()  # sorted by value
    # the code decodes to the unit-norm version of the whole reconstruction: k-1 atoms + b_pre
    plain = enc.with_config(bias_latent=False, normalize_codes=False).encode(x, k=K - 1)
    with torch.no_grad():
        xhat = enc.decode_sparse(torch.from_numpy(plain.indices), torch.from_numpy(plain.values)).numpy()
    want = xhat / np.linalg.norm(xhat, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.decode(codes), want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(enc.decode(codes), axis=1), 1.0, atol=1e-5)


def test_a_code_without_positive_activations_is_the_bias_latent_alone(trained):
    enc, x = trained
    enc = enc.with_config(doc_codes="topk")
    with torch.no_grad():
        enc.b_enc.fill_(-100.0)  # every TopK pre-activation negative
    codes = enc.encode(x[:20])
    live = codes.values > 0
    assert (live.sum(axis=1) == 1).all() and (codes.indices[live] == H).all()
    b = enc.b_pre.detach().numpy()
    np.testing.assert_allclose(enc.decode(codes), np.tile(b / np.linalg.norm(b), (20, 1)), atol=1e-6)


def test_signed_query_scores_exactly_the_cosine_with_the_reconstruction(trained):
    enc, x = trained
    docs = enc.encode(x[:200])
    q = x[200:230] + 0.1 * np.random.default_rng(0).normal(size=(30, D)).astype(np.float32)
    signed = enc.encode_queries(q, signed=True)
    assert signed.dim == H + 1 and signed.width == H + 1  # every entry by default
    assert (signed.values < 0).any() and (signed.values > 0).any()
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    want = qn.astype(np.float64) @ enc.decode(docs).T.astype(np.float64)
    got = signed.to_dense().astype(np.float64) @ docs.to_dense().T.astype(np.float64)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # the search query keeps only positive entries and never the bias latent (its posting list holds
    # every document): the positive part of the signed query without it, rescaled (normalize_codes)
    pos = enc.encode_queries(q)
    assert pos.dim == H + 1 and (pos.values >= 0).all() and not (pos.indices[pos.values > 0] == H).any()
    relu = np.maximum(signed.to_dense(), 0)
    relu[:, H] = 0
    assert (np.count_nonzero(relu, axis=1) <= pos.width).all()  # wide enough to hold all of it here
    np.testing.assert_allclose(pos.to_dense(), relu / np.linalg.norm(relu, axis=1, keepdims=True), atol=1e-6)


def test_signed_query_keeps_the_largest_magnitudes(trained):
    enc, x = trained
    full = enc.encode_queries(x[:10], signed=True).to_dense()
    top = enc.encode_queries(x[:10], k=7, signed=True)
    assert top.width == 7
    dense = top.to_dense()
    for row, ref in zip(dense, full):
        kept = np.flatnonzero(row)
        assert len(kept) == 7
        np.testing.assert_allclose(row[kept], ref[kept], rtol=1e-6, atol=1e-7)  # signs kept
        assert np.abs(ref[kept]).min() >= np.sort(np.abs(ref))[-7] - 1e-7


def test_rescored_search_is_the_exact_top_k_within_the_candidates(trained):
    enc, x = trained
    docs = enc.encode(x[:300])
    q = x[300:340]
    pos, signed = enc.encode_queries(q), enc.encode_queries(q, signed=True)
    # over every row the two-stage search is the exact signed search
    s_all, r_all = rescored_search(pos, signed, docs, 5, candidates=300)
    s_ref, r_ref = exact_search(signed, docs, 5)
    np.testing.assert_array_equal(r_all, r_ref)
    np.testing.assert_allclose(s_all, s_ref, atol=1e-5)
    # with few candidates the hits stay among the first stage's
    _, cand = exact_search(pos, docs, 12)
    _, rows = rescored_search(pos, signed, docs, 5, candidates=12)
    for got, c in zip(rows, cand):
        assert set(got) <= set(c)
    # dense vectors take the dense re-ranker
    xd = x[:300]
    _, rows = rescored_search(q, q, xd, 3, candidates=300)
    np.testing.assert_array_equal(rows, exact_search(q, xd, 3)[1])
    with pytest.raises(DataError, match="exact queries"):
        rescored_search(pos, signed[:3], docs, 5)


def test_errors_and_persistence(trained, tmp_path):
    enc, x = trained
    with pytest.raises(ValidationError, match="bias_latent"):
        CSRConfig(input_dim=D, hidden_dim=H, k=1, bias_latent=True)
    with pytest.raises(DataError, match="k must be in 2"):
        enc.encode(x[:3], k=1)
    with pytest.raises(DataError, match="signed"):
        enc.encode_queries(x[:3], projection="encoder", signed=True)
    with pytest.raises(ConfigError, match="hidden_dim"):
        enc.with_config(hidden_dim=2 * H)
    with pytest.raises(ConfigError, match="bias_latent needs k >= 2"):
        enc.with_config(k=1)
    same = enc.with_config(doc_codes="topk")
    assert not same.training and same.config.doc_codes == "topk" and enc.config.doc_codes == "pursuit"
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), enc.state_dict().values()))
    with pytest.raises(DataError, match="bias latent"):
        enc.decode(enc.with_config(bias_latent=False).encode(x[:3]))
    enc.save(tmp_path / "m")
    back = CSREncoder.load(tmp_path / "m", device="cpu")
    assert back.config.bias_latent and back.config.code_dim == H + 1
    a, b = enc.encode(x[:50]), back.encode(x[:50])
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-6)
    # a model saved before the field existed loads without it
    assert CSRConfig(input_dim=D, hidden_dim=H, k=K).code_dim == H
