"""bench/train_speed.py: a tiny in-memory case runs in its own process and reports rows/s and peak memory."""

from __future__ import annotations

import json

import pytest

from bench import train_speed


@pytest.mark.slow
def test_train_speed_bench_reports_a_case(tmp_path, capsys):
    out = tmp_path / "t.json"
    train_speed.main(["--rows", "3000", "--epochs", "1", "--dim", "16", "--hidden-dim", "64", "--k", "4",
                      "--batch-size", "500", "--threads", "1", "--device", "cpu", "--out", str(out)])
    (res,) = json.loads(out.read_text())["results"]
    # the trainer's default 5% validation hold-out is not trained on
    assert res["case"] == "memory 3000" and 2700 < res["rows_trained"] < 3000 and res["steps"] == 6
    assert res["rows_per_s_wall"] > 0 and res["peak_rss_mb"] > 0 and res["hidden_dim"] == 64
    assert len(res["epochs"]) == 1 and res["epochs"][0]["rows"] == res["rows_trained"]
    assert "memory 3000" in capsys.readouterr().out


def test_clustered_rows_are_unit_vectors_in_chunks():
    chunks = list(train_speed.clustered_rows(250, 8, 4, seed=0, chunk=100))
    assert [c.shape for c in chunks] == [(100, 8), (100, 8), (50, 8)]
    norms = [float(abs((c * c).sum(1) - 1).max()) for c in chunks]
    assert max(norms) < 1e-5
