"""sync_migration: the target follows the source (inserts, re-encodes, payload-only rewrites, deletes) at the
cost of the change; dry run and no-op syncs write nothing; bad input is refused with nothing written."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from csr_vdb.errors import CollectionNotFoundError, DataError, MigrationError
from csr_vdb.migrations import (
    MigrationPlan,
    find_plan,
    run_migration,
    state_dir,
    sync_migration,
    verify_migration,
)
from csr_vdb.migrations.journal import Journal
from tests.migrations.conftest import ProjectionEncoder, assert_target_equals_source, fill_source, rows_of, store_uri

N, DIM = 400, 16


class CountingEncoder(ProjectionEncoder):
    """The test encoder, counting the rows it encodes."""

    rows = 0

    def __call__(self, x, k=None):
        self.rows += len(x)
        return super().__call__(x, k)


def migrate(store, kind, tmp_path, model_dir, **kw):
    plan = MigrationPlan.create(store, store_kind=kind, uri=store_uri(kind, tmp_path), source="docs",
                                model_dir=model_dir, batch_size=64, **kw)
    run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    return plan


def snapshot(store, name: str, folder: Path) -> tuple:
    """The content of a collection (ids, vectors, payloads, codes) and the bytes of every file of a state folder."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
    rows = rows_of(store, name)
    data = sorted((str(i), v.tobytes(), json.dumps(p, sort_keys=True)) for i, (v, p) in rows.items())
    codes = sorted((str(r.id), json.dumps(r.sparse)) for r in store.fetch(name, list(rows), with_sparse=True))
    return files, data, codes


