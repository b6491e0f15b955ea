"""Cutover, rollback and status: what each refuses, the alias history, the alias reported."""

from __future__ import annotations

import json

import pytest

from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.errors import MigrationError
from csr_vdb.migrations import MigrationPlan, cutover, migration_status, rollback, run_migration, verify_migration
from csr_vdb.migrations import state_dir
from tests.migrations.conftest import ProjectionEncoder, fill_source, store_uri

DIM = 16


def _migrated(store, kind, tmp_path, model_dir, n=120, **kw):
    fill_source(store, "docs", n, DIM)
    plan = MigrationPlan.create(store, store_kind=kind, uri=store_uri(kind, tmp_path), source="docs",
                                model_dir=model_dir, batch_size=50, **kw)
    enc = ProjectionEncoder(DIM)
    run_migration(store, plan, enc, state_base=tmp_path / "s")
    return plan, enc


def test_cutover_and_rollback_record_their_history(store, store_kind, tmp_path, model_dir):
    plan, enc = _migrated(store, store_kind, tmp_path, model_dir)
    base = tmp_path / "s"
    assert verify_migration(store, plan, enc, enc, state_base=base, sample=16).ok
    first = cutover(store, plan, state_base=base)
    assert (first.action, first.previous, first.current, first.forced) == ("cutover", None, "docs_csr", False)
    assert first.verified_at and store.get_alias("docs_live") == "docs_csr"
    back = rollback(store, plan, state_base=base)
    assert (back.action, back.previous, back.current) == ("rollback", "docs_csr", "docs")
    again = cutover(store, plan, state_base=base, alias="other_live")
    assert again.alias == "other_live" and store.get_alias("other_live") == "docs_csr"
    assert store.get_alias("docs_live") == "docs"
    history = json.loads((state_dir(base, plan) / "cutover.json").read_text())
    assert [(h["action"], h["alias"], h["current"]) for h in history] == [
        ("cutover", "docs_live", "docs_csr"), ("rollback", "docs_live", "docs"), ("cutover", "other_live", "docs_csr")]
    assert all(h["at"] for h in history)


def test_what_cutover_and_rollback_refuse(tmp_path, model_dir):
    store = MemoryStore()
    plan, enc = _migrated(store, "memory", tmp_path, model_dir)
    base = tmp_path / "s"
    lean = MigrationPlan.create(store, store_kind="memory", uri="memory://", source="docs", model_dir=model_dir,
                                target="lean", keep_dense=False)
    run_migration(store, lean, enc, state_base=base)
    assert verify_migration(store, lean, enc, enc, state_base=base, sample=8).ok
    # the last verify must be of this migration: lean's report sits in lean's folder only
    with pytest.raises(MigrationError, match="never verified"):
        cutover(store, plan, state_base=base)
    store.create_dense_collection("squat", DIM)
    with pytest.raises(MigrationError, match="cannot use 'squat' as an alias"):
        cutover(store, lean, state_base=base, alias="squat")
    with pytest.raises(MigrationError, match="cannot use 'squat' as an alias"):
        rollback(store, lean, state_base=base, alias="squat")
    store.drop("lean")
    with pytest.raises(MigrationError, match="target collection 'lean' does not exist"):
        cutover(store, lean, state_base=base, force=True)
    store.drop("docs")
    with pytest.raises(MigrationError, match="rollback refused: source collection 'docs' is gone"):
        rollback(store, plan, state_base=base)
    assert store.get_alias("docs_live") is None


@pytest.fixture
def planned(model_dir):
    """A 120-row source in memory and its plan (batches of 50), not run yet."""
    store = MemoryStore()
    fill_source(store, "docs", 120, DIM)
    return store, MigrationPlan.create(store, store_kind="memory", uri="memory://", source="docs",
                                       model_dir=model_dir, batch_size=50)


def test_status_states_and_the_alias_reported(tmp_path, planned):
    store, plan = planned
    base = tmp_path / "s"
    assert migration_status(store, plan, state_base=base).state == "not started"
    enc = ProjectionEncoder(DIM)
    run_migration(store, plan, enc, state_base=base)
    st = migration_status(store, plan, state_base=base)
    assert st.state == "complete" and (st.shard, st.batches, st.rows_done) == ("0/1", 3, 120)
    assert st.alias == "docs_live" and st.alias_target is None and st.verify_ok is None
    store.set_alias("elsewhere", "docs")
    other = migration_status(store, plan, state_base=base, alias="elsewhere")
    assert (other.alias, other.alias_target) == ("elsewhere", "docs")


def test_status_of_a_running_migration(tmp_path, planned):
    store, plan = planned
    base = tmp_path / "s"
    seen = []

    def look(done, total):
        seen.append(migration_status(store, plan, state_base=base))

    run_migration(store, plan, ProjectionEncoder(DIM), state_base=base, progress=look)
    assert [s.state for s in seen] == ["running"] * 3
    assert [s.rows_scanned for s in seen] == [50, 100, 120]
    assert migration_status(store, plan, state_base=base).state == "complete"
