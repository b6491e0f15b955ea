"""The pipeline's parts: a batch kept to its shard, validated once and encoded; the tally; a bad encoder."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.adapters.base import DensePage
from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.errors import DataError
from csr_vdb.migrations import MigrationPlan, migration_status, run_migration
from csr_vdb.migrations.pipeline import Batch, Tally, prepare_batch
from csr_vdb.sparse import SparseVectors
from tests.migrations.conftest import ProjectionEncoder, fill_source

DIM = 16


@pytest.fixture
def source(model_dir):
    store = MemoryStore()
    ids, x, payloads = fill_source(store, "docs", 40, DIM)
    return store, ids, x, payloads


def _plan(store, model_dir, **kw) -> MigrationPlan:
    return MigrationPlan.create(store, store_kind="memory", uri="memory://", source="docs", model_dir=model_dir, **kw)


def test_batch_keeps_its_shard_and_encodes_it(source, model_dir):
    store, ids, x, payloads = source
    page = DensePage(ids, x, payloads)
    halves = [prepare_batch(page, _plan(store, model_dir, shard=f"{i}/2"), ProjectionEncoder(DIM)) for i in (0, 1)]
    assert sorted(halves[0].ids + halves[1].ids) == sorted(ids) and not set(halves[0].ids) & set(halves[1].ids)
    for b in halves:
        assert b.rows_read == 40 and b.cursor == ids[-1] and b.invalid == []
        rows = [ids.index(i) for i in b.ids]
        np.testing.assert_array_equal(b.vectors, x[rows])
        assert b.payloads == [payloads[r] for r in rows]
        assert len(b.codes) == len(b.ids) and b.codes.width == 4


def test_invalid_rows_stop_or_are_skipped_with_their_reason(source, model_dir):
    store, ids, x, payloads = source
    x = x.copy()
    x[3, 0], x[7] = np.inf, 0.0
    page = DensePage(ids, x, payloads)
    with pytest.raises(DataError, match=f"NaN or inf vectors at ids {ids[3]};") as ei:
        prepare_batch(page, _plan(store, model_dir), ProjectionEncoder(DIM))
    assert ei.value.rows == [ids[3]]
    enc = ProjectionEncoder(DIM)
    b = prepare_batch(page, _plan(store, model_dir, skip_invalid=True), enc)
    assert b.invalid == [(ids[3], "NaN or inf"), (ids[7], "all-zero vector")]
    assert len(b.ids) == 38 and ids[3] not in b.ids and ids[7] not in b.ids and b.rows_read == 40
    assert len(b.codes) == 38 and enc.calls == 1


def test_encoder_output_is_checked(source, model_dir):
    store, ids, x, payloads = source
    page = DensePage(ids, x, payloads)
    plan = _plan(store, model_dir)
    short = lambda v: ProjectionEncoder(DIM)(v[:-1])  # noqa: E731
    with pytest.raises(DataError, match="encoder returned 39 sparse vectors for 40 rows"):
        prepare_batch(page, plan, short)
    with pytest.raises(DataError, match="encoder returned ndarray"):
        prepare_batch(page, plan, lambda v: np.zeros((len(v), 4)))

    def nan_codes(v):
        codes = ProjectionEncoder(DIM)(v)
        codes.values[2, 0] = np.nan
        return codes

    # a dry run has no write to check its codes: it checks them itself
    with pytest.raises(DataError, match=f"invalid sparse vectors .* at ids {ids[2]}"):
        prepare_batch(page, plan, nan_codes, check_codes=True)
    assert prepare_batch(page, plan, nan_codes).codes is not None  # a real run leaves that to the write


def test_bad_codes_are_refused_by_the_write_and_the_run_resumes(model_dir, tmp_path):
    store = MemoryStore()
    ids, _, _ = fill_source(store, "docs", 300, DIM)
    plan = _plan(store, model_dir, batch_size=100)
    calls = {"n": 0}

    def bad_third_batch(v):
        calls["n"] += 1
        codes = ProjectionEncoder(DIM)(v)
        if calls["n"] == 3:
            codes.values[5, 0] = np.nan
        return codes

    with pytest.raises(DataError, match="invalid sparse vectors"):
        run_migration(store, plan, bad_third_batch, state_base=tmp_path / "s")
    st = migration_status(store, plan, state_base=tmp_path / "s")
    assert st.state == "failed" and st.rows_done == 200 and store.count("docs_csr") == 200
    res = run_migration(store, plan, ProjectionEncoder(DIM), state_base=tmp_path / "s", resume=True)
    assert res.resumed_after == ids[199] and res.rows_done == 300


def _batch(n: int, nnz: int, invalid: int = 0) -> Batch:
    codes = SparseVectors(np.tile(np.arange(4), (n, 1)), np.where(np.arange(4) < nnz, 1.0, 0.0)[None].repeat(n, 0), 8)
    bad = [(f"bad-{i}", "all-zero vector") for i in range(invalid)]
    return Batch(cursor=n, rows_read=n + invalid, ids=list(range(n)), vectors=None, payloads=[{}] * n, codes=codes,
                 invalid=bad)


def test_tally_counts_batches_and_caps_the_listed_ids():
    t = Tally()
    assert t.avg_nnz is None
    t.add(_batch(10, 2, invalid=60))
    t.add(_batch(30, 4, invalid=60))
    t.add(Batch(cursor=0, rows_read=5, ids=[], vectors=None, payloads=[], codes=None, invalid=[]))
    assert (t.rows_read, t.rows_written, t.rows_invalid, t.batches) == (165, 40, 120, 3)
    assert t.nnz == 10 * 2 + 30 * 4 and t.encoded == 40 and t.avg_nnz == 3.5
    assert len(t.invalid_ids) == 100 and t.invalid_ids[:2] == ["bad-0", "bad-1"]
