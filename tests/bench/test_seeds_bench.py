"""bench/seeds.py trains one recipe model per seed on tiny synthetic folders and writes its JSON and table."""

from __future__ import annotations

import json

import pytest

from bench import seeds
from tests.helpers import write_bench_data


@pytest.mark.slow
def test_seeds_bench_scores_every_seed(tmp_path, capsys):
    write_bench_data(tmp_path / "data")
    out = tmp_path / "res" / "seeds.json"
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(out), "--seeds", "0,1", "--k", "4",
            "--hidden-dim", "64", "--quick", "--threads", "1"]
    assert seeds.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"banking77", "tinybeir"}
    for r in res.values():
        assert r["seeds"] == [0, 1] and r["k"] == 4
        for key in seeds.METHODS:
            assert set(r[key]) == {"0", "1"}
            assert all(0.0 <= v <= 1.0 for v in r[key].values())
            summ = r["summary"][key]
            assert summ["min"] <= summ["mean"] <= summ["max"]
            assert summ["min"] == min(r[key].values()) and summ["max"] == max(r[key].values())
        assert all(s > 0 for s in r["train_s"].values())
    # codes carry real signal, far above chance (1/8 labels)
    assert all(v > 0.5 for v in res["banking77"]["csr"].values())
    printed = capsys.readouterr().out
    assert "seed 0" in printed and "search + re-score (recipe)" in printed


def test_seeds_bench_rejects_an_empty_folder(tmp_path):
    assert seeds.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2


def test_seeds_bench_needs_a_seed(tmp_path):
    write_bench_data(tmp_path / "data")
    assert seeds.main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o.json"), "--seeds", ","]) == 2
