"""Crash safety of sync: a subprocess sync killed with SIGKILL again and again, then run to the end:
the target equals the source row for row (nothing lost, nothing duplicated) and verify passes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.migrations import MigrationPlan, run_migration, sync_migration, verify_migration
from tests.migrations.conftest import (
    ProjectionEncoder,
    assert_target_equals_source,
    fill_source,
    spawn,
    store_uri,
)

ROWS, DIM, KILLS, BATCH = 6000, 16, 3, 100


def _worker(kind: str, uri: str, base: Path, delay: float) -> subprocess.Popen:
    return spawn("tests.migrations.sync_worker", kind, uri, str(base), str(delay))


def _synced(base: Path) -> int:
    """Rows the syncs recorded as written so far (read-only peek at the journal)."""
    path = next(base.glob("*/journal.sqlite"))
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as c:
            row = c.execute("SELECT value FROM meta WHERE key='sync_writes'").fetchone()
        return int(json.loads(row[0])) if row else 0
    except sqlite3.Error:  # busy while the worker commits
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["milvus", "qdrant-edge"])
def test_sigkill_during_sync_then_sync_again_is_exact(kind, tmp_path, model_dir):
    uri, base = store_uri(kind, tmp_path), tmp_path / "state"
    store = open_store(kind, uri)
    try:
        ids, x, payloads = fill_source(store, "docs", ROWS, DIM, id_type="str", step=3000)
        enc = ProjectionEncoder(DIM)
        plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir,
                                    batch_size=BATCH)
        run_migration(store, plan, enc, state_base=base)
        rng = np.random.default_rng(4)
        n = ROWS // 10
        store.insert_dense("docs", ids[: 4 * n], rng.normal(size=(4 * n, DIM)).astype(np.float32), payloads[: 4 * n])
        store.insert_dense("docs", ids[4 * n : 5 * n], x[4 * n : 5 * n], [{"edited": i} for i in range(n)])
        store.insert_dense("docs", [f"new-{i:05d}" for i in range(n)], rng.normal(size=(n, DIM)).astype(np.float32),
                           [{"new": i} for i in range(n)])
        store.delete("docs", ids[5 * n : 6 * n])
    finally:
        store.close()
    changes = 7 * n

    pick = random.Random(99)
    done = 0
    for k in range(KILLS):
        proc = _worker(kind, uri, base, 0.05)
        goal = min(done + pick.randint(BATCH // 2, changes // (2 * KILLS)), changes * (k + 1) // (KILLS + 1))
        deadline = time.monotonic() + 120
        while _synced(base) < goal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(pick.uniform(0.0, 0.2))
        assert proc.poll() is None, proc.stdout.read().decode()  # still running: the kill lands mid-sync
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        now = _synced(base)
        assert done <= now < changes  # progress is kept, and the sync was not finished
        done = now

    proc = _worker(kind, uri, base, 0.0)
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0 and "done synced" in out, out

    store = open_store(kind, uri)
    try:
        assert store.count("docs_csr") == store.count("docs") == ROWS
        seen = [i for page in store.iter_payloads("docs_csr", 2000, fields=[]) for i in page.ids]
        assert len(seen) == len(set(seen)) == ROWS
        assert_target_equals_source(store, plan)
        rep = verify_migration(store, plan, ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=base, sample=50)
        assert rep.ok, rep.problems
        assert sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base).status == "nothing to do"
    finally:
        store.close()