def change_source(store, ids, x, payloads, id_type: str, seed: int = 5):
    """Inserts, vector-only, payload-only and both updates, and deletes; returns the expected counts."""
    rng = np.random.default_rng(seed)
    new = [90_001 + 3 * i for i in range(9)] if id_type == "int" else [f"new-{i:03d}" for i in range(9)]
    store.insert_dense("docs", new, rng.normal(size=(9, DIM)).astype(np.float32), [{"n": i} for i in range(9)])
    store.insert_dense("docs", ids[10:14], rng.normal(size=(4, DIM)).astype(np.float32), payloads[10:14])
    store.insert_dense("docs", ids[20:25], x[20:25], [{"label": 1, "text": "edited"} for _ in range(5)])
    store.insert_dense("docs", ids[30:33], rng.normal(size=(3, DIM)).astype(np.float32), [{"both": True}] * 3)
    # a value retyped (1 -> "1") is a change too
    store.insert_dense("docs", ids[40:41], x[40:41], [{**payloads[40], "label": str(payloads[40]["label"])}])
    store.delete("docs", ids[50:56])
    return {"inserts": 9, "reencodes": 7, "payload_updates": 6, "deletes": 6}


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_sync_follows_every_kind_of_change(store, store_kind, tmp_path, model_dir, id_type):
    ids, x, payloads = fill_source(store, "docs", N, DIM, id_type=id_type)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    folder = state_dir(tmp_path / "state", plan)
    expected = change_source(store, ids, x, payloads, id_type)

    before = snapshot(store, plan.target, folder)
    dry = sync_migration(store, plan, CountingEncoder(DIM), state_base=tmp_path / "state", dry_run=True)
    assert dry.status == "dry-run" and dry.dry_run
    assert {k: getattr(dry, k) for k in expected} == expected and dry.changes == 28
    assert snapshot(store, plan.target, folder) == before  # target and state folder byte-identical

    enc = CountingEncoder(DIM)
    seen = []
    res = sync_migration(store, plan, enc, state_base=tmp_path / "state", progress=lambda d, t: seen.append((d, t)))
    assert res.status == "synced" and res.mode == "full"
    assert {k: getattr(res, k) for k in expected} == expected
    assert res.rows_scanned == N + 9 - 6 and res.already_applied == 0
    assert enc.rows == 16  # only inserts and changed vectors were encoded
    assert seen[-1] == (N + 3, N + 3)
    assert_target_equals_source(store, plan)
    assert store.count(plan.target) == N + 3

    again = sync_migration(store, plan, CountingEncoder(DIM), state_base=tmp_path / "state")
    assert again.status == "nothing to do" and again.changes == 0 and again.already_applied == 0

    rep = verify_migration(store, plan, ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert rep.ok, rep.problems
    assert rep.expected_rows == N + 3


def journal_content(folder: Path) -> list:
    """Every row of every table of a journal (what it records, not how sqlite lays out the file)."""
    with sqlite3.connect(f"file:{folder / 'journal.sqlite'}?mode=ro", uri=True) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [(t, sorted(c.execute(f"SELECT * FROM {t}").fetchall())) for t in tables]


def test_nothing_to_do_writes_nothing(store, store_kind, tmp_path, model_dir):
    fill_source(store, "docs", 150, DIM)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    folder = state_dir(tmp_path / "state", plan)
    before, recorded = snapshot(store, plan.target, folder)[1:], journal_content(folder)
    enc = CountingEncoder(DIM)
    res = sync_migration(store, plan, enc, state_base=tmp_path / "state")
    assert (res.status, res.changes, enc.rows, res.rows_scanned) == ("nothing to do", 0, 0, 150)
    assert snapshot(store, plan.target, folder)[1:] == before
    assert journal_content(folder) == recorded


def test_deleting_everything_empties_the_target(store, store_kind, tmp_path, model_dir):
    ids, _, _ = fill_source(store, "docs", 120, DIM, id_type="str")
    plan = migrate(store, store_kind, tmp_path, model_dir)
    store.delete("docs", ids)
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (res.deletes, res.rows_scanned, res.changes) == (120, 0, 120)
    assert store.count(plan.target) == 0
    assert sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state").status == "nothing to do"


def test_application_writes_already_in_the_target_count_as_done(store, store_kind, tmp_path, model_dir):
    """Rows the application wrote to source and target alike (dual-write) are recorded, not rewritten."""
    ids, x, payloads = fill_source(store, "docs", 200, DIM)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    enc = ProjectionEncoder(DIM)
    rng = np.random.default_rng(3)
    # unit vectors: a cosine collection in Qdrant stores them normalised, and the test encoder is not
    # scale-invariant (a CSR model normalises its input itself)
    unit = rng.normal(size=(3, DIM)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    new_ids, new_x, upd_x = [5000, 5003], unit[:2], unit[2:]
    rows = [(new_ids, new_x, [{"app": 1}, {"app": 2}]), (ids[7:8], upd_x, payloads[7:8]),
            (ids[9:10], x[9:10], [{"retitled": True}])]
    for i, v, p in rows:  # what a dual-writing application does: the source, then the target
        store.insert_dense("docs", i, v, p)
        store.upsert(plan.target, i, enc(v), p, dense=v)
    store.delete("docs", ids[11:13])
    store.delete(plan.target, ids[11:13])
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (res.status, res.changes, res.already_applied) == ("nothing to do", 0, 6)
    assert_target_equals_source(store, plan)
    # recorded: the next sync does not even look at those rows
    assert sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state").already_applied == 0


def test_changed_field_reads_only_rows_above_the_watermark(store, store_kind, tmp_path, model_dir):
    ids, x, payloads = fill_source(store, "docs", 300, DIM)
    stamped = [{**p, "updated_at": 100 + n} for n, p in enumerate(payloads)]
    store.insert_dense("docs", ids, x, stamped)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    base = tmp_path / "state"
    first = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base, changed_field="updated_at")
    assert first.mode == "changed-field" and first.watermark == 399 and first.changes == 0
    assert first.rows_read == 300  # no watermark yet: every row is read once
    rng = np.random.default_rng(1)
    store.insert_dense("docs", ids[5:8], rng.normal(size=(3, DIM)).astype(np.float32),
                       [{**stamped[n], "updated_at": 500} for n in range(5, 8)])
    store.insert_dense("docs", ids[9:10], x[9:10], [{"updated_at": 501, "note": "payload only"}])
    store.insert_dense("docs", [7777], x[:1], [{"updated_at": 502}])
    store.delete("docs", ids[200:204])
    enc = CountingEncoder(DIM)
    res = sync_migration(store, plan, enc, state_base=base, changed_field="updated_at")
    assert (res.inserts, res.reencodes, res.payload_updates, res.deletes) == (1, 3, 1, 4)
    assert res.rows_scanned == 297 and res.watermark == 502
    # only the rows at or above the watermark: the 5 changed ones and the row stamped 399 (equal
    # stamps may belong to writes the previous sync did not see, so the bound is inclusive)
    assert res.rows_read == 6 and enc.rows == 4
    assert_target_equals_source(store, plan)
    with Journal.open(state_dir(base, plan) / "journal.sqlite", readonly=True) as j:
        assert j.meta()["sync_watermark"] == {"field": "updated_at", "value": 502}
    # a full sync agrees that nothing is left
    assert sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base).status == "nothing to do"


