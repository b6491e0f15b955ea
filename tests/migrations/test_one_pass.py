"""One pass per thing on the migrate path, on the real embedded stores with the real encoder: each
dense row scanned once, the source and the target described once per run, cached layouts that
still follow an alias moved behind the store's back."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.adapters._retry import RetryPolicy
from csr_vdb.migrations import plan_migration, run_migration, sync_migration
from csr_vdb.model import CSREncoder
from csr_vdb.writer import SparseWriter
from tests.helpers import save_tiny_model
from tests.migrations.conftest import fill_source, store_uri

DIM, N, BATCH = 16, 300, 64


@pytest.fixture
def dense_scans(monkeypatch):
    """Rows scanned by each NaN/inf/all-zero check: the engine's (`prepare_batch`, sync) and all others
    (`check_dense`, which the encoder and the stores' writes use)."""
    import csr_vdb.migrations.pipeline as pipeline
    import csr_vdb.migrations.sync as sync
    import csr_vdb.validation as validation

    seen = {"engine": 0, "other": 0}
    real = validation.invalid_dense_rows

    def counted(where):
        def scan(x):
            seen[where] += len(x)
            return real(x)

        return scan

    monkeypatch.setattr(pipeline, "invalid_dense_rows", counted("engine"))
    monkeypatch.setattr(sync, "invalid_dense_rows", counted("engine"))
    monkeypatch.setattr(validation, "invalid_dense_rows", counted("other"))
    return seen


@pytest.fixture(params=["milvus", "qdrant-edge"])
def embedded(request, tmp_path):
    kind = request.param
    store = open_store(kind, store_uri(kind, tmp_path))
    yield kind, store
    store.close()


def _plan(kind, store, tmp_path, model, **kw):
    return plan_migration(store, store_kind=kind, uri=store_uri(kind, tmp_path), source="docs", model_dir=model,
                          batch_size=BATCH, **kw)


@pytest.mark.parametrize("keep_dense", [True, False])
def test_migrate_and_sync_scan_each_dense_row_once(embedded, tmp_path, dense_scans, keep_dense):
    kind, store = embedded
    fill_source(store, "docs", N, DIM)
    model = save_tiny_model(tmp_path / "model", DIM)
    encoder = CSREncoder.load(model, device="cpu")
    plan, pre = _plan(kind, store, tmp_path, model, keep_dense=keep_dense)
    dense_scans.update(engine=0, other=0)
    res = run_migration(store, plan, encoder.encode, state_base=tmp_path / "s", preflight=pre)
    assert res.rows_written == N == store.count("docs_csr")
    # once, by the engine; neither CSREncoder.encode nor the store's upsert scans the rows again
    assert dense_scans == {"engine": N, "other": 0}

    # a dry run scans every row once too (the first batch is also encoded, without a second scan)
    dense_scans.update(engine=0, other=0)
    dry = run_migration(store, plan, encoder.encode, state_base=tmp_path / "s", dry_run=True, preflight=pre)
    assert dry.dry_run and dense_scans == {"engine": N, "other": 0}

    # sync: the changed rows once, by the engine
    x = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float32)
    store.insert_dense("docs", [10_001 + i for i in range(5)], x, [{"label": i} for i in range(5)])
    store.flush("docs")
    dense_scans.update(engine=0, other=0)
    synced = sync_migration(store, plan, encoder.encode, state_base=tmp_path / "s")
    assert synced.inserts == 5 and store.count("docs_csr") == N + 5
    assert dense_scans == {"engine": 5, "other": 0}


def test_sparse_writer_scans_each_row_once(embedded, tmp_path, dense_scans):
    kind, store = embedded
    fill_source(store, "docs", 50, DIM)
    model = save_tiny_model(tmp_path / "model", DIM)
    encoder = CSREncoder.load(model, device="cpu")
    plan, pre = _plan(kind, store, tmp_path, model)
    run_migration(store, plan, encoder.encode, state_base=tmp_path / "s", preflight=pre)
    writer = SparseWriter(store, "docs_csr", encoder, source="docs")
    x = np.random.default_rng(4).normal(size=(7, DIM)).astype(np.float32)
    dense_scans.update(engine=0, other=0)
    assert writer.add(x, [20_001 + i for i in range(7)], write_source=True) == 7
    assert dense_scans == {"engine": 0, "other": 7}  # SparseWriter's own check; encode, both writes skip theirs
    assert store.count("docs_csr") == 57 and store.count("docs") == 57
    # and every other caller still gets the checks: a NaN row is refused by each on its own
    bad = x[:2].copy()
    bad[1, 0] = np.nan
    for call in (lambda: encoder.encode(bad), lambda: store.insert_dense("docs", [1, 2], bad)):
        with pytest.raises(Exception, match="NaN or inf"):
            call()


