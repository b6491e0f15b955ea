"""Helpers the bench scripts share: a numpy stand-in encoder, result output, a placeholder model folder,
a collection checksum, a journal peek, a `milvus-lite server` process that can be killed and restarted."""

from __future__ import annotations

import argparse
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


def paced(encode: Any, seconds: float) -> Any:
    """``encode`` taking at least ``seconds`` a batch (0: as it is): a worker that a soak or crash
    test kills or faults then lasts long enough for each fault to land while it runs."""
    if seconds <= 0:
        return encode

    def slow(x: np.ndarray) -> SparseVectors:
        time.sleep(seconds)
        return encode(x)

    return slow


def store_arguments(p: argparse.ArgumentParser, prefix: str) -> argparse.ArgumentParser:
    """The options of a bench script that runs on a store: --store, --uri, --rows, --batch-size,
    --prefix (of its collection names), --keep and --out."""
    p.add_argument("--store", required=True, choices=["milvus", "qdrant-edge", "memory"])
    p.add_argument("--uri", help="store location (default: a temporary file/folder, removed afterwards)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--prefix", default=prefix, help="collection name prefix")
    p.add_argument("--keep", action="store_true", help="keep the collections and temporary files")
    p.add_argument("--out", help="write the result as JSON here")
    return p


def bench_main(parser: argparse.ArgumentParser, argv: list[str] | None, run: Any, table: Any) -> int:
    """The body of a store bench's ``main``: parse, ``run(args)``, print ``table([result])`` and
    write the result as JSON with ``--out``."""
    args = parser.parse_args(argv)
    res = run(args)
    emit(res, table([res]), args.out)
    return 0


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


def soak_main(parser: argparse.ArgumentParser, argv: list[str] | None, worker: Any, run: Any, table: Any) -> int:
    """The end of a soak script's ``main`` (crash.py, faults.py): the options they share, then either
    one worker (``--worker``) or a whole run, whose table is printed and JSON written; 1 when a check
    failed."""
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    res = run(args)
    emit(res, table(res), args.out)
    return 0 if res["ok"] else 1


def text_table(rows: list[dict], columns: list[tuple[str, Any, str]]) -> str:
    """A fixed-width table: a header line, a rule, one line per row.

    Args:
        rows: the results.
        columns: ``(header, key, spec)``: the row's value at ``key`` (or ``key(row)`` when callable)
            formatted with ``spec`` (``">8"``, ``">11.0f"``); the header takes the spec's alignment and width.
    """
    def fit(spec: str) -> str:
        return spec.split(".")[0].rstrip("dfegs%")

    head = " ".join(f"{h:{fit(spec)}}" for h, _, spec in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(format(key(r) if callable(key) else r[key], spec) for _, key, spec in columns))
    return "\n".join(lines)


def emit(result: Any, text: str, out: str | Path | None) -> None:
    """Print a script's table and, with ``--out``, write its result as JSON."""
    print(text)
    if out:
        write_json(out, result)


def collection_checksum(store: Any, name: str, batch_size: int = 5000) -> str:
    """sha256 of a collection's whole content (ids, payloads, vectors) in page order: equal before
    and after a migration when the source was never written."""
    import hashlib

    h = hashlib.sha256()
    for page in store.iter_dense(name, batch_size):
        h.update(json.dumps([page.ids, page.payloads], sort_keys=True).encode())
        h.update(np.ascontiguousarray(page.vectors, np.float32).tobytes())
    return h.hexdigest()


def journaled_rows(state_base: str | Path) -> int:
    """Rows recorded so far by the (single) migration journal under ``state_base``, read-only (0
    while there is none or it is being created)."""
    from csr_vdb.migrations import JOURNAL_FILE, Journal

    paths = list(Path(state_base).glob(f"*/{JOURNAL_FILE}"))
    if not paths:
        return 0
    try:
        with Journal.open(paths[0], readonly=True) as j:
            return j.totals().rows_written
    except Exception:  # being created
        return 0


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
            if self._serving():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"milvus-lite server did not serve on port {self.port} (see {self.data_dir}/server.log)")

    def _serving(self) -> bool:
        """The server answers a request (it opens its port a few seconds before it does)."""
        import logging

        from csr_vdb.adapters import open_store
        from csr_vdb.errors import StoreError

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        import csr_vdb.adapters.milvus  # noqa: F401 - pymilvus sets its loggers' levels when imported

        quiet = logging.getLogger("pymilvus")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # pymilvus logs every refused call with its traceback
        try:
            store = open_store("milvus", self.uri, timeout=2.0, retries=0)
            try:
                store.list_collections()
            finally:
                store.close()
            return True
        except StoreError:
            return False
        finally:
            quiet.setLevel(level)

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
