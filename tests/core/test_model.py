"""CSREncoder: sparsity guarantees, init, encode/decode, asymmetric k, save/load and its failure modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from csr_vdb.errors import DataError, ModelError
from csr_vdb.fileutil import model_checksum, sha256_file
from csr_vdb.model import CONFIG_FILE, MIN_ACTIVATION, REPORT_FILE, WEIGHTS_FILE, CSREncoder
from tests.helpers import clustered, tiny_encoder

torch.set_num_threads(1)


def test_tied_unit_norm_init_and_zero_biases():
    enc = tiny_encoder()
    assert torch.equal(enc.W_enc, enc.W_dec)
    assert torch.allclose(enc.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    assert not enc.b_enc.any() and not enc.b_pre.any()
    assert enc.device == torch.device("cpu")


def test_codes_have_at_most_k_and_at_least_one_positive_value():
    x, _ = clustered(200, 8)
    enc = tiny_encoder(k=3)
    codes = enc.encode(x)
    assert codes.dim == 32 and codes.width == 3 and len(codes) == 200
    assert (codes.values >= 0).all()
    nnz = codes.nnz()
    assert nnz.min() >= 1 and nnz.max() <= 3
    codes.validate()  # no duplicates, no empty rows, indices in range


def test_all_negative_pre_activations_keep_one_tiny_value():
    enc = tiny_encoder()
    with torch.no_grad():
        enc.b_enc.fill_(-100.0)  # every pre-activation negative: ReLU(TopK) would be all zero
    x, _ = clustered(10, 8)
    codes = enc.encode(x)
    assert (codes.nnz() == 1).all()
    assert np.allclose(codes.values[:, 0], MIN_ACTIVATION)
    # the kept latent is each row's largest pre-activation
    pre = enc.pre_activations(enc.preprocess(torch.from_numpy(x))).argmax(dim=1).numpy()
    assert (codes.indices[:, 0] == pre).all()
    codes.validate()


def test_codes_match_relu_topk_of_pre_activations():
    x, _ = clustered(50, 8)
    enc = tiny_encoder(k=4)
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(0)))
    codes = enc.encode(x).to_dense()
    pre = (torch.from_numpy(x) - enc.b_pre) @ enc.W_enc.T + enc.b_enc
    top = torch.zeros_like(pre).scatter(1, pre.topk(4, dim=1).indices, pre.topk(4, dim=1).values).relu()
    assert np.allclose(codes, top.detach().numpy(), atol=1e-5)


def test_asymmetric_query_k():
    x, _ = clustered(40, 8)
    enc = tiny_encoder(k=2, k_query=6)
    assert enc.encode(x).width == 2
    q = enc.encode_queries(x)
    assert q.width == 6 and q.nnz().max() <= 6
    assert enc.encode(x, kind="query").width == 6
    assert enc.encode_queries(x, k=3).width == 3
    # the doc code is the top of the query code
    d = enc.encode(x)
    assert (d.indices[:, :2] == q.indices[:, :2]).all()
    with pytest.raises(DataError):
        enc.encode(x, k=33)


def test_decoder_projection_queries_rank_by_reconstruction():
    x, _ = clustered(60, 8)
    enc = tiny_encoder(k=3, hidden_dim=64, query_projection="decoder")
    with torch.no_grad():
        enc.W_dec.add_(0.3 * torch.randn_like(enc.W_dec))  # untied, so the two projections differ
        enc.b_pre.copy_(torch.from_numpy(x.mean(0)))
    # default query width: 16 k (capped at hidden_dim); documents keep k
    q = enc.encode_queries(x)
    assert q.width == 48 and enc.encode(x).width == 3
    assert tiny_encoder(k=3, query_projection="decoder").encode_queries(x).width == 32  # capped
    assert (q.values >= 0).all() and q.nnz().min() >= 1
    q.validate()
    # with every latent kept, <query, doc code> == <x, reconstruction - b_pre> wherever W_dec x >= 0
    full = enc.encode_queries(x, k=64).to_dense()
    xp = enc.preprocess(torch.from_numpy(x))
    proj = (xp @ enc.W_dec.T).detach().numpy()
    assert np.allclose(full, np.maximum(proj, 0), atol=1e-5)
    docs = enc.encode(x)
    recon = enc.decode(docs) - enc.b_pre.detach().numpy()
    pos = proj >= 0
    d = docs.to_dense()
    assert np.allclose(full @ d.T, (proj * pos) @ d.T, atol=1e-5)
    if pos.all():  # pragma: no cover - depends on the draw
        assert np.allclose(full @ d.T, xp.numpy() @ recon.T, atol=1e-4)
    # the encoder projection is still available per call, and k_query overrides the width
    as_docs = enc.encode_queries(x, projection="encoder")
    assert as_docs.width == 3 and as_docs.equals(enc.encode(x), atol=1e-6)
    assert tiny_encoder(k=3, k_query=5, query_projection="decoder").encode_queries(x).width == 5
    # a k given explicitly (a k sweep) sets the width and overrides k_query
    cfg = tiny_encoder(k=3, k_query=5, hidden_dim=64).config
    assert (cfg.k_query_for("encoder", 4), cfg.k_query_for("decoder", 2), cfg.k_query_for("decoder", 9)) == (4, 32, 64)
    with pytest.raises(DataError, match="queries only"):
        enc.encode(x, projection="decoder")
    with pytest.raises(DataError, match="projection"):
        enc.encode_queries(x, projection="sideways")


def test_decoder_projection_survives_save_load(tmp_path):
    x, _ = clustered(20, 8)
    enc = tiny_encoder(k=2, query_projection="decoder")
    enc.save(tmp_path / "m")
    back = CSREncoder.load(tmp_path / "m", device="cpu")
    assert back.config.query_projection == "decoder"
    np.testing.assert_allclose(back.encode_queries(x).values, enc.encode_queries(x).values, rtol=0, atol=1e-6)
    # a config written before the field existed loads as the encoder projection
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["csr_config"]
    assert CSRConfig(**{k: v for k, v in cfg.items() if k != "query_projection"}).query_projection == "encoder"


def test_normalize_codes_gives_unit_rows():
    x, _ = clustered(30, 8)
    codes = tiny_encoder(k=4, normalize_codes=True).encode(x)
    assert np.allclose(np.linalg.norm(codes.values, axis=1), 1.0, atol=1e-6)


def test_input_dtypes_and_tensors_give_the_same_codes():
    x, _ = clustered(30, 8)
    enc = tiny_encoder()
    ref = enc.encode(x)
    assert enc.encode(x.astype(np.float64)).equals(ref, atol=1e-6)
    assert enc.encode(torch.from_numpy(x)).equals(ref, atol=1e-6)
    assert enc.encode(x, batch_size=7).equals(ref, atol=1e-6)  # BLAS blocking may change the last ulp
    assert enc.encode(x[0]).equals(ref[:1], atol=1e-6)  # a single vector
    half = enc.encode(x.astype(np.float16))
    assert len(half) == 30


@pytest.mark.parametrize(
    "bad, rows",
    [("nan", [3]), ("inf", [1, 4]), ("zero", [2])],
)
def test_bad_input_raises_data_error_naming_rows(bad, rows):
    x, _ = clustered(6, 8)
    for r in rows:
        x[r] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    with pytest.raises(DataError) as err:
        tiny_encoder().encode(x)
    assert err.value.rows == rows
    assert str(rows[0]) in str(err.value)


def test_wrong_dim_and_empty_input():
    enc = tiny_encoder()
    with pytest.raises(DataError, match="dimension 7, expected 8"):
        enc.encode(np.ones((3, 7), np.float32))
    with pytest.raises(DataError, match="empty"):
        enc.encode(np.zeros((0, 8), np.float32))
    with pytest.raises(DataError, match="kind"):
        enc.encode(np.ones((1, 8)), kind="passage")


def test_decode_reconstructs_from_codes():
    x, _ = clustered(20, 8)
    enc = tiny_encoder(k=32)  # all latents: the tied, unit-norm init is a (redundant) frame
    codes = enc.encode(x)
    xh = enc.decode(codes)
    assert xh.shape == (20, 8) and xh.dtype == np.float32
    ref = enc.decode_sparse(torch.from_numpy(codes.indices), torch.from_numpy(codes.values)).detach().numpy()
    assert np.allclose(xh, ref, atol=1e-6)
    with pytest.raises(DataError, match="hidden_dim"):
        tiny_encoder(hidden_dim=16).decode(codes)


def test_forward_is_differentiable():
    x, _ = clustered(16, 8)
    enc = tiny_encoder()
    idx, vals, xh = enc(torch.from_numpy(x))
    assert idx.shape == (16, 2) and vals.shape == (16, 2) and xh.shape == (16, 8)
    (xh - torch.from_numpy(x)).pow(2).sum().backward()
    assert enc.W_enc.grad is not None and enc.W_dec.grad is not None and enc.b_pre.grad is not None


def test_save_load_round_trip_is_bit_identical(tmp_path):
    x, _ = clustered(64, 8)
    enc = tiny_encoder(k=3, k_query=5, source_collection="docs", source_model="mini")
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(0)))
        enc.b_enc.normal_()
    enc.training_report = {"steps": 3}
    enc.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE}
    meta = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert meta["weights_sha256"] == sha256_file(tmp_path / "m" / WEIGHTS_FILE)
    assert meta["csr_config"]["k_query"] == 5
    back = CSREncoder.load(tmp_path / "m", device="cpu")
    assert back.config == enc.config
    assert back.training_report == {"steps": 3}
    a, b = enc.encode(x), back.encode(x)
    assert np.array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-6)
    qa, qb = enc.encode_queries(x), back.encode_queries(x)
    np.testing.assert_allclose(qa.values, qb.values, rtol=0, atol=1e-6)
    # saving again gives the same checksum (deterministic bytes)
    c1 = model_checksum(tmp_path / "m")
    back.save(tmp_path / "m2")
    assert model_checksum(tmp_path / "m2") == c1


def _saved(tmp_path):
    d = tmp_path / "m"
    tiny_encoder().save(d)
    return d


def _fix_checksum(d):
    meta = json.loads((d / CONFIG_FILE).read_text())
    meta["weights_sha256"] = sha256_file(d / WEIGHTS_FILE)
    (d / CONFIG_FILE).write_text(json.dumps(meta))


def test_load_missing_folder_and_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        CSREncoder.load(tmp_path / "nope")
    d = _saved(tmp_path)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match="missing"):
        CSREncoder.load(d)


def test_load_corrupt_json(tmp_path):
    d = _saved(tmp_path)
    (d / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="corrupt model config"):
        CSREncoder.load(d)
    (d / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a csr-vdb model"):
        CSREncoder.load(d)


def test_load_checksum_mismatch(tmp_path):
    d = _saved(tmp_path)
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        CSREncoder.load(d)


def test_load_truncated_weights(tmp_path):
    d = _saved(tmp_path)
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    _fix_checksum(d)  # get past the checksum: the safetensors parser must refuse it
    with pytest.raises(ModelError, match="corrupt or truncated"):
        CSREncoder.load(d)


def test_load_shapes_that_do_not_fit_the_config(tmp_path):
    d = _saved(tmp_path)
    meta = json.loads((d / CONFIG_FILE).read_text())
    meta["csr_config"]["hidden_dim"] = 64
    (d / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="shape"):
        CSREncoder.load(d)


def test_load_invalid_config_and_version(tmp_path):
    d = _saved(tmp_path)
    meta = json.loads((d / CONFIG_FILE).read_text())
    meta["csr_config"]["k"] = 100  # > hidden_dim
    (d / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="invalid model config"):
        CSREncoder.load(d)
    meta["csr_config"]["k"] = 2
    meta["format_version"] = 99
    (d / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="format_version"):
        CSREncoder.load(d)
