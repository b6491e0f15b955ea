"""kill -9 during `cutover` or `rollback`: the alias is left on the old or the new collection, never
missing; `status` says which; running the command again finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from csr_vdb.adapters import open_store
from csr_vdb.migrations import MigrationPlan, migration_status, run_migration, state_dir, verify_migration
from tests.helpers import ProjectionEncoder
from tests.migrations.conftest import fill_source

REPO = Path(__file__).resolve().parents[2]
DIM = 16
KINDS = ["qdrant-edge", "milvus", "qdrant"]
URIS = {"qdrant-edge": "edge", "milvus": "m.db", "qdrant": "qdrant-local"}


@pytest.fixture(params=KINDS)
def migrated(request, tmp_path, model_dir):
    """A verified migration whose alias still points at the source (as an application's would)."""
    kind = request.param
    uri, base = str(tmp_path / URIS[kind]), tmp_path / "state"
    store = open_store(kind, uri)
    try:
        fill_source(store, "docs", 120, DIM)  # qdrant-client's local mode searches in Python: keep it small
        plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir)
        encoder = ProjectionEncoder(DIM)
        run_migration(store, plan, encoder, state_base=base)
        assert verify_migration(store, plan, encoder, encoder, state_base=base, sample=32).ok
        store.set_alias(plan.alias, "docs")
    finally:
        store.close()
    return kind, uri, base, model_dir, plan


def _worker(kind, uri, base, model_dir, action: str, point: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [kind, uri, str(base), str(model_dir), action, point]
    res = subprocess.run([sys.executable, "-m", "tests.migrations.cutover_worker", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    if point == "none":
        assert res.returncode == 0, res.stderr
    return res.returncode


def _alias(kind, uri, base, plan) -> tuple[str | None, str | None]:
    store = open_store(kind, uri)
    try:
        rep = migration_status(store, plan, state_base=base)
        assert rep.alias_target == store.get_alias(plan.alias)
        return rep.alias_target, rep.alias_on
    finally:
        store.close()


@pytest.mark.slow
def test_kill_9_during_cutover_and_rollback_never_loses_the_alias(migrated):
    for point in ("before", "inside", "after"):
        _interrupt_both_ways(*migrated, point)


def _interrupt_both_ways(kind, uri, base, model_dir, plan, point: str) -> None:
    where = {"docs": "source", "docs_csr": "target"}
    assert _worker(kind, uri, base, model_dir, "cutover", point) == -signal.SIGKILL
    points, on = _alias(kind, uri, base, plan)
    assert points in where and on == where[points], (points, on)  # old or new, never missing
    if point == "before":
        assert on == "source"
    if point == "after":
        assert on == "target"
    _worker(kind, uri, base, model_dir, "cutover", "none")  # run again: finishes the job
    assert _alias(kind, uri, base, plan) == ("docs_csr", "target")

    assert _worker(kind, uri, base, model_dir, "rollback", point) == -signal.SIGKILL
    points, on = _alias(kind, uri, base, plan)
    assert points in where and on == where[points], (points, on)
    _worker(kind, uri, base, model_dir, "rollback", "none")
    assert _alias(kind, uri, base, plan) == ("docs", "source")

    history = json.loads((state_dir(base, plan) / "cutover.json").read_text())  # never half-written
    assert [h["action"] for h in history][-2:] == ["cutover", "rollback"]
