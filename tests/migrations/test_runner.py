"""run_migration: full run, resume refusal rules, invalid rows, dry run, journal failures, sharding."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from csr_vdb.errors import (
    CollectionNotFoundError,
    ConfigError,
    DataError,
    MigrationError,
    ModelError,
)
from csr_vdb.migrations import (
    MigrationPlan,
    cutover,
    find_plan,
    migration_status,
    run_migration,
    state_dir,
    verify_migration,
)
from csr_vdb.migrations.journal import Journal
from tests.migrations.conftest import ProjectionEncoder, export, fill_source, store_uri

N, DIM = 600, 16


def make_plan(store, kind, tmp_path, model_dir, **kw):
    return MigrationPlan.create(
        store, store_kind=kind, uri=store_uri(kind, tmp_path), source="docs", model_dir=model_dir, **kw
    )


def test_full_run_copies_ids_payloads_and_codes(store, store_kind, tmp_path, model_dir):
    ids, x, payloads = fill_source(store, "docs", N, DIM)
    before = export(store, "docs")
    enc = ProjectionEncoder(DIM)
    plan = make_plan(store, store_kind, tmp_path, model_dir, batch_size=128, model_dim=DIM)
    seen = []
    res = run_migration(store, plan, enc, state_base=tmp_path / "state", progress=lambda d, t: seen.append((d, t)))
    assert res.status == "complete" and res.rows_written == N and res.rows_done == N
    assert res.batches == 5 and res.target_created
    assert seen[-1] == (N, N) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert store.count("docs_csr") == N
    recs = store.fetch("docs_csr", ids[:50] + ids[-50:], with_dense=True, with_sparse=True)
    assert [r.id for r in recs] == ids[:50] + ids[-50:]
    want = enc(np.concatenate([x[:50], x[-50:]])).to_qdrant()
    for r, w, p in zip(recs, want, payloads[:50] + payloads[-50:]):
        assert r.payload == p
        assert list(r.sparse[0]) == w[0] and np.allclose(r.sparse[1], w[1], atol=1e-5)
    assert export(store, "docs") == before  # the source is never written
    folder = state_dir(tmp_path / "state", plan)
    assert sorted(p.name for p in folder.iterdir()) == ["journal.sqlite", "plan.json", "run.lock"]
    assert find_plan(tmp_path / "state", store_kind, store_uri(store_kind, tmp_path), "docs") == plan
    with pytest.raises(MigrationError, match="no migration of 'docs' -> 'other'"):
        find_plan(tmp_path / "state", store_kind, store_uri(store_kind, tmp_path), "docs", target="other")
    # a hand-edited plan.json whose fields no longer match its plan_id is refused
    saved = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps({**saved, "target": "elsewhere"}))
    with pytest.raises(MigrationError, match="invalid migration plan"):
        MigrationPlan.load(folder / "plan.json")


def test_plan_checks_up_front(store, store_kind, tmp_path, model_dir):
    uri = store_uri(store_kind, tmp_path)
    with pytest.raises(CollectionNotFoundError, match="nope"):
        MigrationPlan.create(store, store_kind=store_kind, uri=uri, source="nope", model_dir=model_dir)
    store.create_dense_collection("empty", DIM)
    with pytest.raises(DataError, match="empty"):
        MigrationPlan.create(store, store_kind=store_kind, uri=uri, source="empty", model_dir=model_dir)
    fill_source(store, "docs", 50, DIM)
    with pytest.raises(ConfigError, match="no vector field 'emb'"):
        make_plan(store, store_kind, tmp_path, model_dir, vector_field="emb")
    with pytest.raises(ModelError, match="dimension 32 does not match .* dimension 16"):
        make_plan(store, store_kind, tmp_path, model_dir, model_dim=32)
    with pytest.raises(ModelError, match="cannot read model files"):
        MigrationPlan.create(store, store_kind=store_kind, uri=uri, source="docs", model_dir=tmp_path / "nomodel")
    with pytest.raises(ConfigError, match="shard"):
        make_plan(store, store_kind, tmp_path, model_dir, shard="3/3")
    with pytest.raises(ConfigError, match="target must differ"):
        make_plan(store, store_kind, tmp_path, model_dir, target="docs")
    store.create_dense_collection("docs_csr", DIM)  # a dense collection squatting on the target name
    with pytest.raises(MigrationError, match="already exists .* another schema"):
        make_plan(store, store_kind, tmp_path, model_dir)
    assert sorted(store.list_collections()) == ["docs", "docs_csr", "empty"]


def test_journal_exists_needs_resume_and_resume_checks(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    fill_source(store, "docs", 300, DIM)
    enc = ProjectionEncoder(DIM)
    base = tmp_path / "state"
    plan = make_plan(store, "memory", tmp_path, model_dir, batch_size=100)
    run_migration(store, plan, enc, state_base=base)
    with pytest.raises(MigrationError, match="--resume"):
        run_migration(store, plan, enc, state_base=base)
    again = run_migration(store, plan, enc, state_base=base, resume=True)
    assert again.rows_written == 0 and again.rows_done == 300 and again.resumed

    # the target dropped behind the journal's back: refused, not silently "complete"
    store.drop("docs_csr")
    with pytest.raises(MigrationError, match="was dropped after 300 rows"):
        run_migration(store, plan, enc, state_base=base, resume=True)
    assert not store.has_collection("docs_csr")
    run_migration(store, plan, enc, state_base=base / "fresh")

    # another model: refused
    (model_dir / "model.safetensors").write_bytes(b"weights-v2")
    plan2 = make_plan(store, "memory", tmp_path, model_dir, batch_size=100)
    with pytest.raises(MigrationError, match="model changed"):
        run_migration(store, plan2, enc, state_base=base, resume=True)
    # a journal of another plan in the same folder: refused
    folder = state_dir(base, plan)
    with sqlite3.connect(folder / "journal.sqlite") as c:
        c.execute("UPDATE meta SET value=? WHERE key='plan_id'", (json.dumps("0" * 16),))
    with pytest.raises(MigrationError, match="another plan"):
        run_migration(store, plan, enc, state_base=base, resume=True)


def test_changed_source_schema_refused(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    fill_source(store, "docs", 100, DIM)
    plan = make_plan(store, "memory", tmp_path, model_dir)
    store.drop("docs")
    store.create_dense_collection("docs", DIM, metric="ip")
    store.insert_dense("docs", [1], np.ones((1, DIM), np.float32))
    with pytest.raises(MigrationError, match="changed schema"):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s")


def test_target_collision_refused(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    fill_source(store, "docs", 100, DIM)
    plan = make_plan(store, "memory", tmp_path, model_dir)
    run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "a")
    with pytest.raises(MigrationError, match="already exists with 100 rows"):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "b")


def test_dry_run_writes_nothing(store, store_kind, tmp_path, model_dir):
    fill_source(store, "docs", 300, DIM)
    plan = make_plan(store, store_kind, tmp_path, model_dir, batch_size=100)
    enc = ProjectionEncoder(DIM)
    cols = sorted(store.list_collections())
    # the engine's own files; the store's folder is left out (Milvus Lite builds indexes on read)
    ours = lambda: sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "m.db"))  # noqa: E731
    files = ours()
    res = run_migration(store, plan, enc, state_base=tmp_path / "state", dry_run=True)
    assert res.dry_run and res.status == "dry-run" and res.rows_written == 300 and res.rows_read == 300
    assert enc.calls == 1 and res.avg_nnz == 4.0
    assert sorted(store.list_collections()) == cols
    assert ours() == files
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_invalid_rows_stop_naming_ids(tmp_path, model_dir, bad):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    ids, x, _ = fill_source(store, "docs", 300, DIM)
    vec = np.full(DIM, np.nan if bad == "nan" else 0.0, np.float32)
    # MemoryStore refuses NaN on insert; put the bad vector straight in, as a real DB lets it through
    store._cols["docs"].rows[ids[150]]["dense"]["vector"] = vec
    plan = make_plan(store, "memory", tmp_path, model_dir, batch_size=100)
    with pytest.raises(DataError, match=f"ids {ids[150]};") as ei:
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s")
    assert ei.value.rows == [ids[150]]
    # nothing of the offending batch was written; earlier batches are, and journaled
    assert store.count("docs_csr") == 100
    st = migration_status(store, plan, state_base=tmp_path / "s")
    assert st.rows_done == 100 and st.state == "failed" and "ids" in st.last_error

    skip = make_plan(store, "memory", tmp_path, model_dir, batch_size=100, skip_invalid=True)
    assert skip.plan_id == plan.plan_id  # skip_invalid may change between runs
    res = run_migration(store, skip, ProjectionEncoder(DIM), state_base=tmp_path / "s", resume=True)
    assert res.rows_skipped_invalid == 1 and res.invalid_ids == [ids[150]] and res.rows_written == 199
    assert store.count("docs_csr") == 299
    enc = ProjectionEncoder(DIM)
    rep = verify_migration(store, skip, enc, enc, state_base=tmp_path / "s", sample=50)
    assert rep.ok, rep.problems
    assert rep.skipped_invalid == 1 and rep.expected_rows == 299


class FlakyJournal:
    """Make the n-th batch record fail like a full disk."""

    def __init__(self, monkeypatch, fail_at: int) -> None:
        self.n = 0
        orig = Journal.record_batch

        def record(j, **kw):
            self.n += 1
            if self.n == fail_at:
                def boom(c):
                    raise OSError(28, "No space left on device")

                return j._write("batch", boom)
            return orig(j, **kw)

        monkeypatch.setattr(Journal, "record_batch", record)


def test_journal_write_failure_is_clean_and_resumable(tmp_path, model_dir, monkeypatch):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    ids, _, _ = fill_source(store, "docs", 500, DIM)
    plan = make_plan(store, "memory", tmp_path, model_dir, batch_size=100)
    FlakyJournal(monkeypatch, fail_at=3)
    with pytest.raises(MigrationError, match="No space left on device"):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s")
    with Journal.open(state_dir(tmp_path / "s", plan) / "journal.sqlite", readonly=True) as j:
        t = j.totals()
    assert t.batches == 2 and t.rows_written == 200 and t.cursor == ids[199]
    monkeypatch.undo()
    res = run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", resume=True)
    assert res.resumed_after == ids[199] and res.rows_written == 300 and res.rows_done == 500
    assert store.count("docs_csr") == 500


def test_unwritable_state_dir(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    fill_source(store, "docs", 50, DIM)
    plan = make_plan(store, "memory", tmp_path, model_dir)
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    with pytest.raises(MigrationError, match="cannot create state folder"):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=blocker)
    assert not store.has_collection("docs_csr")


def test_shards_cover_the_union(store, store_kind, tmp_path, model_dir):
    ids, _, _ = fill_source(store, "docs", 400, DIM, id_type="str")
    base = tmp_path / "state"
    enc = ProjectionEncoder(DIM)
    plans = [make_plan(store, store_kind, tmp_path, model_dir, batch_size=64, shard=f"{i}/3") for i in range(3)]
    assert len({p.plan_id for p in plans}) == 3
    written = [run_migration(store, plans[i], enc, state_base=base).rows_written for i in (0, 1)]
    rep = verify_migration(store, plans[0], enc, enc, state_base=base, sample=32)
    assert not rep.ok and not rep.journals_complete and rep.incomplete_shards == ["2/3 (never run)"]
    assert rep.n_missing == 400 - sum(written)
    written.append(run_migration(store, plans[2], enc, state_base=base).rows_written)
    assert sum(written) == 400 and min(written) > 0
    rep = verify_migration(store, plans[1], enc, enc, state_base=base, sample=32)
    assert rep.ok, rep.problems
    assert store.count("docs_csr") == 400
    # verified through shard 1, cut over through shard 2: one split, one verify
    assert migration_status(store, plans[2], state_base=base).verify_current
    assert cutover(store, plans[2], state_base=base).current == "docs_csr"


def test_store_failure_and_interrupt_leave_a_resumable_journal(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore
    from csr_vdb.errors import StoreError

    class FlakyStore(MemoryStore):
        fail_at = 3
        calls = 0

        def upsert(self, *a, **kw):
            type(self).calls += 1
            if type(self).calls == self.fail_at:
                raise StoreError("connection reset by peer")
            return super().upsert(*a, **kw)

    store = FlakyStore()
    ids, _, _ = fill_source(store, "docs", 600, DIM)
    base = tmp_path / "s"
    plan = make_plan(store, "memory", tmp_path, model_dir, batch_size=100)
    with pytest.raises(StoreError, match="connection reset"):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=base)
    st = migration_status(store, plan, state_base=base)
    assert st.state == "failed" and st.rows_done == 200 and "connection reset" in st.last_error

    def ctrl_c(done, total):
        if done >= 400:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_migration(store, plan, ProjectionEncoder(DIM), state_base=base, resume=True, progress=ctrl_c)
    st = migration_status(store, plan, state_base=base)
    assert st.state == "interrupted" and st.rows_done == 400 and st.rows_per_s and st.eta_s is not None
    res = run_migration(store, plan, ProjectionEncoder(DIM), state_base=base, resume=True)
    assert res.resumed_after == ids[399] and res.rows_done == 600 and store.count("docs_csr") == 600


class Counting:
    """A store proxy that counts the calls the engine makes, by method and collection."""

    def __init__(self, store) -> None:
        self._store = store
        self.calls: dict[tuple[str, str], int] = {}

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            key = (name, args[0] if args and isinstance(args[0], str) else "")
            self.calls[key] = self.calls.get(key, 0) + 1
            return attr(*args, **kwargs)

        return counted

    def n(self, method: str, collection: str = "") -> int:
        return sum(v for (m, c), v in self.calls.items() if m == method and (not collection or c == collection))


@pytest.fixture
def row_checks(monkeypatch):
    """Rows passed through each validation: the engine's dense check, any dense check, any sparse check."""
    import csr_vdb.migrations.pipeline as pipeline
    import csr_vdb.validation as validation
    from csr_vdb.sparse import SparseVectors

    seen = {"engine_dense": 0, "dense": 0, "sparse": 0}
    dense_rows, sparse_rows = validation.invalid_dense_rows, SparseVectors.invalid_rows

    def engine_dense(x):
        seen["engine_dense"] += len(x)
        return dense_rows(x)

    def any_dense(x):
        seen["dense"] += len(x)
        return dense_rows(x)

    def any_sparse(self, *a, **kw):
        seen["sparse"] += len(self)
        return sparse_rows(self, *a, **kw)

    monkeypatch.setattr(pipeline, "invalid_dense_rows", engine_dense)
    monkeypatch.setattr(validation, "invalid_dense_rows", any_dense)  # check_dense, as the stores' writes use it
    monkeypatch.setattr(SparseVectors, "invalid_rows", any_sparse)
    return seen


