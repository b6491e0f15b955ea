"""QdrantEdgeStore behaviour beyond the store contract: panics, locks, persistence, id mapping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from csr_vdb.adapters._qdrant_common import ID_NAMESPACE, RESERVED_ID_KEY, to_point_id
from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.adapters.qdrant_edge import META_FILE, QdrantEdgeStore
from csr_vdb.errors import CollectionNotFoundError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from tests.helpers import clustered

DIM = 16
HIDDEN = 64


def codes_for(x: np.ndarray, k: int = 6, seed: int = 0) -> SparseVectors:
    """Deterministic non-negative top-k codes of ``x`` through a random projection."""
    w = np.random.default_rng(seed).normal(size=(x.shape[1], HIDDEN)).astype(np.float32)
    z = np.maximum(x @ w, 0)
    idx = np.argsort(-z, axis=1)[:, :k]
    val = np.take_along_axis(z, idx, axis=1)
    val[:, 0] = np.maximum(val[:, 0], 1e-3)  # never an all-zero row
    return SparseVectors(idx, val, HIDDEN)


def fill(store, name: str, ids, x: np.ndarray, id_type: str = "int") -> None:
    store.create_dense_collection(name, DIM, id_type=id_type)
    store.insert_dense(name, ids, x, [{"n": i, "tag": f"t{i % 3}"} for i in range(len(ids))])
    store.create_sparse_collection(name + "_csr", name)
    store.upsert(name + "_csr", ids, codes_for(x), [{"n": i} for i in range(len(ids))], dense=x)


@pytest.fixture()
def root(tmp_path):
    return str(tmp_path / "edge")


@pytest.fixture()
def store(root):
    s = QdrantEdgeStore(root)
    yield s
    s.close()


@pytest.fixture(scope="module")
def data():
    return clustered(240, DIM, 6)[0]


# ---------------------------------------------------------------- the panic hazard
BAD = {
    "nan": (np.array([[1, 2]]), np.array([[np.nan, 1.0]])),
    "duplicate": (np.array([[3, 3]]), np.array([[1.0, 2.0]])),
    "out of range": (np.array([[1, HIDDEN]]), np.array([[1.0, 2.0]])),
    "negative index": (np.array([[-1, 2]]), np.array([[1.0, 2.0]])),
    "empty row": (np.array([[0, 0]]), np.array([[0.0, 0.0]])),
    "inf": (np.array([[1, 2]]), np.array([[np.inf, 1.0]])),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_sparse_refused_nothing_written_and_shard_survives_reopen(root, data, kind):
    s = QdrantEdgeStore(root)
    fill(s, "src", list(range(20)), data[:20])
    good = codes_for(data[20:23])
    idx, val = BAD[kind]
    width = max(good.width, idx.shape[1])
    bad = SparseVectors.concat([good, SparseVectors(idx, val, HIDDEN)])
    assert bad.width == width
    with pytest.raises(DataError) as err:
        s.upsert("src_csr", [20, 21, 22, 99], bad, dense=data[20:24])
    assert 99 in err.value.rows
    assert s.count("src_csr") == 20  # the good rows of the batch were not written either
    s.close()

    s = QdrantEdgeStore(root)  # the WAL is intact: reopen, write and search still work
    assert s.count("src_csr") == 20
    s.upsert("src_csr", [20, 21, 22], good, dense=data[20:23])
    assert s.count("src_csr") == 23
    assert good[:1].equals(SparseVectors.from_qdrant([s.fetch("src_csr", [20], with_sparse=True)[0].sparse], HIDDEN))
    assert 20 in [h.id for h in s.search_sparse("src_csr", good[:1], 5)[0]]
    s.close()


def test_unsorted_indices_are_sorted_before_the_engine(store, data):
    fill(store, "src", list(range(5)), data[:5])
    sv = SparseVectors(np.array([[9, 2, 5]]), np.array([[0.5, 1.0, 2.0]]), HIDDEN)
    store.upsert("src_csr", [100], sv, dense=data[:1])
    rec = store.fetch("src_csr", [100], with_sparse=True)[0]
    assert rec.sparse == ([2, 5, 9], [1.0, 2.0, 0.5])
    q = SparseVectors(np.array([[5, 9]]), np.array([[1.0, 1.0]]), HIDDEN)
    hit = store.search_sparse("src_csr", q, 1)[0][0]
    assert hit.id == 100 and hit.score == pytest.approx(2.5)


def test_engine_panics_become_store_errors(store):
    class FakePanic(BaseException):  # pyo3's PanicException derives from BaseException
        pass

    def boom():
        raise FakePanic("called `Result::unwrap()` on an `Err` value")

    with pytest.raises(StoreError, match="upsert failed for collection 'c'"):
        store._call("upsert", "c", boom)


# ---------------------------------------------------------------- locks, persistence, durability
def test_second_open_is_refused_until_close(root):
    s = QdrantEdgeStore(root)
    with pytest.raises(StoreError, match="in use by another process"):
        QdrantEdgeStore(root)
    s.close()
    s.close()  # idempotent
    with QdrantEdgeStore(root) as again:
        assert again.list_collections() == []
    with pytest.raises(StoreError, match="closed"):
        s.list_collections()


def test_data_aliases_and_str_ids_persist_across_reopen(root, data):
    ids = [f"doc/{i}" for i in range(30)]
    with QdrantEdgeStore(root) as s:
        fill(s, "docs", ids, data[:30], id_type="str")
        s.set_alias("live", "docs_csr")
    assert json.loads(open(os.path.join(root, "aliases.json")).read()) == {"live": "docs_csr"}
    with QdrantEdgeStore(root) as s:
        assert s.list_collections() == ["docs", "docs_csr"]
        assert s.get_alias("live") == "docs_csr" and s.has_collection("live")
        info = s.describe("live")
        assert (info.name, info.id_type, info.count, info.sparse_field) == ("docs_csr", "str", 30, "csr")
        rec = s.fetch("live", ["doc/7"], with_dense=True)[0]
        assert rec.payload == {"n": 7}
        np.testing.assert_allclose(rec.dense, data[7], atol=1e-6)
        assert s.search_sparse("live", codes_for(data[7:8]), 1)[0][0].id == "doc/7"


def test_upsert_survives_a_killed_process(root, data):
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from csr_vdb.adapters.qdrant_edge import QdrantEdgeStore
        from csr_vdb.sparse import SparseVectors
        s = QdrantEdgeStore({root!r})
        s.create_dense_collection("src", 4)
        s.insert_dense("src", [1, 2, 3], np.eye(4, dtype=np.float32)[:3])
        s.create_sparse_collection("dst", "src", keep_dense=False)
        s.upsert("dst", [1, 2, 3], SparseVectors(np.array([[1], [2], [3]]), np.ones((3, 1)), 8))
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with QdrantEdgeStore(root) as s:
        assert s.count("dst") == 3 and s.count("src") == 3
        assert [h.id for h in s.search_sparse("dst", SparseVectors(np.array([[2]]), np.ones((1, 1)), 8))[0]] == [2]


def test_fsync_mode_writes(root, data):
    with QdrantEdgeStore(root, fsync=True) as s:
        fill(s, "src", list(range(10)), data[:10])
        assert s.count("src_csr") == 10


def test_crashed_create_leftover_is_invisible_and_replaced(root, data):
    with QdrantEdgeStore(root) as s:
        fill(s, "src", list(range(10)), data[:10])
    os.remove(os.path.join(root, "collections", "src_csr", META_FILE))  # as if create had crashed
    with QdrantEdgeStore(root) as s:
        assert s.list_collections() == ["src"]
        with pytest.raises(CollectionNotFoundError):
            s.count("src_csr")
        s.create_sparse_collection("src_csr", "src")
        assert s.count("src_csr") == 0


# ---------------------------------------------------------------- ids and paging
def test_str_id_mapping_round_trip(store, data):
    real_uuid = str(uuid.UUID(int=12345))
    ids = ["plain", "", "ünïcode ✓", "A" * 300, "123E4567-E89B-12D3-A456-426614174000", real_uuid]
    store.create_dense_collection("s", DIM, id_type="str")
    store.insert_dense("s", ids, data[: len(ids)], [{"k": i} for i in range(len(ids))])
    assert to_point_id(real_uuid) == real_uuid  # canonical UUIDs are point ids as they are
    assert to_point_id("plain") == str(uuid.uuid5(ID_NAMESPACE, "plain"))
    got = [r.id for r in store.fetch("s", ids)]
    assert got == ids
    assert all(RESERVED_ID_KEY not in r.payload for r in store.fetch("s", ids))
    pages = list(store.iter_dense("s", batch_size=4))
    assert sorted(i for p in pages for i in p.ids) == sorted(ids)
    assert all(RESERVED_ID_KEY not in pl for p in pages for pl in p.payloads)
    assert RESERVED_ID_KEY not in store.describe("s").payload_schema
    with pytest.raises(DataError, match="reserved"):
        store.insert_dense("s", ["x"], data[:1], [{RESERVED_ID_KEY: "y"}])
    with pytest.raises(DataError):
        store.insert_dense("s", [7], data[:1])  # an int id in a str collection
    for bad in ({"x": float("nan")}, {"x": [1, {"y": float("inf")}]}, {"x": 2**64}):
        with pytest.raises(DataError, match="int64"):  # Qdrant refuses these or stores a float
            store.insert_dense("s", ["y"], data[:1], [bad])
    assert store.fetch("s", ["y"]) == []


def test_iter_dense_order_and_cursor_with_str_ids(store, data):
    ids = [f"id-{i:03d}" for i in range(97)]
    store.create_dense_collection("s", DIM, id_type="str")
    store.insert_dense("s", ids, data[:97])
    order = [i for p in store.iter_dense("s", batch_size=10) for i in p.ids]
    assert sorted(order) == sorted(ids)
    # the documented order: ascending point id (uuid5 of the str id)
    assert order == sorted(ids, key=lambda i: uuid.UUID(to_point_id(i)).int)
    # resuming behind any page cursor yields exactly the rest, in the same order
    pages = list(store.iter_dense("s", batch_size=10))
    for n, page in enumerate(pages):
        rest = [i for p in store.iter_dense("s", batch_size=7, cursor=page.cursor) for i in p.ids]
        assert rest == order[10 * (n + 1) :]
        np.testing.assert_allclose(page.vectors, data[[ids.index(i) for i in page.ids]], atol=1e-6)
    # a cursor that is not a stored id is placed by value: rows whose point id sorts above it
    for absent in ("not-stored", "8", "80000000-0000-0000-0000-00000000000"):
        rest = [i for p in store.iter_dense("s", batch_size=8, cursor=absent) for i in p.ids]
        assert rest == [i for i in order if to_point_id(i) > absent]
        assert 0 < len(rest) < len(order) or absent == "not-stored"
    store.drop("s")
    with pytest.raises(CollectionNotFoundError):
        list(store.iter_dense("s"))


def test_iter_dense_int_ids_ascending(store, data):
    ids = [5, 3, 2**40, 0, 17, 2**63 - 1]
    store.create_dense_collection("i", DIM)
    store.insert_dense("i", ids, data[: len(ids)])
    assert [i for p in store.iter_dense("i", 2) for i in p.ids] == sorted(ids)
    assert [i for p in store.iter_dense("i", 2, cursor=5) for i in p.ids] == [17, 2**40, 2**63 - 1]
    assert [i for p in store.iter_dense("i", 2, cursor=4) for i in p.ids] == [5, 17, 2**40, 2**63 - 1]


# ---------------------------------------------------------------- search and optimize
def test_results_match_reference_store_and_survive_optimize(store, data):
    ids = list(range(len(data)))
    mem = MemoryStore()
    for s in (store, mem):
        fill(s, "c", ids, data)
    codes = codes_for(data[:20])
    before = store.search_sparse("c_csr", codes, 10, with_payload=True)
    ref = mem.search_sparse("c_csr", codes, 10, with_payload=True)
    assert [[h.id for h in q] for q in before] == [[h.id for h in q] for q in ref]
    np.testing.assert_allclose(
        [[h.score for h in q] for q in before], [[h.score for h in q] for q in ref], rtol=1e-5
    )
    assert before[0][0].payload == {"n": 0}
    store.flush("c_csr")  # optimize: build indexes, merge segments
    after = store.search_sparse("c_csr", codes, 10, with_payload=True)
    assert [[h.id for h in q] for q in after] == [[h.id for h in q] for q in before]
    dense_ref = mem.search_dense("c", data[:20], 10)
    store.flush("c")
    dense = store.search_dense("c", data[:20], 10)
    recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(dense, dense_ref)])
    assert recall >= 0.9


def test_l2_scores_follow_the_reference(store, data):
    mem = MemoryStore()
    for s in (store, mem):
        s.create_dense_collection("l", DIM, metric="l2")
        s.insert_dense("l", list(range(50)), data[:50])
    got = store.search_dense("l", data[:3] * 0.5, 5)
    ref = mem.search_dense("l", data[:3] * 0.5, 5)
    assert [[h.id for h in q] for q in got] == [[h.id for h in q] for q in ref]
    np.testing.assert_allclose([[h.score for h in q] for q in got], [[h.score for h in q] for q in ref], atol=1e-4)


def test_batched_queries_and_empty_query_rows(store, data, monkeypatch):
    import csr_vdb.adapters.qdrant_edge as mod

    monkeypatch.setattr(mod.QdrantEdgeStore, "QUERY_BATCH", 3)
    fill(store, "c", list(range(60)), data[:60])
    codes = codes_for(data[:10])
    empty = SparseVectors(np.zeros((1, codes.width), np.int64), np.zeros((1, codes.width), np.float32), HIDDEN)
    res = store.search_sparse("c_csr", SparseVectors.concat([codes, empty]), 3)
    assert len(res) == 11 and res[10] == []
    monkeypatch.setattr(mod.QdrantEdgeStore, "QUERY_BATCH", 256)
    assert res[:10] == store.search_sparse("c_csr", codes, 3)
    assert all(len(q) == 3 for q in res[:10])
    assert store.search_sparse("c_csr", codes[:2], 0) == [[], []]


def test_schema_rules(store, data):
    fill(store, "c", list(range(10)), data[:10])
    with pytest.raises(StoreError, match="invalid collection name"):
        store.create_dense_collection("../escape", DIM)
    with pytest.raises(StoreError, match="already exists"):
        store.create_dense_collection("c", DIM)
    store.create_sparse_collection("c_csr", "c")  # idempotent
    with pytest.raises(StoreError, match="another schema"):
        store.create_sparse_collection("c_csr", "c", keep_dense=False)
    with pytest.raises(DataError, match="needs dense"):
        store.upsert("c_csr", [1], codes_for(data[:1]))
    with pytest.raises(StoreError, match="no sparse field"):
        store.upsert("c", [1], codes_for(data[:1]), dense=data[:1])
    with pytest.raises(StoreError, match="shadow"):
        store.set_alias("c", "c_csr")
    with pytest.raises(CollectionNotFoundError):
        store.set_alias("a", "missing")
    store.set_alias("a", "c_csr")
    store.drop("c_csr")
    assert store.get_alias("a") is None and not store.has_collection("a")
    assert not os.path.exists(os.path.join(store.uri, "collections", "c_csr"))


def test_optimize_builds_indexes_and_keeps_results(root):
    """With a tiny indexing threshold, `flush` builds HNSW + sparse indexes; recall stays high."""
    import qdrant_edge as qe

    x, _ = clustered(1500, DIM, 12, seed=5)
    ids = list(range(len(x)))
    with QdrantEdgeStore(root) as s:
        s.create_dense_collection("src", DIM)
        s.create_sparse_collection("c", "src")
    shard_dir = os.path.join(root, "collections", "c")
    config = qe.EdgeConfig(
        vectors={"vector": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
        sparse_vectors={"csr": qe.EdgeSparseVectorParams()},
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )
    shard = qe.EdgeShard.load(shard_dir, config)
    shard.close()
    mem = MemoryStore()
    with QdrantEdgeStore(root) as s:
        for st in (s, mem):
            if st is mem:
                st.create_dense_collection("src", DIM)
                st.create_sparse_collection("c", "src")
            for a in range(0, len(x), 500):
                st.upsert("c", ids[a : a + 500], codes_for(x[a : a + 500]), dense=x[a : a + 500])
        q = codes_for(x[:25])
        before = s.search_sparse("c", q, 10)
        s.flush("c")
        assert s._shards["c"].info().indexed_vectors_count > 0  # HNSW was built
        after = s.search_sparse("c", q, 10)  # the immutable index sums in another order: last bits
        ref = mem.search_sparse("c", q, 10)
        for got in (before, after):
            scores = [[h.score for h in a] for a in got]
            np.testing.assert_allclose(scores, [[h.score for h in b] for b in ref], rtol=1e-5)
            assert np.mean([[h.id for h in a] == [h.id for h in b] for a, b in zip(got, ref)]) >= 0.9
        dense = s.search_dense("c", x[:25], 10)
        exact = mem.search_dense("c", x[:25], 10)
        recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(dense, exact)])
        assert recall >= 0.9


@pytest.mark.slow
def test_uint8_index_by_default_quantises_the_search_and_keeps_the_stored_codes_exact(store):
    """The default sparse index stores one-byte weights (the engine builds it once a segment is
    large enough to index): the database's scores are then approximate, the codes it returns with
    the hits are the float32 ones written, so the re-score from them is exact; a float32 index
    scores exactly."""
    n, k, h = 50_000, 32, 512
    rng = np.random.default_rng(0)
    idx = np.argsort(rng.random((n, h)), axis=1)[:, :k]
    codes = SparseVectors(idx, rng.random((n, k)).astype(np.float32) + 0.01, h)
    q = SparseVectors(idx[:5, :8], np.ones((5, 8), np.float32), h)
    exact = (q.to_scipy() @ codes.to_scipy().T).toarray()
    store.create_dense_collection("src", DIM)
    errors = {}
    for name, index in (("u8", None), ("f32", {"datatype": "float32"})):
        store.create_sparse_collection(name, like="src", keep_dense=False, sparse_index=index)
        for a in range(0, n, 10_000):
            store.upsert(name, list(range(a, a + 10_000)), codes[a : a + 10_000])
        store.flush(name)
        found = store.search_candidates(name, q, limit=20, with_codes=True)
        rows = [hit.id for hs in found.hits for hit in hs]
        assert found.codes.equals(codes[rows])  # bit for bit
        got = np.array([hit.score for hs in found.hits for hit in hs])
        want = np.array([exact[qi, hit.id] for qi, hs in enumerate(found.hits) for hit in hs])
        errors[name] = float(np.max(np.abs(got - want) / want))
    meta = json.loads((store._root / "collections" / "u8" / META_FILE).read_text())
    assert meta["sparse_index"] == {"datatype": "uint8"}
    assert 1e-5 < errors["u8"] < 0.02 and errors["f32"] < 1e-5
