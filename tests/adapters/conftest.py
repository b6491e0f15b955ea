"""Store fixtures for the contract suite: every `VectorStore` kind behind one parametrised `store`.

Kinds:
- ``memory``: `MemoryStore`, the reference implementation.
- ``milvus-lite``: `MilvusStore` on a temporary ``.db`` file (the embedded default).
- ``milvus-server``: `MilvusStore` on ``http://127.0.0.1:P`` served by ``milvus-lite server``
  (the server code path without Docker; one process per test session).
- ``qdrant-edge``: `QdrantEdgeStore` on a temporary directory.
- ``qdrant-local``: `QdrantStore` in qdrant-client's local mode on a temporary directory.
- ``milvus-docker`` / ``qdrant-docker``: testcontainers, marked ``docker``; skipped at once when no
  Docker daemon answers.
- ``milvus-external`` / ``qdrant-external``: a server named by ``CSR_VDB_MILVUS_URI``
  (+ ``CSR_VDB_MILVUS_TOKEN``) / ``CSR_VDB_QDRANT_URL`` (+ ``CSR_VDB_QDRANT_API_KEY``); skipped when unset.

Server kinds share one server per session, so every test takes its collection names from
``make_name`` (unique per test) and they are dropped at teardown.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csr_vdb.adapters.base import VectorStore

LOCAL_KINDS = ["memory", "milvus-lite", "milvus-server", "qdrant-edge", "qdrant-local"]
REMOTE_KINDS = [
    pytest.param("milvus-docker", marks=pytest.mark.docker),
    pytest.param("qdrant-docker", marks=pytest.mark.docker),
    "milvus-external",
    "qdrant-external",
]
ALL_KINDS = LOCAL_KINDS + REMOTE_KINDS

# Kinds whose data lives outside the test's tmp dir: collections must be dropped explicitly.
SHARED_KINDS = {"milvus-server", "milvus-docker", "qdrant-docker", "milvus-external", "qdrant-external"}

# external servers: kind -> (adapter, variable naming the URI, variable holding the token / API key)
EXTERNAL = {
    "milvus-external": ("milvus", "CSR_VDB_MILVUS_URI", "CSR_VDB_MILVUS_TOKEN"),
    "qdrant-external": ("qdrant", "CSR_VDB_QDRANT_URL", "CSR_VDB_QDRANT_API_KEY"),
}

_MODULES = {
    "milvus": "csr_vdb.adapters.milvus",
    "qdrant": "csr_vdb.adapters.qdrant",
    "qdrant-edge": "csr_vdb.adapters.qdrant_edge",
}


def adapter_module(family: str):
    """Import an adapter module, skipping the test while that adapter does not exist yet."""
    name = _MODULES[family]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            pytest.skip("adapter not written yet")
        raise


@functools.cache
def docker_available() -> bool:
    """True when a Docker daemon answers a ping within 3 s (asked once per session)."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def milvus_lite_server(tmp_path_factory) -> Iterator[str]:
    """``http://127.0.0.1:P`` of a ``milvus-lite server`` subprocess, killed at session end."""
    exe = Path(sys.executable).with_name("milvus-lite")
    if not exe.exists():
        pytest.skip("milvus-lite executable not found beside the Python interpreter")
    data = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not _wait_for_port(port, proc, timeout=30):
            pytest.skip(f"milvus-lite server did not start (see {data / 'server.log'})")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _need_docker() -> None:
    if not docker_available():
        pytest.skip("no Docker daemon answers")


@pytest.fixture(scope="session")
def milvus_container() -> Iterator[str]:
    """URI of a Milvus standalone container (testcontainers)."""
    _need_docker()
    from testcontainers.community.milvus import MilvusContainer

    with MilvusContainer() as c:
        yield c.get_connection_url()


@pytest.fixture(scope="session")
def qdrant_container() -> Iterator[str]:
    """REST URL of a Qdrant container (testcontainers)."""
    _need_docker()
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer() as c:
        yield f"http://{c.rest_host_address}"


def open_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    """Open a fresh store of ``kind`` (skipping when its adapter or server is unavailable)."""
    if kind == "memory":
        from csr_vdb.adapters.memory import MemoryStore

        return MemoryStore()
    if kind == "milvus-lite":
        return adapter_module("milvus").MilvusStore(str(tmp_path / "milvus.db"))
    if kind == "milvus-server":
        mod = adapter_module("milvus")
        return mod.MilvusStore(request.getfixturevalue("milvus_lite_server"))
    if kind == "qdrant-edge":
        return adapter_module("qdrant-edge").QdrantEdgeStore(str(tmp_path / "edge"))
    if kind == "qdrant-local":
        return adapter_module("qdrant").QdrantStore(str(tmp_path / "qdrant"))
    if kind == "milvus-docker":
        mod = adapter_module("milvus")
        return mod.MilvusStore(request.getfixturevalue("milvus_container"), timeout=30)
    if kind == "qdrant-docker":
        mod = adapter_module("qdrant")
        return mod.QdrantStore(request.getfixturevalue("qdrant_container"), timeout=30)
    if kind in EXTERNAL:
        family, uri_var, secret_var = EXTERNAL[kind]
        uri = os.environ.get(uri_var)
        if not uri:
            pytest.skip(f"{uri_var} is not set")
        cls = {"milvus": "MilvusStore", "qdrant": "QdrantStore"}[family]
        return getattr(adapter_module(family), cls)(uri, os.environ.get(secret_var), timeout=30)
    raise ValueError(f"unknown store kind {kind!r}")


@pytest.fixture(params=ALL_KINDS)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store(store_kind, request, tmp_path) -> Iterator[VectorStore]:
    """A fresh store of every kind; collections named by ``make_name`` are dropped afterwards."""
    s = open_kind(store_kind, request, tmp_path)
    request.node.stash[_STORE] = s
    yield s
    try:
        names = request.node.stash.get(_NAMES, [])
        for drop in (s.drop_alias, s.drop):  # aliases first: Milvus refuses to drop an aliased collection
            for name in names:
                try:
                    drop(name)
                except Exception:  # teardown must not hide the test's own failure
                    pass
    finally:
        s.close()


_STORE = pytest.StashKey[VectorStore]()
_NAMES = pytest.StashKey[list]()


@pytest.fixture
def make_name(request) -> Callable[[str], str]:
    """``make_name("src")`` -> a collection/alias name unique to this test (dropped at teardown)."""
    tag = uuid.uuid4().hex[:8]
    names: list[str] = []
    request.node.stash[_NAMES] = names

    def make(suffix: str = "c") -> str:
        name = f"t{tag}_{suffix}"
        names.append(name)
        return name

    return make
