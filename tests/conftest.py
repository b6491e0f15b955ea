"""Shared fixtures: the real-data folder (skip without it), a `milvus-lite server` a test may kill and restart,
and the CUDA skip; tiny builders are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting are ~5x slower on a shared, oversubscribed CPU; must be set
# before torch is first imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$CSR_VDB_DATA_DIR`` or ``../shared/data`` beside the checkout, if present."""
    env = os.environ.get("CSR_VDB_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data not found: set CSR_VDB_DATA_DIR or place ../shared/data beside the checkout")
    return d


@pytest.fixture
def milvus_server(tmp_path):
    """A `milvus-lite server` of this test's own (data under tmp_path, a free port), started; the test
    may `kill` and `restart` it. Skipped where the executable is missing or the server cannot start."""
    from tests.helpers import MilvusLiteServer

    try:
        server = MilvusLiteServer(tmp_path / "milvus-server").start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.kill()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
