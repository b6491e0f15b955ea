"""verify_migration finds every kind of mismatch; cutover/rollback/status obey the verify and stay read-only."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from csr_vdb.errors import MigrationError
from csr_vdb.migrations import (
    MigrationPlan,
    cutover,
    migration_status,
    rollback,
    run_migration,
    state_dir,
    verify_migration,
)
from csr_vdb.migrations.journal import Journal
from tests.migrations.conftest import ProjectionEncoder, export, fill_source, store_uri

DIM = 16


def migrate(store, kind, tmp_path, model_dir, n=400, id_type="int", **kw):
    ids, x, payloads = fill_source(store, "docs", n, DIM, id_type=id_type)
    plan = MigrationPlan.create(
        store, store_kind=kind, uri=store_uri(kind, tmp_path), source="docs", model_dir=model_dir,
        batch_size=128, **kw,
    )
    enc = ProjectionEncoder(DIM)
    run_migration(store, plan, enc, state_base=tmp_path / "state")
    return plan, enc, ids, x, payloads


@pytest.mark.parametrize("keep_dense", [True, False])
def test_clean_migration_verifies(store, store_kind, tmp_path, model_dir, keep_dense):
    plan, enc, ids, _, _ = migrate(store, store_kind, tmp_path, model_dir, id_type="str", keep_dense=keep_dense)
    q_enc = lambda x: enc(x, k=8)  # noqa: E731 - asymmetric query k, as CSR allows
    done = []
    rep = verify_migration(store, plan, enc, q_enc, state_base=tmp_path / "state", sample=64,
                           progress=lambda d, t: done.append((d, t)))
    assert rep.ok, rep.problems
    assert rep.expected_rows == rep.target_rows == 400 and rep.ranges_checked == 4 and rep.ranges_mismatched == 0
    assert rep.sample_size == 64 and rep.sparse_mismatches == 0
    assert rep.dense_checked == (400 if keep_dense else 0)
    assert 0.0 < rep.recall_at_10 <= 1.0
    assert done[-1] == (400, 400)
    saved = json.loads((state_dir(tmp_path / "state", plan) / "verify.json").read_text())
    assert saved["ok"] is True and saved["journal_state"] == rep.journal_state
    bar = verify_migration(store, plan, enc, q_enc, state_base=tmp_path / "state", sample=16, min_recall=1.01)
    assert not bar.ok and not bar.quality_ok and "recall@10" in bar.problems[0]


def test_verify_finds_each_mismatch(store, store_kind, tmp_path, model_dir):
    plan, enc, ids, x, payloads = migrate(store, store_kind, tmp_path, model_dir)
    base = tmp_path / "state"
    # new row in the source after the migration -> missing in the target
    store.insert_dense("docs", [10_000], x[:1], [{"label": 1}])
    # a row that is not in the source -> extra
    store.upsert("docs_csr", [20_000], enc(x[:1]), [{"x": 1}], dense=x[:1])
    # payload, dense and sparse changed behind the engine's back
    store.upsert("docs_csr", [ids[5]], enc(x[5:6]), [{**payloads[5], "label": -1}], dense=x[5:6])
    store.upsert("docs_csr", [ids[7]], enc(x[7:8]), [payloads[7]], dense=x[8:9])
    other = enc(x[9:10], k=2)
    store.upsert("docs_csr", [ids[9]], other, [payloads[9]], dense=x[9:10])
    rep = verify_migration(store, plan, enc, enc, state_base=base, sample=400)
    assert not rep.ok
    assert rep.n_missing == 1 and rep.missing_ids == [10_000]
    assert rep.n_extra == 1 and rep.extra_ids == [20_000]
    assert rep.payload_mismatches == 1 and rep.payload_mismatch_ids == [ids[5]]
    assert rep.dense_mismatches == 1 and rep.dense_mismatch_ids == [ids[7]]
    assert rep.sparse_mismatches == 1 and rep.sparse_mismatch_ids == [ids[9]]
    assert rep.ranges_mismatched >= 1 and rep.target_rows == 401 and rep.expected_rows == 401
    assert len(rep.problems) == 5  # counts agree (one missing, one extra): ids, payload, dense, sparse


def test_cutover_requires_passed_verify_then_rollback(store, store_kind, tmp_path, model_dir):
    plan, enc, ids, x, _ = migrate(store, store_kind, tmp_path, model_dir)
    base = tmp_path / "state"
    before = export(store, "docs")
    with pytest.raises(MigrationError, match="never verified"):
        cutover(store, plan, state_base=base)
    store.upsert("docs_csr", [99_999], enc(x[:1]), [{}], dense=x[:1])
    assert not verify_migration(store, plan, enc, enc, state_base=base, sample=8).ok
    with pytest.raises(MigrationError, match=r"last verify failed \(target has 401 rows, expected 400\)"):
        cutover(store, plan, state_base=base)
    assert store.get_alias(plan.alias) is None

    forced = cutover(store, plan, state_base=base, force=True)
    assert forced.forced and forced.current == "docs_csr" and forced.previous is None
    back = rollback(store, plan, state_base=base)
    assert back.previous == "docs_csr" and back.current == "docs" and store.get_alias("docs_live") == "docs"
    assert export(store, "docs") == before  # verify, cutover and rollback never write the source


def test_cutover_refused_when_journal_changed_after_verify(tmp_path, model_dir):
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    plan, enc, ids, _, _ = migrate(store, "memory", tmp_path, model_dir)
    base = tmp_path / "state"
    assert verify_migration(store, plan, enc, enc, state_base=base, sample=8).ok
    with Journal.open(state_dir(base, plan) / "journal.sqlite") as j:
        j.record_batch(run=99, cursor=ids[-1], written_ids=[], rows_read=0, invalid=[])
    with pytest.raises(MigrationError, match="changed since the last verify"):
        cutover(store, plan, state_base=base)
    assert verify_migration(store, plan, enc, enc, state_base=base, sample=8).ok
    res = cutover(store, plan, state_base=base)
    assert res.current == "docs_csr" and not res.forced and res.verified_at
    hits = store.search_sparse("docs_live", enc(np.ones((1, DIM), np.float32)), limit=3)
    assert len(hits[0]) == 3  # the alias now serves the sparse collection


def _snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_status_is_read_only_and_reports_progress(store, store_kind, tmp_path, model_dir):
    fill_source(store, "docs", 300, DIM)
    plan = MigrationPlan.create(
        store, store_kind=store_kind, uri=store_uri(store_kind, tmp_path), source="docs", model_dir=model_dir,
        batch_size=100,
    )
    base = tmp_path / "state"
    st = migration_status(store, plan, state_base=base)
    assert st.state == "not started" and st.rows_total == 300 and st.target_rows is None
    assert not base.exists()
    enc = ProjectionEncoder(DIM)
    run_migration(store, plan, enc, state_base=base)
    verify_migration(store, plan, enc, enc, state_base=base, sample=8)
    folder = state_dir(base, plan)
    files, cols = _snapshot(folder), sorted(store.list_collections())
    st = migration_status(store, plan, state_base=base)
    assert _snapshot(folder) == files and sorted(store.list_collections()) == cols
    assert st.state == "complete" and st.rows_done == 300 and st.percent == 100.0 and st.batches == 3
    assert st.verify_ok is True and st.verify_current and st.eta_s is None and st.rows_per_s > 0
    assert st.target_rows == 300 and st.alias_target is None