@pytest.fixture
def schema_checks(monkeypatch):
    """Calls of the target schema check, wherever the engine makes them."""
    import csr_vdb.migrations.plan as plan_mod
    import csr_vdb.migrations.runner as runner_mod

    calls = []
    for mod in (plan_mod, runner_mod):
        orig = mod.check_target_schema
        monkeypatch.setattr(mod, "check_target_schema", lambda *a, _o=orig, **k: (calls.append(a), _o(*a, **k))[1])
    return calls


@pytest.mark.parametrize("keep_dense", [True, False])
def test_one_pass_per_thing(store, store_kind, tmp_path, model_dir, row_checks, schema_checks, keep_dense):
    """Planned and run together, the source is described once, and each row validated once by the
    engine (dense, before encoding); sparse codes once in all, by the store's write."""
    from csr_vdb.migrations import plan_migration

    n = 300
    fill_source(store, "docs", n, DIM)
    row_checks.update(dict.fromkeys(row_checks, 0))  # count from here on (filling the source checked rows too)
    spy = Counting(store)
    plan, pre = plan_migration(spy, store_kind=store_kind, uri=store_uri(store_kind, tmp_path), source="docs",
                               model_dir=model_dir, batch_size=64, keep_dense=keep_dense, model_dim=DIM)
    assert pre.target is None and pre.source.count == n
    res = run_migration(spy, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", preflight=pre)
    assert res.rows_written == n and store.count("docs_csr") == n
    assert spy.n("describe", "docs") == 1 and spy.n("describe", "docs_csr") == 0
    assert spy.n("has_collection", "docs_csr") == 1 and spy.n("count") == 0
    assert schema_checks == []  # no target to check
    assert row_checks["engine_dense"] == n
    assert row_checks["dense"] == 0  # the write is told the rows are validated (upsert(validated=True))
    assert row_checks["sparse"] == n


def test_one_pass_with_an_existing_target_and_a_dry_run(tmp_path, model_dir, row_checks, schema_checks):
    from csr_vdb.adapters.memory import MemoryStore
    from csr_vdb.migrations import plan_migration

    store = MemoryStore()
    fill_source(store, "docs", 200, DIM)
    store.create_sparse_collection("docs_csr", like="docs")  # e.g. made by another shard of the split
    row_checks.update(dict.fromkeys(row_checks, 0))
    spy = Counting(store)
    kw = dict(store_kind="memory", uri="memory://", source="docs", model_dir=model_dir, batch_size=50)
    plan, pre = plan_migration(spy, **kw)
    dry = run_migration(spy, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", dry_run=True, preflight=pre)
    assert dry.rows_written == 200 and store.count("docs_csr") == 0
    assert spy.n("describe", "docs") == 1 and spy.n("describe", "docs_csr") == 1 and len(schema_checks) == 1
    assert row_checks["engine_dense"] == 200 and row_checks["sparse"] == 50  # a dry run checks the codes it made
    res = run_migration(spy, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", preflight=pre)
    assert res.rows_written == 200 and not res.target_created
    assert spy.n("describe") == 2 and len(schema_checks) == 1
    # a saved plan run on its own is checked against the store again, once
    again = run_migration(spy, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", resume=True)
    assert again.rows_done == 200 and spy.n("describe", "docs") == 2 and len(schema_checks) == 2
