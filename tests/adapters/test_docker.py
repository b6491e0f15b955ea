"""Real servers in containers (testcontainers): skipped at once without a Docker daemon.

The shared contract runs on the ``milvus-docker`` / ``qdrant-docker`` kinds too (see conftest.py);
these tests add what only a separate server process shows: the Docker probe itself, and writes
made by one client being visible to another client of the same server.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from tests.adapters import conftest as fx
from tests.adapters.test_contract import assert_ranked, codes_for
from tests.helpers import clustered


def test_docker_probe_is_quick_and_cached():
    fx.docker_available.cache_clear()
    t0 = time.monotonic()
    first = fx.docker_available()
    assert time.monotonic() - t0 < 5.0  # ping timeout is 3 s
    t1 = time.monotonic()
    assert fx.docker_available() is first
    assert time.monotonic() - t1 < 0.01


def _two_clients_see_the_same_data(open_one) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    x, _ = clustered(50, 16, seed=7)
    ids = list(range(50))
    a, b = open_one(), open_one()
    try:
        a.create_dense_collection(name, 16, metric="ip")
        a.insert_dense(name, ids, x, [{"i": i} for i in ids])
        a.create_sparse_collection(name + "_csr", like=name)
        a.upsert(name + "_csr", ids, codes_for(x), [{"i": i} for i in ids], dense=x)
        a.flush(name + "_csr")
        a.set_alias(name + "_live", name + "_csr")
        assert b.count(name + "_live") == 50
        got = [i for p in b.iter_dense(name, batch_size=16) for i in p.ids]
        assert got == ids
        qc, codes = codes_for(x[:3]), codes_for(x)
        exact = (qc.to_scipy() @ codes.to_scipy().T).toarray()
        assert_ranked(b.search_sparse(name + "_live", qc, limit=5), exact, ids, 5, positive_only=True)
        rec = b.fetch(name + "_live", [7], with_dense=True, with_sparse=True)[0]
        np.testing.assert_array_equal(rec.dense, x[7])
        assert rec.payload == {"i": 7}
    finally:
        a.drop_alias(name + "_live")
        a.drop(name + "_csr")
        a.drop(name)
        a.close()
        b.close()


@pytest.mark.docker
def test_milvus_container_two_clients(milvus_container):
    mod = fx.adapter_module("milvus")
    _two_clients_see_the_same_data(lambda: mod.MilvusStore(milvus_container, timeout=30))


@pytest.mark.docker
def test_qdrant_container_two_clients(qdrant_container):
    mod = fx.adapter_module("qdrant")
    _two_clients_see_the_same_data(lambda: mod.QdrantStore(qdrant_container, timeout=30))


def test_milvus_lite_server_two_clients(milvus_lite_server):
    """The same check without Docker, on a `milvus-lite server` process."""
    mod = fx.adapter_module("milvus")
    _two_clients_see_the_same_data(lambda: mod.MilvusStore(milvus_lite_server))
