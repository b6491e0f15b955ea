"""Fault soak: SIGKILL the migrator or the database server, mixed, during one migration on a `milvus-lite server`.

    python bench/faults.py --faults 20 --rows 30000 --out bench/results/faults.json

A worker process (this script with ``--worker``) plans and runs the migration, resuming when a
journal exists, with the adapters' retries (``--retries``, ``--timeout``). The parent injects
``--faults`` faults at random points (a random number of rows journaled, plus 0-0.3 s):

- migrator: SIGKILL the worker, start a new one (it resumes from the journal).
- server: SIGKILL the `milvus-lite server` and start it again on the same data folder after a
  random pause; a short one the worker rides out by retrying, a long one outlasts its retry budget,
  so it exits with code 5 (one line) and a new worker resumes once the server is back.

For each fault it reports how long the failure took to be noticed (migrator: until the kernel
released the run's lock, which is what `status` reads; server: until the worker logged its first
retry), how it ended, how long the worker took to give up (exit 5), and how long the migration took
to record its next batch after the server or the worker was back. At the end it checks the target
against the source exactly: the id set, every payload and dense vector, every row's sparse code
against a fresh encode, no duplicates, every row journaled once, the source unchanged, and
`verify_migration` (schema included).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # the checkout, for the `bench` helpers

from bench.common import MilvusLiteServer, ProjectionEncoder, paced, placeholder_model, soak_main  # noqa: E402
from bench.common import collection_checksum as export  # noqa: E402
from bench.common import journaled_rows as journaled  # noqa: E402
from csr_vdb.adapters import open_store  # noqa: E402
from csr_vdb.adapters._retry import RetryPolicy  # noqa: E402
from csr_vdb.errors import CSRVDBError  # noqa: E402
from csr_vdb.migrations import JOURNAL_FILE, Journal, MigrationPlan, run_migration, state_dir, verify_migration  # noqa: E402
from csr_vdb.migrations.lock import is_locked  # noqa: E402
from csr_vdb.sparse import SparseVectors  # noqa: E402

DIM, HIDDEN_DIM, K = 64, 1024, 16
RETRY_MARK = "retry "  # in the adapters' retry log line


class UnitCodes(ProjectionEncoder):
    """`ProjectionEncoder` with codes scaled to unit norm, as a CSR encoder's are: a value then moves
    by ~1e-7 when a page is encoded with other rows, within verify's tolerance (1e-5)."""

    def __call__(self, x: np.ndarray, k: int | None = None) -> SparseVectors:
        codes = super().__call__(x, k)
        norms = np.linalg.norm(codes.values, axis=1, keepdims=True)
        return SparseVectors(codes.indices, codes.values / np.maximum(norms, 1e-12), codes.dim)


def encoder() -> ProjectionEncoder:
    """The stand-in encoder every worker and the final check use (same weights each time)."""
    return UnitCodes(DIM, HIDDEN_DIM, K, seed=7)


def _plan(store, args) -> MigrationPlan:
    return MigrationPlan.create(
        store, store_kind="milvus", uri=args.uri, source="docs", model_dir=args.model_dir, batch_size=args.batch_size
    )


