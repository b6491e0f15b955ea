"""Helpers the bench scripts share: a numpy stand-in encoder, result output, a placeholder model folder,
a `milvus-lite server` process that can be killed and restarted."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.sparse import SparseVectors


class ProjectionEncoder:
    """Deterministic numpy stand-in for a CSR encoder: ``|x W|`` with a fixed random ``W [dim, hidden_dim]``, top-k.

    Fast and torch-free, so that a benchmark or test of the migration engine measures the engine
    and the store, not the encoder. ``calls`` counts the batches encoded.

    Args:
        dim: dimension of the dense vectors.
        hidden_dim: dimension of the codes.
        k: non-zeros per code (a call may ask for another ``k``).
        seed: seed of ``W``.
    """

    def __init__(self, dim: int, hidden_dim: int = 64, k: int = 4, seed: int = 7) -> None:
        self.w = np.random.default_rng(seed).normal(size=(dim, hidden_dim)).astype(np.float32)
        self.k = k
        self.hidden_dim = hidden_dim
        self.calls = 0

    @property
    def hidden(self) -> int:
        """Deprecated spelling of `hidden_dim`."""
        return self.hidden_dim

    def __call__(self, x: np.ndarray, k: int | None = None) -> SparseVectors:
        self.calls += 1
        z = np.abs(np.asarray(x, np.float32) @ self.w)
        k = k or self.k
        idx = np.argpartition(-z, k - 1, axis=1)[:, :k]
        return SparseVectors(idx, np.take_along_axis(z, idx, axis=1), self.hidden_dim)


def placeholder_model(directory: str | Path, weights: bytes = b"bench") -> Path:
    """A folder with the two files a `MigrationPlan` checksums (the engine never loads the model itself)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{}")
    return path


def percent_of(value: float, reference: float) -> float:
    """``100 * value / reference`` (nan when the reference is 0)."""
    return 100.0 * value / reference if reference else math.nan


def write_json(path: str | Path, result: Any) -> None:
    """Write ``result`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def emit(result: Any, text: str, out: str | Path | None) -> None:
    """Print a script's table and, with ``--out``, write its result as JSON."""
    print(text)
    if out:
        write_json(out, result)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusLiteServer:
    """A ``milvus-lite server`` process on a loopback port and a data folder of its own: the Milvus
    server code path without Docker, which a fault test can SIGKILL and restart on the same data.

    Args:
        data_dir: the server's data folder (created).
        port: the port (default: a free one, kept across restarts).
        start_timeout: seconds to wait for the port to open.

    Raises:
        RuntimeError: no ``milvus-lite`` executable beside the interpreter, or the server did not
            open its port in time.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, start_timeout: float = 120.0) -> None:
        self.exe = Path(sys.executable).with_name("milvus-lite")
        if not self.exe.exists():
            raise RuntimeError(f"no milvus-lite executable at {self.exe}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MilvusLiteServer:
        """Start the server (on the same data and port as before) and wait until it accepts connections."""
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            [str(self.exe), "server", "--data-dir", str(self.data_dir / "db"), "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode} (see {self.data_dir}/server.log)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"milvus-lite server did not open port {self.port} (see {self.data_dir}/server.log)")

    def kill(self) -> None:
        """SIGKILL the server and its children (a crash, as a fault test wants it)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def restart(self) -> MilvusLiteServer:
        """Kill (if running) and start again on the same data folder and port."""
        self.kill()
        return self.start()

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