# ---------------------------------------------------------------------- describes per run (Milvus Lite)
@pytest.fixture
def describes():
    """A Milvus Lite store whose client counts describe_collection requests by name."""

    def attach(store):
        counts: dict[str, int] = {}
        real = store._client.describe_collection

        def describe_collection(name, *a, **kw):
            counts[name] = counts.get(name, 0) + 1
            return real(name, *a, **kw)

        store._client.describe_collection = describe_collection
        return counts

    return attach


def test_a_migrate_run_describes_the_source_and_the_target_once(tmp_path, describes):
    store = open_store("milvus", str(tmp_path / "m.db"))
    try:
        fill_source(store, "docs", N, DIM)
        model = save_tiny_model(tmp_path / "model", DIM)
        encoder = CSREncoder.load(model, device="cpu")
        counts = describes(store)
        store.forget_layouts()  # as a store that has not seen them yet (filling the source described it)
        plan, pre = _plan("milvus", store, tmp_path, model)
        res = run_migration(store, plan, encoder.encode, state_base=tmp_path / "s", preflight=pre)
        assert res.batches == -(-N // BATCH) > 1
        # plan: the source once (the target is absent); run: the new target once, at its first write
        assert counts == {"docs": 1, "docs_csr": 1}
    finally:
        store.close()


def test_qdrant_reads_each_layout_once_per_run(tmp_path):
    """qdrant-client (local mode here; on a server each layout read is a get_aliases request): the
    source's layout and the target's are read once per run, not once per batch."""
    store = open_store("qdrant", store_uri("qdrant", tmp_path))
    try:
        fill_source(store, "docs", N, DIM)
        model = save_tiny_model(tmp_path / "model", DIM)
        encoder = CSREncoder.load(model, device="cpu")
        store.forget_layouts()
        counts: dict[str, int] = {}
        real = store._layout

        def layout(name):
            counts[name] = counts.get(name, 0) + 1
            return real(name)

        store._layout = layout
        plan, pre = _plan("qdrant", store, tmp_path, model)
        res = run_migration(store, plan, encoder.encode, state_base=tmp_path / "s", preflight=pre)
        assert res.batches > 1 and store.count("docs_csr") == N
        assert counts == {"docs": 1, "docs_csr": 1}
    finally:
        store.close()


# ---------------------------------------------------------------------- an alias moved elsewhere
@pytest.fixture
def two_collections(tmp_path):
    """A Milvus Lite store with collections a (20 rows, ids 1..20) and b (30 rows, ids 101..130), alias
    "live" -> a, and a clock the store's alias TTL reads."""
    store = open_store("milvus", str(tmp_path / "m.db"))
    now = [0.0]
    store.layout_clock = lambda: now[0]
    rng = np.random.default_rng(0)
    for name, first, n in (("a", 1, 20), ("b", 101, 30)):
        store.create_dense_collection(name, DIM)
        store.insert_dense(name, list(range(first, first + n)), rng.normal(size=(n, DIM)).astype(np.float32))
        store.flush(name)
    store.set_alias("live", "a")
    yield store, now
    store.close()


def _ids(store) -> set:
    return {r.id for r in store.fetch("live", [1, 2, 101, 102])}


def test_an_alias_moved_by_another_process_is_seen_after_the_ttl(two_collections):
    store, now = two_collections
    assert _ids(store) == {1, 2}
    store._client.alter_alias("b", "live")  # as a cutover in another process would: not through this store
    assert _ids(store) == {1, 2}  # the cached resolution, within ALIAS_TTL_S
    now[0] += store.ALIAS_TTL_S + 0.01
    assert _ids(store) == {101, 102}
    store.set_alias("live", "a")  # this store's own move is seen at once
    assert _ids(store) == {1, 2}


def test_a_call_failing_on_a_stale_layout_reads_it_again(two_collections):
    store, _ = two_collections
    assert _ids(store) == {1, 2}
    store._client.alter_alias("b", "live")
    store._client.drop_collection("a")  # the collection the cached alias points at is gone
    assert _ids(store) == {101, 102}  # re-resolved on the failure, within the TTL


def test_a_retry_drops_the_cached_layouts(two_collections):
    store, _ = two_collections
    store.retry_policy = RetryPolicy(retries=2, sleep=lambda s: None)
    assert store.count("live") == 20
    store._client.alter_alias("b", "live")  # "a" stays: only the retry's reset can tell
    real = store._client.query
    failures = [ConnectionError("connection refused")]

    def flaky(*a, **kw):
        if failures:
            raise failures.pop()
        return real(*a, **kw)

    store._client.query = flaky
    assert store.count("live") == 30 and not failures  # the retry resolved "live" afresh, within the TTL
