"""Fixtures for the migration tests: stores of every kind, a source collection, a numpy encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from tests.helpers import ProjectionEncoder, clustered  # noqa: F401  (ProjectionEncoder: used by the migration tests)

REPO = Path(__file__).resolve().parents[2]


def spawn(module: str, *args: str, **popen) -> subprocess.Popen:
    """``python -m <module> <args>`` in a process of its own, from the checkout, on one torch thread;
    stdout piped, stderr merged into it unless ``popen`` says otherwise."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    opts = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, **opts)


def store_uri(kind: str, tmp: Path) -> str:
    return {"milvus": str(tmp / "m.db"), "qdrant-edge": str(tmp / "edge"), "qdrant": str(tmp / "q"),
            "memory": "memory://"}[kind]


def fill_source(store, name: str, n: int, dim: int = 16, id_type: str = "int", seed: int = 0, step: int = 2000):
    """A dense collection of ``n`` clustered rows with varied payloads; returns (ids, x, payloads)."""
    x, labels = clustered(n, dim, clusters=8, seed=seed)
    ids = [i * 3 + 1 for i in range(n)] if id_type == "int" else [f"doc-{i:06d}" for i in range(n)]
    payloads = [{"label": int(labels[i]), "text": f"row {i} é", "tags": ["a", str(i % 3)]} for i in range(n)]
    store.create_dense_collection(name, dim, metric="cosine", id_type=id_type)
    for s in range(0, n, step):
        store.insert_dense(name, ids[s : s + step], x[s : s + step], payloads[s : s + step])
    store.flush(name)
    return ids, x, payloads


def export(store, name: str, batch: int = 1000) -> str:
    """A checksum of a collection's full content (ids, vectors, payloads) in id order."""
    import hashlib

    h = hashlib.sha256()
    for page in store.iter_dense(name, batch):
        h.update(json.dumps([page.ids, page.payloads], sort_keys=True).encode())
        h.update(np.ascontiguousarray(page.vectors, np.float32).tobytes())
    return h.hexdigest()


def rows_of(store, name: str, vector_field: str = "vector") -> dict:
    """id -> (vector, payload) of a whole collection."""
    out = {}
    for page in store.iter_dense(name, 500, vector_field=vector_field):
        for i, v, p in zip(page.ids, page.vectors, page.payloads):
            out[i] = (v, p)
    return out


def assert_target_equals_source(store, plan, enc=None) -> None:
    """Row for row: the same ids, payloads and dense vectors, and every code equal to a re-encode."""
    src, tgt = rows_of(store, plan.source), rows_of(store, plan.target)
    assert sorted(map(str, src)) == sorted(map(str, tgt))
    for i, (v, p) in src.items():
        assert tgt[i][1] == p, i
        np.testing.assert_allclose(tgt[i][0], v, rtol=1e-5, atol=1e-6)
    if not src:
        return
    enc = enc or ProjectionEncoder(next(iter(src.values()))[0].shape[0])
    ids = list(src)
    want = enc(np.stack([src[i][0] for i in ids])).to_qdrant()
    got = {r.id: r.sparse for r in store.fetch(plan.target, ids, with_sparse=True)}
    for i, (wi, wv) in zip(ids, want):
        assert list(got[i][0]) == wi and np.allclose(got[i][1], wv, atol=1e-5), i


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with the two files model_checksum reads (the engine never loads the model itself)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights-v1")
    (d / "config.json").write_text(json.dumps({"input_dim": 16, "hidden_dim": 64, "k": 4}))
    return d


@pytest.fixture(params=["memory", "milvus", "qdrant-edge"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store(store_kind, tmp_path):
    s = open_store(store_kind, store_uri(store_kind, tmp_path))
    yield s
    s.close()
