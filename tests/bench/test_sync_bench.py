"""bench/sync.py: migration and syncs run on a real store, the syncs find exactly the changes made, and the
JSON has its schema."""

from __future__ import annotations

import json

import pytest

from bench import sync


@pytest.mark.parametrize("store", ["memory", "qdrant-edge"])
def test_sync_bench_counts_the_changes_it_made(tmp_path, capsys, store):
    out = tmp_path / "s.json"
    argv = ["--store", store, "--rows", "900", "--batch-size", "200", "--change", "0.02", "--encode", "projection",
            "--out", str(out)]
    if store != "memory":
        argv += ["--uri", str(tmp_path / "edge")]
    assert sync.main(argv) == 0
    res = json.loads(out.read_text())
    assert (res["rows"], res["changed_rows"], res["encode"]) == (900, 18, "projection")
    for mode in ("changed_field", "full"):
        made, got = res["changes_made"][mode], res[f"sync_{mode}"]
        assert got["inserts"] == made["inserts"] and got["deletes"] == made["deletes"]
        assert got["reencodes"] == made["vector"] + made["both"] and got["payload_updates"] == made["payload"]
    assert res["sync_full"]["rows_read"] == 900 and res["first_sync_rows_read"] == 900
    assert res["sync_changed_field"]["rows_read"] <= 13  # the 12 new or rewritten rows and the one at the mark
    for key in ("migrate_s", "sync_full_s", "sync_changed_field_s", "ratio_full", "ratio_changed_field"):
        assert res[key] > 0
    assert "sync s (full)" in capsys.readouterr().out


def test_model_encoder_is_saved_where_the_plan_reads_it(tmp_path):
    encode, folder = sync.make_encoder("model", 1000, tmp_path / "m")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    x = sync.make_dense(3, sync.DIM, seed=0)
    assert len(encode(x)) == 3
