"""SparseWriter / Retriever.add and .delete: application writes encoded with the collection's model,
validated like a migration's rows, dual-written to the source; `sync` then has nothing to do."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.errors import ConfigError, DataError, StoreError
from csr_vdb.migrations import MigrationPlan, run_migration, sync_migration, verify_migration
from csr_vdb.retriever import Retriever
from csr_vdb.writer import SparseWriter
from tests.helpers import TINY, clustered, tiny_encoder
from tests.migrations.conftest import fill_source, store_uri

DIM = TINY["input_dim"]


@pytest.fixture(params=["milvus", "qdrant-edge"])
def live(request, tmp_path):
    """A migrated collection (tiny real encoder, saved) in an embedded engine: (store, kind, plan, encoder, data)."""
    kind = request.param
    uri = store_uri(kind, tmp_path)
    store = open_store(kind, uri)
    enc = tiny_encoder(seed=1)
    enc.save(tmp_path / "model")
    ids, x, payloads = fill_source(store, "docs", 150, DIM)
    plan = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=tmp_path / "model",
                                batch_size=50)
    run_migration(store, plan, enc.encode, state_base=tmp_path / "state")
    yield store, plan, enc, (ids, x, payloads), tmp_path / "state"
    store.close()


def unit(n: int, seed: int) -> np.ndarray:
    return clustered(n, DIM, clusters=3, seed=seed)[0]


def test_dual_writes_leave_sync_nothing_to_do(live):
    store, plan, enc, (ids, x, payloads), base = live
    r = Retriever(store, plan.target, enc, source="docs")
    new = unit(3, seed=9)
    assert r.add(new, [9001, 9004, 9007], [{"text": "a"}, {"text": "b"}, {}], write_source=True) == 3
    r.add(unit(1, seed=10), ids[4:5], payloads[4:5], write_source=True)  # a new vector for an existing id
    r.add(x[6:7], ids[6:7], [{"text": "retitled"}], write_source=True)  # a new payload
    r.delete(ids[8:10], write_source=True)
    assert store.count("docs") == store.count(plan.target) == 150 + 3 - 2
    res = sync_migration(store, plan, enc.encode, state_base=base)
    assert (res.status, res.changes, res.already_applied) == ("nothing to do", 0, 7)
    rep = verify_migration(store, plan, enc.encode, enc.encode_queries, state_base=base, sample=40)
    assert rep.ok, rep.problems
    # the written codes are the model's codes for those vectors, and search finds the new rows
    (rec,) = store.fetch(plan.target, [9004], with_sparse=True)
    want = enc.encode(new[1:2]).to_qdrant()[0]
    assert rec.sparse[0] == want[0] and np.allclose(rec.sparse[1], want[1], atol=1e-5)
    assert r.search(new[1:2], top_k=1)[0][0].id == 9004


def test_writes_to_the_target_alone_need_a_repair(live):
    """The source is the truth and sync trusts its manifest for the target: rows written to the target
    alone stay unseen (verify reports them) until a repair compares the target row by row."""
    store, plan, enc, (ids, x, payloads), base = live
    w = SparseWriter(store, plan.target, enc)
    w.add(unit(2, seed=3), [7001, 7002], [{"only": "target"}, {}])
    w.delete(ids[:1])
    assert sync_migration(store, plan, enc.encode, state_base=base).status == "nothing to do"
    rep = verify_migration(store, plan, enc.encode, enc.encode_queries, state_base=base, sample=20)
    assert not rep.ok and rep.n_missing == 1 and rep.n_extra == 2
    res = sync_migration(store, plan, enc.encode, state_base=base, repair=True)
    assert (res.mode, res.inserts, res.deletes, res.already_applied) == ("rebuild", 1, 2, 149)
    assert store.fetch(plan.target, [7001, 7002]) == [] and len(store.fetch(plan.target, ids[:1])) == 1
    rep = verify_migration(store, plan, enc.encode, enc.encode_queries, state_base=base, sample=20)
    assert rep.ok, rep.problems
    assert sync_migration(store, plan, enc.encode, state_base=base).status == "nothing to do"


def test_text_documents_go_through_the_embedder(live):
    store, plan, enc, (ids, x, payloads), base = live
    table = {"alpha": unit(1, 21)[0], "beta": unit(1, 22)[0]}
    w = SparseWriter(store, plan.target, enc, source="docs", embed=lambda texts: np.stack([table[t] for t in texts]))
    w.add(["alpha", "beta"], [8001, 8002], [{"text": "alpha"}, {"text": "beta"}], write_source=True)
    (rec,) = store.fetch("docs", [8002], with_dense=True)
    np.testing.assert_allclose(rec.dense, table["beta"], atol=1e-6)
    assert sync_migration(store, plan, enc.encode, state_base=base).status == "nothing to do"
    with pytest.raises(ConfigError, match="text model"):
        SparseWriter(store, plan.target, enc).add("gamma", [8003])


def test_bad_documents_are_refused_with_nothing_written(live):
    store, plan, enc, (ids, x, payloads), base = live
    w = SparseWriter(store, plan.target, enc, source="docs")
    counts = (store.count("docs"), store.count(plan.target))
    bad = unit(3, seed=5)
    bad[1] = np.nan
    with pytest.raises(DataError, match="NaN or inf at ids 6002"):
        w.add(bad, [6001, 6002, 6003], write_source=True)
    bad[1] = 0.0
    with pytest.raises(DataError, match="all-zero"):
        w.add(bad, [6001, 6002, 6003], write_source=True)
    with pytest.raises(DataError, match="dimension"):
        w.add(np.ones((1, DIM + 1), np.float32), [6001], write_source=True)
    with pytest.raises(DataError, match="duplicate"):
        w.add(unit(2, seed=6), [6001, 6001], write_source=True)
    with pytest.raises(DataError, match="ids must be int"):
        w.add(unit(1, seed=6), ["x"], write_source=True)
    with pytest.raises(DataError, match="got 1 payloads for 2"):
        w.add(unit(2, seed=6), [6001, 6002], [{}], write_source=True)
    assert (store.count("docs"), store.count(plan.target)) == counts
    with pytest.raises(ConfigError, match="source"):
        SparseWriter(store, plan.target, enc).add(unit(1, seed=6), [6001], write_source=True)
    with pytest.raises(ConfigError, match="source"):
        SparseWriter(store, plan.target, enc).delete([ids[0]], write_source=True)
    assert (store.count("docs"), store.count(plan.target)) == counts
    with pytest.raises(StoreError, match="no sparse field"):
        SparseWriter(store, "docs", enc)
    with pytest.raises(ConfigError, match="input_dim 16"):
        SparseWriter(store, plan.target, tiny_encoder(input_dim=16))


def test_a_target_with_the_unnamed_qdrant_vector_gets_its_dense_vectors(tmp_path):
    """Qdrant's unnamed default vector is the field "" (falsy, still dense): writes through
    `SparseWriter` and `Retriever.add` fill it as a migration does, so a dense re-rank finds them."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    from csr_vdb.adapters.qdrant import QdrantStore

    client = QdrantClient(path=str(tmp_path / "q"))
    client.create_collection("app", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.DOT))
    client.close()
    enc = tiny_encoder(seed=4)
    x = unit(4, seed=8)
    with QdrantStore(str(tmp_path / "q")) as store:
        store.create_sparse_collection("app_csr", "app")
        assert store.describe("app_csr").vector_field == ""
        w = SparseWriter(store, "app_csr", enc)
        assert w.has_dense and w.keeps_dense
        w.add(x[:2], [1, 2])
        r = Retriever(store, "app_csr", enc, device="cpu", source="app")
        r.add(x[2:], [3, 4], [{"n": 3}, {"n": 4}], True)  # write_source positionally, as before
        assert store.count("app") == 2
        recs = store.fetch("app_csr", [1, 2, 3, 4], with_dense=True)
        np.testing.assert_allclose(np.stack([rec.dense for rec in recs]), x, atol=1e-6)
        assert r.writer() is r
        assert r.search(x[3:4], top_k=1, candidates=4, rerank="dense")[0][0].id == 4