def test_journal_without_manifest_is_rebuilt_once(store, store_kind, tmp_path, model_dir):
    """A migration journaled before manifests existed: the first sync compares with the target."""
    ids, x, payloads = fill_source(store, "docs", 250, DIM, id_type="str")
    plan = migrate(store, store_kind, tmp_path, model_dir)
    jpath = state_dir(tmp_path / "state", plan) / "journal.sqlite"
    with sqlite3.connect(jpath) as c:  # what an older version left behind
        c.execute("DROP TABLE manifest")
        c.execute("DELETE FROM meta WHERE key='manifest'")
    expected = change_source(store, ids, x, payloads, "str")
    extra = "only-in-target"
    store.upsert(plan.target, [extra], ProjectionEncoder(DIM)(x[:1]), [{}], dense=x[:1])
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert res.mode == "rebuild"
    # without a manifest a changed row cannot be told from a new one: all are re-written
    assert res.inserts + res.reencodes == expected["inserts"] + expected["reencodes"] + expected["payload_updates"]
    assert res.deletes == expected["deletes"] + 1
    assert res.already_applied == 250 + 9 - 6 - 9 - 7 - 6
    assert_target_equals_source(store, plan)
    nxt = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (nxt.mode, nxt.status) == ("full", "nothing to do")


def poke(store, id_, vector: np.ndarray) -> None:
    """Put an invalid vector straight into a `MemoryStore` source (its insert refuses one; a real
    database lets it through)."""
    store._cols["docs"].rows[id_]["dense"]["vector"] = vector


