"""Crash/resume soak: kill a migration with SIGKILL ``--kills`` times at random points, resume, check the target.

    python bench/crash.py --store qdrant-edge --rows 20000 --kills 20 --out bench/results/crash_edge.json
    python bench/crash.py --store milvus --rows 20000 --kills 20

A worker process (this script with ``--worker``) plans and runs the migration, resuming when a
journal exists. The parent kills it with SIGKILL once a random number of rows has been journaled
(plus a random 0-0.3 s), ``--kills`` times, then lets a last worker finish and checks: the target
holds exactly the source's id set, no duplicates, identical payloads, the source's export
checksum is unchanged, every row was journaled exactly once, and `verify_migration` passes. It
also reports how long each resumed worker took to record its first batch.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # the checkout, for the `bench` helpers

from bench.common import ProjectionEncoder, placeholder_model, soak_main  # noqa: E402
from bench.common import collection_checksum as export  # noqa: E402
from bench.common import journaled_rows as journaled  # noqa: E402
from csr_vdb.adapters import open_store  # noqa: E402
from csr_vdb.migrations import Journal, MigrationPlan, run_migration, state_dir, verify_migration  # noqa: E402

DIM, HIDDEN_DIM, K = 64, 1024, 16


def encoder() -> ProjectionEncoder:
    """The stand-in encoder every worker and the final check use (same weights each time)."""
    return ProjectionEncoder(DIM, HIDDEN_DIM, K, seed=7)


def _plan(store, args) -> MigrationPlan:
    return MigrationPlan.create(
        store, store_kind=args.store, uri=args.uri, source="docs", model_dir=args.model_dir, batch_size=args.batch_size
    )


def worker(args) -> int:
    store = open_store(args.store, args.uri)
    try:
        plan = _plan(store, args)
        resume = (state_dir(args.state, plan) / "journal.sqlite").exists()
        run_migration(store, plan, encoder(), state_base=args.state, resume=resume)
    finally:
        store.close()
    return 0


def spawn(args) -> subprocess.Popen:
    cmd = [
        sys.executable, __file__, "--worker", "--store", args.store, "--uri", args.uri, "--state", str(args.state),
        "--model-dir", str(args.model_dir), "--batch-size", str(args.batch_size),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="csr-vdb-crash-")
    args.uri = args.uri or {"milvus": f"{tmp}/crash.db", "qdrant-edge": f"{tmp}/edge"}[args.store]
    args.state = Path(tmp) / "state"
    args.model_dir = placeholder_model(Path(tmp) / "model", b"crash-bench")
    rng = np.random.default_rng(0)
    n = args.rows
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"doc-{i:07d}" for i in range(n)]
    payloads = [{"i": i, "text": f"row {i}", "tags": [i % 5]} for i in range(n)]
    store = open_store(args.store, args.uri)
    store.create_dense_collection("docs", DIM, id_type="str")
    for s in range(0, n, 5000):
        store.insert_dense("docs", ids[s : s + 5000], x[s : s + 5000], payloads[s : s + 5000])
    store.flush("docs")
    before = export(store, "docs")
    store.close()

    pick = random.Random(args.seed)
    kills, done, restart_s, points = 0, 0, [], []
    t0 = time.perf_counter()
    try:
        while kills < args.kills:
            proc = spawn(args)
            t = time.perf_counter()
            start = done
            # spread the kills over what is left; a goal of +0 kills during start-up or the first batch
            left = args.kills - kills
            goal = done + pick.randint(0, max(0, (n - done - args.batch_size) // (left + 1)))
            first = None
            while proc.poll() is None:
                rows = journaled(args.state)
                if first is None and rows > start:
                    first = time.perf_counter() - t
                if rows >= goal:
                    break
                time.sleep(0.02)
            time.sleep(pick.uniform(0.0, 0.3))
            if proc.poll() is not None:
                raise RuntimeError(f"worker ended before the kill: {proc.stdout.read().decode()[-2000:]}")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            done = journaled(args.state)
            if done < start:
                raise RuntimeError("journal went backwards")
            points.append(done)
            if first is not None:
                restart_s.append(first)
        proc = spawn(args)
        out = proc.communicate()[0].decode()
        if proc.returncode != 0:
            raise RuntimeError(f"final worker failed: {out[-2000:]}")
        total_s = time.perf_counter() - t0

        store = open_store(args.store, args.uri)
        try:
            seen, got = [], {}
            for page in store.iter_dense("docs_csr", 5000):
                seen += page.ids
                got.update(zip(page.ids, page.payloads))
            plan = _plan(store, args)
            enc = encoder()
            rep = verify_migration(store, plan, enc, enc, state_base=args.state, sample=128)
            with Journal.open(state_dir(args.state, plan) / "journal.sqlite", readonly=True) as j:
                written = j.totals().rows_written
            result = {
                "store": args.store,
                "rows": n,
                "batch_size": args.batch_size,
                "kills": kills,
                "kill_points_rows": points,
                "target_rows": store.count("docs_csr"),
                "exact_id_set": set(seen) == set(ids),
                "duplicates": len(seen) - len(set(seen)),
                "payloads_identical": all(got.get(i) == p for i, p in zip(ids, payloads)),
                "source_unchanged": export(store, "docs") == before,
                "verify_ok": rep.ok,
                "verify_problems": rep.problems,
                # a batch repeated after a kill was journaled only once (after its second write)
                "journaled_once": written == n,
                "median_resume_to_first_batch_s": round(float(np.median(restart_s)), 2) if restart_s else None,
                "total_s": round(total_s, 1),
            }
        finally:
            store.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["ok"] = bool(
        result["exact_id_set"] and not result["duplicates"] and result["payloads_identical"]
        and result["source_unchanged"] and result["verify_ok"] and result["target_rows"] == n
        and result["journaled_once"]
    )
    return result


def table(r: dict) -> str:
    keys = ["store", "rows", "kills", "target_rows", "exact_id_set", "duplicates", "payloads_identical",
            "source_unchanged", "verify_ok", "journaled_once", "median_resume_to_first_batch_s", "total_s", "ok"]
    width = max(len(k) for k in keys)
    return "\n".join(f"{k:<{width}}  {r[k]}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, choices=["milvus", "qdrant-edge"])
    p.add_argument("--uri", help="store location (default: a temporary file/folder)")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    return soak_main(p, argv, worker, run, table)


if __name__ == "__main__":
    sys.exit(main())
