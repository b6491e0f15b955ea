"""bench/migrate.py: the engine and the raw insert both run on a real store, and the JSON has its schema."""

from __future__ import annotations

import json

import pytest

from bench import migrate


@pytest.mark.parametrize("encode", ["lookup", "projection"])
def test_migrate_bench_on_the_memory_store(tmp_path, capsys, encode):
    out = tmp_path / "m.json"
    argv = ["--store", "memory", "--rows", "1200", "--batch-size", "500", "--hidden-dim", "512", "--k", "8",
            "--encode", encode, "--out", str(out)]
    assert migrate.main(argv) == 0
    res = json.loads(out.read_text())
    assert (res["rows"], res["batch_size"], res["encode"], res["hidden_dim"]) == (1200, 500, encode, 512)
    assert res["batches"] == 3
    for key in ("raw_rows_per_s", "migrate_rows_per_s", "ratio", "ratio_without_flush"):
        assert res[key] > 0
    assert "migrate rows/s" in capsys.readouterr().out


def test_source_rows_match_their_codes():
    ids, x, payloads, codes = migrate.source_rows(50, 256, 8)
    assert ids == list(range(50)) and x.shape == (50, migrate.DIM) and len(payloads) == 50
    assert (codes.dim, codes.width, len(codes)) == (256, 8, 50)
