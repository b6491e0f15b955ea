"""bench/faults.py: mixed migrator and server SIGKILLs during a migration on a `milvus-lite server`
end in an exact target; the JSON reports every fault and the checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import faults


@pytest.mark.slow
def test_faults_bench_survives_both_kinds_exactly(tmp_path, capsys):
    if not Path(sys.executable).with_name("milvus-lite").exists():
        pytest.skip("milvus-lite executable not found beside the Python interpreter")
    out = tmp_path / "faults.json"
    # 50 batches of at least 0.2 s: both faults land while the migration runs, whatever the machine's speed
    argv = ["--rows", "2500", "--faults", "2", "--batch-size", "50", "--retries", "2", "--timeout", "3",
            "--pace-s", "0.2", "--out", str(out)]
    assert faults.main(argv) == 0, capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["ok"] and res["rows"] == res["target_rows"] == 2500
    for check in ("exact_id_set", "payloads_identical", "dense_identical", "codes_identical", "source_unchanged",
                  "journaled_once", "verify_ok"):
        assert res[check] is True, check
    assert res["duplicates"] == 0 and res["final_worker_rc"] == 0
    assert sorted(f["kind"] for f in res["faults"]) == ["migrator", "server"]
    for f in res["faults"]:
        assert f["noticed_s"] is not None and f["noticed_s"] >= 0 and f["outcome"]
        assert f["at_rows"] < 2500 and f["recovered_s"] is not None, f  # mid-run, and the run went on
        if f["outcome"].startswith("exit"):  # the worker gave up past its retry budget: one error line
            assert f["outcome"].startswith("exit 5") and f["error_line"].startswith("error: ")
    summary = res["summary"]
    assert (summary["faults"], summary["migrator_kills"], summary["server_kills"]) == (2, 1, 1)
    assert summary["ridden_out"] + summary["exit_5"] == 1
    assert "noticed s" in capsys.readouterr().out
