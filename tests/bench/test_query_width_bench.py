"""bench/query_width.py: the width x candidates grid and the chosen widths on the real sets (random encoders)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from csr_vdb.config import CSRConfig
from bench.loaders import load_banking77_dir, load_beir_dir
from csr_vdb.model import CSREncoder
from tests.conftest import REPO


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_query_width", REPO / "bench" / "query_width.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _encoder(x: np.ndarray, path) -> str:
    torch.manual_seed(0)
    enc = CSREncoder(CSRConfig(input_dim=384, hidden_dim=256, k=8, normalize_codes=True, query_projection="decoder",
                               doc_codes="pursuit", bias_latent=True), device="cpu")
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(np.asarray(x).mean(axis=0)))
    enc.save(path)
    return str(path)


@pytest.mark.realdata
@pytest.mark.slow
def test_query_width_bench_on_the_real_sets(data_dir, tmp_path, capsys):
    if not (data_dir / "scifact").is_dir() or not (data_dir / "banking77").is_dir():
        pytest.skip("needs scifact/ and banking77/ under the data folder")
    bench = _load_bench()
    sci = _encoder(load_beir_dir(data_dir / "scifact").corpus_x, tmp_path / "s")
    bank = _encoder(load_banking77_dir(data_dir / "banking77").train_x, tmp_path / "b")
    out = tmp_path / "qw.json"
    argv = ["--data-dir", str(data_dir), "--scifact-model", sci, "--banking77-model", bank, "--widths", "64,8",
            "--candidates", "20,40", "--select", "magnitude,cost", "--threads", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"scifact", "banking77"}
    assert res["scifact"]["dense"] == pytest.approx(0.6451, abs=1e-3)
    for r in res.values():
        assert len(r["cells"]) == 2 * 2 * 2
        by = {(c["select"], c["width"], c["candidates"]): c for c in r["cells"]}
        for c in r["cells"]:
            assert 0.0 <= c["value"] <= 1.0 and c["postings_per_row"] > 0
        # a narrower query walks fewer postings; the cost selection walks no more than magnitude
        assert by[("magnitude", 8, 20)]["postings_per_row"] < by[("magnitude", 64, 20)]["postings_per_row"]
        assert by[("cost", 8, 20)]["postings_per_row"] <= by[("magnitude", 8, 20)]["postings_per_row"]
        assert {(c["candidates"], c["floor"]) for c in r["chosen"]} == {(20, 0.99), (20, 0.98), (40, 0.99), (40, 0.98)}
    assert "chosen widths" in capsys.readouterr().out


def test_query_width_bench_needs_a_data_folder(tmp_path):
    assert _load_bench().main(["--data-dir", str(tmp_path)]) == 2
