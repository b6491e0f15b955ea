"""Crash safety: a subprocess migration killed with SIGKILL again and again, resumed each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from csr_vdb.adapters import open_store
from csr_vdb.migrations import Journal, MigrationPlan, migration_status
from tests.migrations.conftest import export, fill_source, spawn, store_uri

ROWS, DIM, KILLS = 20_000, 16, 5
# Milvus Lite pays ~0.4 s per insert call, so it gets bigger batches to keep the test short.
BATCH = {"milvus": 1000, "qdrant-edge": 250}
# Pace each batch a little so that a fast idle machine cannot finish the run before the kill lands.
DELAY_S = {"milvus": 0.0, "qdrant-edge": 0.03}


def _worker(kind: str, uri: str, base: Path, model_dir: Path, delay: float = 0.0) -> subprocess.Popen:
    return spawn("tests.migrations.crash_worker", kind, uri, str(base), str(model_dir), str(BATCH[kind]), str(delay))


def _journaled(base: Path) -> tuple[int, list[dict]]:
    """Rows recorded so far in the (single) journal under ``base`` and its runs (read-only peek)."""
    paths = list(base.glob("*/journal.sqlite"))
    if not paths:
        return 0, []
    try:
        with Journal.open(paths[0], readonly=True) as j:
            return j.totals().rows_written, j.runs()
    except Exception:  # created but not initialised yet
        return 0, []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["milvus", "qdrant-edge"])
def test_sigkill_and_resume_loses_nothing(kind, tmp_path, model_dir):
    uri, base = store_uri(kind, tmp_path), tmp_path / "state"
    store = open_store(kind, uri)
    ids, _, payloads = fill_source(store, "docs", ROWS, DIM, id_type="str", step=5000)
    before = export(store, "docs", batch=5000)
    store.close()

    rng = random.Random(1234)
    kills, done, progress = 0, 0, []
    while kills < KILLS:
        proc = _worker(kind, uri, base, model_dir, DELAY_S[kind])
        # Kill at a random point once the run is under way: after a random number of rows has
        # been journaled (read-only peek at the journal) plus a random delay. The goal is capped
        # so that at least ROWS / (KILLS + 1) rows are left to write when the kill lands.
        cap = ROWS * (kills + 1) // (KILLS + 1)
        goal = min(done + rng.randint(BATCH[kind], ROWS // (2 * KILLS)), cap)
        deadline = time.monotonic() + 120
        while _journaled(base)[0] < goal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, proc.stdout.read().decode()  # still running: the kill lands mid-run
        os.kill(proc.pid, signal.SIGKILL)  # Milvus Lite and Qdrant Edge run inside the worker: all die
        proc.wait()
        kills += 1
        rows, runs = _journaled(base)
        assert runs[-1]["outcome"] is None and rows < ROWS  # killed mid-run, nothing marked done
        assert rows >= done  # the journal never goes backwards
        done = rows
        progress.append(done)

    proc = _worker(kind, uri, base, model_dir)
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, out

    store = open_store(kind, uri)
    try:
        assert store.count("docs_csr") == ROWS
        seen: list = []
        got_payloads = {}
        for page in store.iter_dense("docs_csr", 5000):
            seen += page.ids
            got_payloads.update(zip(page.ids, page.payloads))
        assert len(seen) == len(set(seen)) == ROWS and set(seen) == set(ids)
        assert all(got_payloads[i] == p for i, p in zip(ids, payloads))
        assert export(store, "docs", batch=5000) == before  # the source was never written
        plan = MigrationPlan.create(
            store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir, batch_size=BATCH[kind]
        )
        st = migration_status(store, plan, state_base=base)
        assert st.state == "complete" and st.rows_done == ROWS  # a repeated batch is journaled once
        assert len(progress) == KILLS and progress == sorted(progress)
    finally:
        store.close()