# ------------------------------------------------------------------------------ worker
def worker(args) -> int:
    """Run (or resume) the migration; a csr-vdb error ends it with one line and its exit code, as the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    retry_log = logging.getLogger("csr_vdb.adapters._retry")
    retry_log.addHandler(handler)
    retry_log.setLevel(logging.INFO)
    import csr_vdb.adapters.milvus  # noqa: F401 - pymilvus sets its loggers' levels when imported

    for name in ("pymilvus", "grpc"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        store = open_store("milvus", args.uri, timeout=args.timeout, retries=args.retries)
        try:
            plan = _plan(store, args)
            resume = (state_dir(args.state, plan) / JOURNAL_FILE).exists()
            run_migration(store, plan, paced(encoder(), args.pace_s), state_base=args.state, resume=resume)
        finally:
            store.close()
    except CSRVDBError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


class Worker:
    """A worker process and the time-stamped lines of its stderr."""

    def __init__(self, args) -> None:
        cmd = [
            sys.executable, __file__, "--worker", "--uri", args.uri, "--state", str(args.state),
            "--model-dir", str(args.model_dir), "--batch-size", str(args.batch_size), "--retries", str(args.retries),
            "--timeout", str(args.timeout), "--pace-s", str(args.pace_s),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.ended_at: float | None = None  # when its stderr closed: it exited
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append((time.monotonic(), line.rstrip()))
        self.ended_at = time.monotonic()

    def first_retry_after(self, t: float) -> float | None:
        return next((s for s, line in list(self.lines) if s >= t and RETRY_MARK in line), None)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc


# ------------------------------------------------------------------------------ parent
def _wait_rows(base: Path, rows: int, w: Worker, deadline_s: float = 600.0) -> bool:
    """Wait until ``rows`` are journaled; False when the worker ended first."""
    deadline = time.monotonic() + deadline_s
    while journaled(base) < rows:
        if w.proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _next_batch_s(base: Path, after_rows: int, since: float, w: Worker, deadline_s: float = 600.0) -> float | None:
    """Seconds from ``since`` until a batch beyond ``after_rows`` is journaled (None: the worker ended)."""
    deadline = time.monotonic() + deadline_s
    while journaled(base) <= after_rows:
        if (w.proc.poll() is not None and journaled(base) <= after_rows) or time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return round(time.monotonic() - since, 3)


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="csr-vdb-faults-"))
    server = MilvusLiteServer(tmp / "server").start()
    args.uri, args.state = server.uri, tmp / "state"
    args.model_dir = placeholder_model(tmp / "model", b"faults-bench")
    policy = RetryPolicy(retries=args.retries, timeout=args.timeout)
    rng = np.random.default_rng(0)
    n = args.rows
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"doc-{i:07d}" for i in range(n)]
    payloads = [{"i": i, "text": f"row {i}", "tags": [i % 5], "meta": {"even": i % 2 == 0}} for i in range(n)]
    try:
        store = open_store("milvus", args.uri)
        store.create_dense_collection("docs", DIM, id_type="str")
        for s in range(0, n, 5000):
            store.insert_dense("docs", ids[s : s + 5000], x[s : s + 5000], payloads[s : s + 5000])
        store.flush("docs")
        before = export(store, "docs")
        plan = _plan(store, args)
        folder = state_dir(args.state, plan)
        store.close()

        pick = random.Random(args.seed)
        kinds = ["migrator", "server"] * (args.faults // 2) + (["server"] if args.faults % 2 else [])
        pick.shuffle(kinds)
        faults: list[dict] = []
        t_start = time.monotonic()
        resumes = 0  # workers started again after one gave up before the next fault
        w = Worker(args)
        for number, kind in enumerate(kinds, 1):
            done = journaled(args.state)
            left = len(kinds) - number + 1
            # spread the faults over the rows left, each well before the end
            goal = done + pick.randint(args.batch_size, max(args.batch_size, (n - done) // (left + 1)))
            while not _wait_rows(args.state, goal, w):
                if w.proc.poll() == 0 or resumes >= 5:
                    raise RuntimeError(f"worker ended before fault {number}: {w.lines[-3:]}")
                w.wait()  # gave up while a restarted server was not serving yet: resume again
                resumes += 1
                w = Worker(args)
            time.sleep(pick.uniform(0.0, 0.3))
            at_rows = journaled(args.state)
            f: dict = {"fault": number, "kind": kind, "at_rows": at_rows}
            t0 = time.monotonic()
            if kind == "migrator":
                w.kill()
                while is_locked(folder):
                    time.sleep(0.001)
                f.update(noticed_s=round(time.monotonic() - t0, 3), outcome="killed, resumed")
                t_up = time.monotonic()
                w = Worker(args)
                f["recovered_s"] = _next_batch_s(args.state, journaled(args.state), t_up, w)
            else:
                server.kill()
                ride_out = pick.random() < 0.5
                pause = pick.uniform(0.2, 1.0) if ride_out else policy.budget + pick.uniform(2.0, 4.0)
                time.sleep(pause)
                server.start()
                t_up = time.monotonic()
                noticed = w.first_retry_after(t0)
                f.update(restart_after_s=round(pause, 3), noticed_s=None if noticed is None else round(noticed - t0, 3))
                # the worker either rides it out (records its next batch) or has given up (exit 5)
                while journaled(args.state) <= at_rows and w.proc.poll() is None:
                    time.sleep(0.02)
                if journaled(args.state) > at_rows:
                    f.update(outcome="ridden out by retries", recovered_s=round(time.monotonic() - t_up, 3))
                else:
                    rc = w.wait()
                    last = w.lines[-1][1] if w.lines else ""
                    f.update(outcome=f"exit {rc}, resumed", gave_up_s=round((w.ended_at or time.monotonic()) - t0, 3),
                             error_line=last[:200])
                    w = Worker(args)
                    f["recovered_s"] = _next_batch_s(args.state, journaled(args.state), t_up, w)
            faults.append(f)
        rc = w.wait(timeout=3600)
        while rc != 0 and resumes < 5:  # a last fault's aftermath
            resumes += 1
            w = Worker(args)
            rc = w.wait(timeout=3600)
        total_s = time.monotonic() - t_start
        result = {"date": str(date.today()), "rows": n, "batch_size": args.batch_size, "retries": args.retries,
                  "timeout_s": args.timeout, "retry_budget_s": policy.budget, "faults": faults,
                  "final_worker_rc": rc, "extra_resumes": resumes, "total_s": round(total_s, 1)}
        result.update(check(args, ids, x, payloads, before))
    finally:
        server.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    migrator = [f for f in faults if f["kind"] == "migrator"]
    servers = [f for f in faults if f["kind"] == "server"]
    result["summary"] = {
        "faults": len(faults),
        "migrator_kills": len(migrator),
        "server_kills": len(servers),
        "ridden_out": sum(f["outcome"].startswith("ridden") for f in servers),
        "exit_5": sum(f["outcome"].startswith("exit 5") for f in servers),
        "max_notice_s": {k: max((f["noticed_s"] or 0.0 for f in fs), default=None)
                         for k, fs in (("migrator", migrator), ("server", servers))},
        "max_gave_up_s": max((f["gave_up_s"] for f in servers if "gave_up_s" in f), default=None),
        "max_recovered_s": max((f["recovered_s"] or 0.0 for f in faults), default=None),
    }
    result["ok"] = bool(
        result["final_worker_rc"] == 0 and result["exact_id_set"] and not result["duplicates"]
        and result["payloads_identical"] and result["dense_identical"] and result["codes_identical"]
        and result["source_unchanged"] and result["journaled_once"] and result["verify_ok"]
        and all(f["outcome"] != "exit 5, resumed" or "error: " in f.get("error_line", "") for f in faults)
    )
    return result


def check(args, ids: list, x: np.ndarray, payloads: list, before: str) -> dict:
    """The target against the source, row by row, and `verify_migration`."""
    store = open_store("milvus", args.uri)
    try:
        enc = encoder()
        row = {i: r for r, i in enumerate(ids)}
        seen: list = []
        payload_ok = dense_ok = codes_ok = True
        for page in store.iter_dense("docs_csr", 2000):
            seen += page.ids
            rows = [row[i] for i in page.ids]
            payload_ok &= all(p == payloads[r] for p, r in zip(page.payloads, rows))
            dense_ok &= bool(np.allclose(page.vectors, x[rows], rtol=1e-5, atol=1e-6))
            want = enc(x[rows]).to_qdrant()
            got = {rec.id: rec.sparse for rec in store.fetch("docs_csr", page.ids, with_sparse=True)}
            for i, (wi, wv) in zip(page.ids, want):
                order = np.argsort(wi)
                gi, gv = got[i]
                codes_ok &= list(gi) == [int(v) for v in np.asarray(wi)[order]] and bool(
                    np.allclose(gv, np.asarray(wv)[order], rtol=1e-5, atol=1e-5)
                )
        plan = _plan(store, args)
        rep = verify_migration(store, plan, enc, enc, state_base=args.state, sample=256)
        with Journal.open(state_dir(args.state, plan) / JOURNAL_FILE, readonly=True) as j:
            written = j.totals().rows_written
        return {
            "target_rows": store.count("docs_csr"),
            "exact_id_set": set(seen) == set(ids),
            "duplicates": len(seen) - len(set(seen)),
            "payloads_identical": bool(payload_ok),
            "dense_identical": bool(dense_ok),
            "codes_identical": bool(codes_ok),
            "source_unchanged": export(store, "docs") == before,
            "journaled_once": written == len(ids),
            "verify_ok": rep.ok,
            "verify_problems": rep.problems,
        }
    finally:
        store.close()


def table(r: dict) -> str:
    head = f"{'#':>3}  {'kind':<8}  {'at rows':>7}  {'noticed s':>9}  {'restart s':>9}  {'gave up s':>9}  {'next batch s':>12}  outcome"
    lines = [head, "-" * len(head)]
    for f in r["faults"]:
        def cell(key: str, width: int) -> str:
            v = f.get(key)
            return f"{'-' if v is None else v:>{width}}"

        lines.append(f"{f['fault']:>3}  {f['kind']:<8}  {f['at_rows']:>7}  {cell('noticed_s', 9)}  "
                     f"{cell('restart_after_s', 9)}  {cell('gave_up_s', 9)}  {cell('recovered_s', 12)}  {f['outcome']}")
    keys = ["rows", "retries", "timeout_s", "retry_budget_s", "target_rows", "exact_id_set", "duplicates",
            "payloads_identical", "dense_identical", "codes_identical", "source_unchanged", "journaled_once",
            "verify_ok", "total_s", "ok"]
    width = max(len(k) for k in keys)
    return "\n".join([*lines, "", *(f"{k:<{width}}  {r[k]}" for k in keys), f"{'summary':<{width}}  {r['summary']}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--faults", type=int, default=20, help="faults injected, half migrator and half server kills")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--retries", type=int, default=8,
                   help="the worker's retries of a transient failure (8: pauses of 39.5 s at most, longer than a "
                        "server restart takes to serve again)")
    p.add_argument("--timeout", type=float, default=5.0, help="the worker's request timeout, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pace-s", type=float, default=0.0,
                   help="seconds each batch's encoding takes at least, so that a small run lasts until its last "
                        "fault (0: full speed)")
    p.add_argument("--uri", help=argparse.SUPPRESS)
    return soak_main(p, argv, worker, run, table)


if __name__ == "__main__":
    sys.exit(main())
