"""bench/common.py: the numpy stand-in encoder, the placeholder model folder, result output."""

from __future__ import annotations

import json
import math

import numpy as np

from bench.common import ProjectionEncoder, emit, percent_of, placeholder_model
from csr_vdb.fileutil import model_checksum
from tests.helpers import clustered


def test_projection_encoder_is_a_deterministic_top_k_of_abs_xw():
    x, _ = clustered(20, 16)
    enc = ProjectionEncoder(16, hidden_dim=64, k=4)
    codes = enc(x)
    assert (codes.dim, codes.width, len(codes)) == (64, 4, 20) and enc.hidden == 64
    z = np.abs(x @ enc.w)
    # the kept entries are each row's 4 largest |x W|, with their values
    np.testing.assert_allclose(np.sort(codes.values, axis=1), np.sort(z, axis=1)[:, -4:], rtol=1e-6)
    assert codes.equals(ProjectionEncoder(16, hidden_dim=64, k=4)(x), atol=1e-6)  # same seed, same W
    assert enc(x, k=2).width == 2 and enc.calls == 2
    assert not np.allclose(ProjectionEncoder(16, 64, 4, seed=8).w, enc.w)


def test_placeholder_model_has_the_checksummed_files(tmp_path):
    a = placeholder_model(tmp_path / "a")
    b = placeholder_model(tmp_path / "b", b"other")
    assert {p.name for p in a.iterdir()} == {"model.safetensors", "config.json"}
    assert model_checksum(a) != model_checksum(b)


def test_emit_prints_and_writes_json(tmp_path, capsys):
    emit({"x": 1}, "a table", tmp_path / "deep" / "r.json")
    assert capsys.readouterr().out == "a table\n"
    assert json.loads((tmp_path / "deep" / "r.json").read_text()) == {"x": 1}
    emit({"x": 2}, "again", None)  # no --out: print only
    assert capsys.readouterr().out == "again\n"
    assert percent_of(1.0, 4.0) == 25.0 and math.isnan(percent_of(1.0, 0.0))