def test_invalid_rows_follow_the_plan(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store, store_kind = MemoryStore(), "memory"
    ids, x, payloads = fill_source(store, "docs", 200, DIM)
    plan = migrate(store, store_kind, tmp_path, model_dir, skip_invalid=True)
    poke(store, ids[3], np.full(DIM, np.nan, np.float32))
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (res.deletes, res.skipped_invalid, res.invalid_ids) == (1, 1, [ids[3]])
    assert store.fetch(plan.target, [ids[3]]) == []
    rep = verify_migration(store, plan, ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert rep.ok and rep.skipped_invalid == 1, rep.problems
    store.insert_dense("docs", ids[3:4], x[3:4], payloads[3:4])  # fixed
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (res.inserts, res.skipped_invalid) == (1, 0)
    rep = verify_migration(store, plan, ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert rep.ok and rep.skipped_invalid == 0, rep.problems


def test_invalid_row_without_skip_invalid_stops_with_nothing_of_its_batch_written(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store, store_kind = MemoryStore(), "memory"
    ids, x, payloads = fill_source(store, "docs", 200, DIM)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    poke(store, ids[1], np.zeros(DIM, np.float32))
    store.insert_dense("docs", ids[2:3], x[5:6], payloads[2:3])
    before = rows_of(store, plan.target)
    with pytest.raises(DataError, match=f"all-zero vector.*{ids[1]}"):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    after = rows_of(store, plan.target)
    assert after.keys() == before.keys()
    np.testing.assert_array_equal(after[ids[2]][0], before[ids[2]][0])  # same batch: not written


def test_bad_input_is_refused_with_nothing_written(store, store_kind, tmp_path, model_dir):
    ids, x, payloads = fill_source(store, "docs", 120, DIM)
    base = tmp_path / "state"
    uri = store_uri(store_kind, tmp_path)
    with pytest.raises(MigrationError, match="no migration of 'docs'"):
        find_plan(base, store_kind, uri, "docs")  # never migrated
    plan = migrate(store, store_kind, tmp_path, model_dir)
    folder = state_dir(base, plan)
    store.insert_dense("docs", [999_999], x[:1], [{"new": 1}])
    before = snapshot(store, plan.target, folder)

    # a plan whose journal is gone: never migrated there
    other = plan.model_copy(update={"target": "elsewhere", "plan_id": ""})
    other = MigrationPlan(**other.model_dump())
    with pytest.raises(MigrationError, match="never migrated"):
        sync_migration(store, other, ProjectionEncoder(DIM), state_base=base)
    # model files changed since the migration
    weights = Path(plan.model_dir) / "model.safetensors"
    old = weights.read_bytes()
    weights.write_bytes(b"retrained")
    with pytest.raises(MigrationError, match="model files .* changed since the migration"):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base)
    weights.write_bytes(old)
    assert snapshot(store, plan.target, folder) == before

    # the source re-created with another dimension, then with another id type
    store.drop("docs")
    store.create_dense_collection("docs", DIM * 2)
    store.insert_dense("docs", ids[:3], np.ones((3, DIM * 2), np.float32))
    with pytest.raises(MigrationError, match="changed schema"):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base)
    store.drop("docs")
    store.create_dense_collection("docs", DIM, id_type="str")
    store.insert_dense("docs", ["a", "b"], x[:2])
    with pytest.raises(MigrationError, match="changed schema"):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base, dry_run=True)
    store.drop("docs")
    with pytest.raises(CollectionNotFoundError):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=base)
    assert snapshot(store, plan.target, folder) == before


def test_incomplete_migration_is_refused(store, store_kind, tmp_path, model_dir):
    fill_source(store, "docs", 100, DIM)
    plan = migrate(store, store_kind, tmp_path, model_dir)
    jpath = state_dir(tmp_path / "state", plan) / "journal.sqlite"
    with sqlite3.connect(jpath) as c:
        c.execute("DELETE FROM meta WHERE key='completed_at'")
    with pytest.raises(MigrationError, match="not complete.*migrate --resume"):
        sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")


def test_sharded_migration_syncs_shard_by_shard(store, store_kind, tmp_path, model_dir):
    ids, x, payloads = fill_source(store, "docs", 240, DIM, id_type="str")
    base = tmp_path / "state"
    plans = [migrate(store, store_kind, tmp_path, model_dir, shard=f"{i}/2") for i in range(2)]
    change_source(store, ids, x, payloads, "str")
    done = [sync_migration(store, p, ProjectionEncoder(DIM), state_base=base) for p in plans]
    assert sum(r.changes for r in done) == 28 and all(r.changes for r in done)
    assert sum(r.rows_scanned for r in done) == 240 + 3
    assert_target_equals_source(store, plans[0])
    rep = verify_migration(store, plans[1], ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=base)
    assert rep.ok, rep.problems


def test_lean_target_without_dense_vectors(store, store_kind, tmp_path, model_dir):
    """A target made with --drop-dense: rows are compared by payload and code, and can still be scanned."""
    ids, x, payloads = fill_source(store, "docs", 200, DIM, id_type="str")
    plan = migrate(store, store_kind, tmp_path, model_dir, keep_dense=False)
    change_source(store, ids, x, payloads, "str")
    res = sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert (res.inserts, res.reencodes, res.payload_updates, res.deletes) == (9, 7, 6, 6)
    rep = verify_migration(store, plan, ProjectionEncoder(DIM), ProjectionEncoder(DIM), state_base=tmp_path / "state")
    assert rep.ok and rep.dense_checked == 0, rep.problems
    src = rows_of(store, "docs")
    got = {r.id: r for r in store.fetch(plan.target, list(src), with_sparse=True)}
    assert got.keys() == src.keys() and all(got[i].payload == p for i, (_, p) in src.items())
    assert sync_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "state", repair=True).changes == 0
