"""CLI test fixtures: a small dense collection in each embedded engine, and a CliRunner wrapper."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from csr_vdb.adapters import open_store
from csr_vdb.cli.main import main
from tests.helpers import clustered

ROWS, DIM = 300, 16
EMBEDDED = ["milvus", "qdrant-edge"]
TINY = ["--hidden-dim", "64", "--k", "4", "--epochs", "2"]


def uri_for(kind: str, root: Path) -> str:
    return str(root / ("src.db" if kind == "milvus" else "qdrant"))


def make_source(kind: str, uri: str, rows: int = ROWS, name: str = "docs") -> tuple[np.ndarray, list[int], list[dict]]:
    """A clustered cosine collection with int ids and payloads; the store is closed afterwards."""
    x, labels = clustered(rows, DIM, 6, seed=11)
    ids = [10 + 3 * i for i in range(rows)]
    payloads = [{"label": int(lab), "text": f"passage {i}", "tags": ["a", str(i % 3)]} for i, lab in enumerate(labels)]
    store = open_store(kind, uri)
    try:
        store.create_dense_collection(name, DIM, metric="cosine")
        for s in range(0, rows, 100):
            store.insert_dense(name, ids[s : s + 100], x[s : s + 100], payloads[s : s + 100])
        store.flush(name)
    finally:
        store.close()
    return x, ids, payloads


@dataclass
class Cli:
    """Runs `csr-vdb` in-process in a clean directory with a fixed store/uri environment."""

    kind: str
    uri: str
    cwd: Path

    def env(self, **extra: str) -> dict[str, Any]:
        base = {
            "CSR_VDB_STORE": self.kind, "CSR_VDB_URI": self.uri, "CSR_VDB_STATE_DIR": str(self.cwd / "state"),
            "CSR_VDB_DEVICE": "cpu", "CSR_VDB_CONFIG": None, "CSR_VDB_MILVUS_URI": None,
            "CSR_VDB_QDRANT_URL": None, "CSR_VDB_MILVUS_TOKEN": None, "CSR_VDB_QDRANT_API_KEY": None,
        }
        base.update(extra)
        return base

    def run(self, *args: str, code: int = 0, env: dict[str, Any] | None = None) -> Any:
        runner = CliRunner()
        res = runner.invoke(main, list(args), env=self.env(**(env or {})), catch_exceptions=False)
        assert res.exit_code == code, f"csr-vdb {' '.join(args)} -> {res.exit_code}\n{res.output}"
        return res

    def json(self, *args: str, code: int = 0) -> Any:
        res = self.run(*args, "--json", code=code)
        return json.loads(res.stdout)

    def open(self) -> Any:
        return open_store(self.kind, self.uri)


@pytest.fixture
def cli_factory(tmp_path, monkeypatch):
    """Make a `Cli` for a store kind with a fresh source collection in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)  # no stray ./csr-vdb.toml, relative defaults land in tmp

    def make(kind: str, rows: int = ROWS) -> tuple[Cli, tuple[np.ndarray, list[int], list[dict]]]:
        uri = uri_for(kind, tmp_path)
        data = make_source(kind, uri, rows)
        return Cli(kind, uri, tmp_path), data

    return make


def trained_source(root: Path, kind: str = "qdrant-edge", rows: int = 150) -> tuple[str, np.ndarray, list[int], Any]:
    """A source collection under ``root`` and a tiny encoder trained on it in ``root/model`` (the store is
    closed again); returns ``(uri, vectors, ids, TrainSummary)``."""
    from csr_vdb.cli.ops import train_model

    uri = uri_for(kind, root)
    x, ids, _ = make_source(kind, uri, rows)
    store = open_store(kind, uri)
    try:
        summary = train_model(root / "model", store=store, collection="docs", work_dir=root / "state",
                              hidden_dim=64, k=4, epochs=2, device="cpu")
    finally:
        store.close()
    return uri, x, ids, summary
