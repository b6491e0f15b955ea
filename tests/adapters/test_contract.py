"""The store contract: every `VectorStore` kind behaves like `MemoryStore` (see tests/adapters/conftest.py)."""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pytest

from csr_vdb.adapters.base import SPARSE_FIELD, DensePage, Hit, VectorStore
from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.errors import CollectionNotFoundError, ConfigError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from tests.adapters.conftest import adapter_module
from tests.helpers import clustered

DIM = 8
H = 64  # sparse dimension of the test codes

PAYLOAD_KINDS = [
    {"title": "héllo wörld ✓ 日本語 🚀", "n": 42, "f": 0.1, "neg": -3.5, "flag": True},
    {"off": False, "none": None, "big": 1234567890123, "tiny": 1e-300, "zero": 0},
    {"tags": ["a", "b", "ç"], "mixed": [1, "two", 3.5, None, True, {"k": [1]}], "empty_list": []},
    {"nested": {"a": {"b": [1, 2, {"c": None, "d": "é"}]}, "e": {}}, "quote": "it's \"quoted\" \\ back"},
    {},
]


# --------------------------------------------------------------------------- builders
def ids_for(id_type: str, n: int, seed: int = 0) -> list:
    """Unique ids in shuffled order: int ids spread over a wide range, str ids UUID-like."""
    rng = np.random.default_rng(seed)
    if id_type == "int":
        base = rng.choice(10**6, size=n, replace=False).astype(np.int64) * 1_000_003
        return [int(b) for b in base]
    return [str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | i)) for i in range(n)]


def payloads_for(n: int) -> list[dict]:
    return [dict(PAYLOAD_KINDS[i % len(PAYLOAD_KINDS)], row=i) if i % 7 else {} for i in range(n)]


def codes_for(x: np.ndarray, h: int = H, k: int = 6, seed: int = 1) -> SparseVectors:
    """Deterministic k-sparse non-negative codes of ``x`` (a fixed random ReLU projection)."""
    rng = np.random.default_rng(seed)
    z = np.maximum(x @ rng.normal(size=(x.shape[1], h)).astype(np.float32), 0)
    top = np.argsort(-z, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(z, top, axis=1).astype(np.float32)
    vals[:, 0] = np.maximum(vals[:, 0], 1e-3)  # never an empty row
    return SparseVectors(np.where(vals > 0, top, 0), vals, h)


def fill_dense(
    store: VectorStore,
    name: str,
    n: int,
    *,
    id_type: str = "int",
    metric: str = "cosine",
    seed: int = 0,
    payloads: bool = True,
    batches: int = 2,
):
    """Create a dense collection and insert ``n`` clustered rows in ``batches`` writes."""
    x, _ = clustered(n, DIM, clusters=6, seed=seed)
    ids = ids_for(id_type, n, seed)
    pl = payloads_for(n) if payloads else None
    store.create_dense_collection(name, DIM, metric=metric, id_type=id_type)
    bounds = np.linspace(0, n, batches + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        store.insert_dense(name, ids[a:b], x[a:b], pl[a:b] if pl else None)
        if a == 0:
            store.flush(name)  # rows both in sealed storage and in the write buffer
    return ids, x, pl if pl else [{} for _ in range(n)]


def fill_sparse(store: VectorStore, src: str, name: str, ids, x, payloads, keep_dense: bool = True):
    codes = codes_for(x)
    store.create_sparse_collection(name, like=src, keep_dense=keep_dense)
    store.upsert(name, ids, codes, payloads, dense=x if keep_dense else None)
    store.flush(name)
    return codes


def assert_cosine_dense_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Dense vectors of a cosine collection: Qdrant re-normalises them on write, which may move
    the last bit of a unit vector; ip/l2 collections are compared exactly elsewhere."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.dtype == np.float32


def concat_pages(pages: list[DensePage]):
    ids = [i for p in pages for i in p.ids]
    vecs = np.concatenate([p.vectors for p in pages]) if pages else np.zeros((0, DIM), np.float32)
    pls = [q for p in pages for q in p.payloads]
    return ids, vecs, pls


def assert_ranked(hits: list[list[Hit]], scores: np.ndarray, ids: list, limit: int, positive_only: bool):
    """Each hit list is an exact top-``limit`` of ``scores`` ``[q, n]``: right length, scores in
    order and equal to the reference, and each returned id carrying its own exact score."""
    row = {i: r for r, i in enumerate(ids)}
    assert len(hits) == len(scores)
    for q, hs in enumerate(hits):
        ref = np.sort(scores[q])[::-1]
        if positive_only:
            ref = ref[ref > 0]
        ref = ref[:limit]
        assert len(hs) == len(ref), f"query {q}: {len(hs)} hits, expected {len(ref)}"
        got = np.array([h.score for h in hs])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert len({h.id for h in hs}) == len(hs)
        for h in hs:
            assert math.isclose(h.score, scores[q, row[h.id]], rel_tol=1e-4, abs_tol=1e-5), (q, h)


# --------------------------------------------------------------------------- describe & co.
@pytest.mark.parametrize("id_type", ["int", "str"])
def test_create_describe_count_list_has(store, make_name, id_type):
    name = make_name("dense")
    ids, _, _ = fill_dense(store, name, 30, id_type=id_type, metric="ip")
    info = store.describe(name)
    assert info.name == name
    assert (info.dimension, info.metric, info.id_type, info.count) == (DIM, "ip", id_type, 30)
    assert info.vector_field == "vector" and info.vector_fields == {"vector": DIM}
    assert info.sparse_field is None
    assert store.count(name) == 30
    assert name in store.list_collections()
    assert store.has_collection(name)
    assert not store.has_collection(make_name("absent"))
    with pytest.raises(StoreError):
        store.create_dense_collection(name, DIM)  # exists already


def test_missing_collection_raises_not_found(store, make_name):
    missing = make_name("missing")
    q = np.ones((1, DIM), np.float32)
    codes = codes_for(q)
    calls = [
        lambda: store.describe(missing),
        lambda: store.count(missing),
        lambda: list(store.iter_dense(missing)),
        lambda: store.fetch(missing, [1]),
        lambda: store.search_dense(missing, q),
        lambda: store.search_sparse(missing, codes),
        lambda: store.insert_dense(missing, [1], q),
        lambda: store.upsert(missing, [1], codes),
        lambda: store.create_sparse_collection(make_name("tgt"), like=missing),
        lambda: store.set_alias(make_name("al"), missing),
    ]
    for call in calls:
        with pytest.raises(CollectionNotFoundError) as err:
            call()
        assert missing in str(err.value)
    store.drop(missing)  # no error
    store.drop_alias(missing)  # no error
    assert store.get_alias(missing) is None


# --------------------------------------------------------------------------- payloads & ids
@pytest.mark.parametrize("id_type", ["int", "str"])
def test_payloads_and_ids_round_trip_exactly(store, make_name, id_type):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 25, id_type=id_type)
    got_ids, vecs, got_pl = concat_pages(list(store.iter_dense(src, batch_size=10)))
    order = sorted(range(len(ids)), key=lambda r: ids[r])
    assert got_ids == [ids[r] for r in order]
    assert all(type(i) is type(ids[0]) for i in got_ids)
    assert_cosine_dense_equal(vecs, x[order])
    assert got_pl == [pl[r] for r in order]

    fill_sparse(store, src, tgt, ids, x, pl)
    recs = store.fetch(tgt, ids)
    assert [r.id for r in recs] == ids
    assert [r.payload for r in recs] == pl
    hits = store.search_sparse(tgt, codes_for(x[:3]), limit=25, with_payload=True)
    for hs in hits:
        for h in hs:
            assert h.payload == pl[ids.index(h.id)]
    assert all(h.payload is None for h in store.search_sparse(tgt, codes_for(x[:1]), limit=3)[0])


def test_insert_dense_is_an_upsert(store, make_name):
    name = make_name("dense")
    ids, x, _ = fill_dense(store, name, 10)
    store.insert_dense(name, ids[:2], x[2:4], [{"v": 1}, {"v": 2}])
    assert store.count(name) == 10
    recs = store.fetch(name, ids[:2], with_dense=True)
    assert [r.payload for r in recs] == [{"v": 1}, {"v": 2}]
    assert_cosine_dense_equal(np.stack([r.dense for r in recs]), x[2:4])


# --------------------------------------------------------------------------- iter_dense
@pytest.mark.parametrize("id_type", ["int", "str"])
def test_iter_dense_order_cursor_and_batch_sizes(store, make_name, id_type):
    name = make_name("dense")
    ids, x, pl = fill_dense(store, name, 40, id_type=id_type, batches=3)
    order = sorted(range(len(ids)), key=lambda r: ids[r])
    want = [ids[r] for r in order]
    for bs in (1, 7, 40, 100):
        pages = list(store.iter_dense(name, batch_size=bs))
        assert all(0 < len(p) <= bs for p in pages)
        assert all(p.cursor == p.ids[-1] for p in pages)
        got, vecs, _ = concat_pages(pages)
        assert got == want, f"batch_size={bs}"
        assert_cosine_dense_equal(vecs, x[order])
        assert all(p.vectors.dtype == np.float32 and p.vectors.shape == (len(p), DIM) for p in pages)
    # resume after any cursor (exclusive), including one that is not a stored id
    for cut in (0, 12, 39):
        got, _, got_pl = concat_pages(list(store.iter_dense(name, batch_size=9, cursor=want[cut])))
        assert got == want[cut + 1 :]
        assert got_pl == [pl[r] for r in order[cut + 1 :]]
    between = want[5] + 1 if id_type == "int" else want[5] + "0"
    got, _, _ = concat_pages(list(store.iter_dense(name, batch_size=8, cursor=between)))
    assert got == want[6:]
    assert list(store.iter_dense(name, batch_size=5, cursor=want[-1])) == []
    # the cursor's former name still works, with a deprecation warning
    with pytest.warns(DeprecationWarning, match="cursor="):
        old = concat_pages(list(store.iter_dense(name, batch_size=9, after=want[12])))
    assert old[0] == want[13:]


def test_iter_dense_matches_memory_store(store, make_name):
    name = make_name("dense")
    ref = MemoryStore()
    ids, x, pl = fill_dense(store, name, 30)
    fill_dense(ref, name, 30)
    for bs, cursor in ((4, None), (11, ids[3])):
        a = concat_pages(list(store.iter_dense(name, batch_size=bs, cursor=cursor)))
        b = concat_pages(list(ref.iter_dense(name, batch_size=bs, cursor=cursor)))
        assert a[0] == b[0] and a[2] == b[2]
        assert_cosine_dense_equal(a[1], b[1])


def test_iter_dense_empty_collection(store, make_name):
    name = make_name("empty")
    store.create_dense_collection(name, DIM)
    assert list(store.iter_dense(name)) == []
    assert store.count(name) == 0


# --------------------------------------------------------------------------- sparse collections
def test_create_sparse_collection_idempotent_and_conflict(store, make_name):
    src, tgt, lean = make_name("src"), make_name("tgt"), make_name("lean")
    ids, x, pl = fill_dense(store, src, 12, id_type="str")
    store.create_sparse_collection(tgt, like=src)
    store.create_sparse_collection(tgt, like=src)  # same schema: no-op
    info = store.describe(tgt)
    assert info.sparse_field == SPARSE_FIELD
    assert info.id_type == "str"
    assert info.vector_field == "vector" and info.dimension == DIM
    assert info.count == 0
    with pytest.raises(StoreError):
        store.create_sparse_collection(tgt, like=src, keep_dense=False)  # other schema
    store.create_sparse_collection(lean, like=src, keep_dense=False)
    info = store.describe(lean)
    assert info.sparse_field == SPARSE_FIELD and info.vector_field is None and info.vector_fields == {}
    with pytest.raises(StoreError):
        store.create_sparse_collection(lean, like=src, keep_dense=True)
    with pytest.raises(StoreError):
        store.create_sparse_collection(src, like=src)  # a dense collection is another schema
    # the lean collection takes no dense vectors, the kept-dense one requires them
    codes = codes_for(x)
    with pytest.raises(DataError):
        store.upsert(lean, ids, codes, pl, dense=x)
    with pytest.raises(DataError):
        store.upsert(tgt, ids, codes, pl)
    store.upsert(lean, ids, codes, pl)
    assert store.count(lean) == 12 and store.count(tgt) == 0


def test_upsert_is_idempotent_and_latest_wins(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 10)
    codes = fill_sparse(store, src, tgt, ids, x, pl)
    store.upsert(tgt, ids, codes, pl, dense=x)  # replay of the same batch
    assert store.count(tgt) == 10
    new = SparseVectors(np.array([[5, 1]]), np.array([[2.0, 0.5]], np.float32), H)
    store.upsert(tgt, [ids[3]], new, [{"v": "new"}], dense=x[4:5])
    store.flush(tgt)
    assert store.count(tgt) == 10
    (rec,) = store.fetch(tgt, [ids[3]], with_dense=True, with_sparse=True)
    assert rec.payload == {"v": "new"}
    assert rec.sparse == ([1, 5], [0.5, 2.0])
    assert_cosine_dense_equal(rec.dense, x[4])


def test_write_to_dense_collection_needs_sparse_field(store, make_name):
    src = make_name("src")
    ids, x, _ = fill_dense(store, src, 5)
    with pytest.raises(StoreError):
        store.upsert(src, ids, codes_for(x), dense=x)
    with pytest.raises(StoreError):
        store.search_sparse(src, codes_for(x[:1]))


# --------------------------------------------------------------------------- search
@pytest.mark.parametrize("id_type", ["int", "str"])
def test_search_sparse_is_exact_top_k(store, make_name, id_type):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 200, id_type=id_type)
    codes = fill_sparse(store, src, tgt, ids, x, pl)
    q, _ = clustered(12, DIM, clusters=6, seed=0, noise=0.3)
    qc = codes_for(q)
    exact = (qc.to_scipy() @ codes.to_scipy().T).toarray()
    for limit in (1, 10):
        assert_ranked(store.search_sparse(tgt, qc, limit=limit), exact, ids, limit, positive_only=True)
    # identical to the reference store, ties aside
    ref = MemoryStore()
    fill_dense(ref, src, 200, id_type=id_type)
    fill_sparse(ref, src, tgt, ids, x, pl)
    a, b = store.search_sparse(tgt, qc, limit=10), ref.search_sparse(tgt, qc, limit=10)
    for ha, hb in zip(a, b):
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_search_candidates_return_the_hits_with_their_stored_vectors(store, make_name, id_type):
    """One request: the hits of `search_sparse`, and row-aligned with them the codes and dense
    vectors that were written (what the retriever re-ranks without a second fetch)."""
    src, tgt, lean = make_name("src"), make_name("tgt"), make_name("lean")
    ids, x, pl = fill_dense(store, src, 80, id_type=id_type, metric="ip")  # ip: vectors kept bit for bit
    codes = fill_sparse(store, src, tgt, ids, x, pl)
    fill_sparse(store, src, lean, ids, x, pl, keep_dense=False)
    qc = codes_for(clustered(5, DIM, clusters=6, seed=1, noise=0.3)[0])
    found = store.search_candidates(tgt, qc, limit=12, with_payload=True, with_codes=True, with_dense=True)
    plain = store.search_sparse(tgt, qc, limit=12, with_payload=True)
    assert [[h.id for h in hs] for hs in found.hits] == [[h.id for h in hs] for hs in plain]
    assert found.lengths == [len(hs) for hs in plain] and sum(found.lengths) > 0
    rows = [ids.index(h.id) for hs in found.hits for h in hs]
    assert found.codes.dim == qc.dim and len(found.codes) == len(rows)
    assert found.codes.equals(codes[rows], atol=1e-6)  # the codes as written, up to the stored float
    np.testing.assert_array_equal(found.dense, x[rows])
    assert found.dense.dtype == np.float32
    assert all(h.payload == pl[ids.index(h.id)] for hs in found.hits for h in hs)
    # only what is asked for comes back
    bare = store.search_candidates(lean, qc, limit=12)
    assert bare.codes is None and bare.dense is None and all(h.payload is None for hs in bare.hits for h in hs)
    assert store.search_candidates(lean, qc, limit=0, with_codes=True).hits == [[] for _ in range(5)]
    with pytest.raises(ConfigError, match="keeps no dense"):
        store.search_candidates(lean, qc, limit=3, with_dense=True)
    with pytest.raises(ConfigError, match="limit"):
        store.search_sparse(lean, qc, limit=-1)


SPARSE_INDEX_ASKS = {"datatype": "float16", "memory": "cold", "full_scan_threshold": 5000,
                     "inverted_index_algo": "TAAT_NAIVE", "drop_ratio_build": 0.0}


def test_sparse_index_settings_are_taken_or_refused_per_engine(store, make_name):
    """Each engine takes its own index settings (the collection then searches and returns its codes
    as every other does) and refuses the others with a ConfigError, creating nothing."""
    src, tgt = make_name("src"), make_name("tuned")
    ids, x, pl = fill_dense(store, src, 120)
    takes = set(type(store).SPARSE_INDEX_SETTINGS)
    store.create_sparse_collection(tgt, like=src, keep_dense=False,
                                   sparse_index={k: v for k, v in SPARSE_INDEX_ASKS.items() if k in takes})
    codes = codes_for(x)
    store.upsert(tgt, ids, codes, pl)
    store.flush(tgt)
    qc = codes_for(clustered(6, DIM, clusters=6, seed=2, noise=0.3)[0])
    found = store.search_candidates(tgt, qc, limit=10, with_codes=True)
    assert_ranked(found.hits, (qc.to_scipy() @ codes.to_scipy().T).toarray(), ids, 10, positive_only=True)
    rows = [ids.index(h.id) for hs in found.hits for h in hs]
    assert found.codes.equals(codes[rows], atol=1e-6)
    other = sorted(set(SPARSE_INDEX_ASKS) - takes)
    if other:
        bad = make_name("refused")
        with pytest.raises(ConfigError, match=other[0]):
            store.create_sparse_collection(bad, like=src, sparse_index={k: SPARSE_INDEX_ASKS[k] for k in other})
        assert not store.has_collection(bad)
    for wrong in ({"datatype": "int4"}, {"no_such_setting": 1}, {"full_scan_threshold": -1}, {"drop_ratio_build": 1.5}):
        with pytest.raises(ConfigError):
            store.create_sparse_collection(make_name("wrong"), like=src, sparse_index=wrong)


def test_search_dense_takes_an_hnsw_ef(store, make_name):
    name = make_name("dense")
    ids, x, _ = fill_dense(store, name, 200)
    q, _ = clustered(8, DIM, clusters=6, seed=0, noise=0.3)
    exact = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    for ef in (16, 512):
        assert_ranked(store.search_dense(name, q, limit=10, ef=ef), exact, ids, 10, positive_only=False)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="ef"):
            store.search_dense(name, q, limit=3, ef=bad)


def test_search_sparse_without_overlap_is_empty(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 20)
    codes = SparseVectors(np.tile([[0, 1]], (20, 1)), np.ones((20, 2), np.float32), H)
    store.create_sparse_collection(tgt, like=src, keep_dense=False)
    store.upsert(tgt, ids, codes, pl)
    store.flush(tgt)
    q = SparseVectors(np.array([[7], [1]]), np.array([[1.0], [2.0]], np.float32), H)
    hits = store.search_sparse(tgt, q, limit=3)
    assert hits[0] == []
    assert len(hits[1]) == 3 and all(math.isclose(h.score, 2.0, rel_tol=1e-6) for h in hits[1])


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_search_dense_is_exact_top_k(store, make_name, metric):
    name = make_name("dense")
    ids, x, _ = fill_dense(store, name, 200, metric=metric)
    x = x * np.linspace(0.5, 2.0, len(x), dtype=np.float32)[:, None] if metric == "ip" else x
    if metric == "ip":  # un-normalised norms make ip differ from cosine
        store.insert_dense(name, ids, x, payloads_for(len(ids)))
        store.flush(name)
    q, _ = clustered(10, DIM, clusters=6, seed=0, noise=0.3)
    if metric == "cosine":
        exact = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    else:
        exact = q @ x.T
    hits = store.search_dense(name, q, limit=10, with_payload=True)
    assert_ranked(hits, exact, ids, 10, positive_only=False)
    pl = payloads_for(len(ids))
    assert all(h.payload == pl[ids.index(h.id)] for hs in hits for h in hs)


def test_search_dense_on_kept_dense_field_of_sparse_collection(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 60, metric="ip")
    fill_sparse(store, src, tgt, ids, x, pl)
    assert store.describe(tgt).metric == "ip"
    q = x[:4] + 0.01
    assert_ranked(store.search_dense(tgt, q, limit=5), q @ x.T, ids, 5, positive_only=False)


# --------------------------------------------------------------------------- fetch
def test_fetch_with_dense_and_sparse(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 15, id_type="str", metric="ip")  # ip: vectors kept bit for bit
    codes = fill_sparse(store, src, tgt, ids, x, pl)
    pairs = codes.to_qdrant()
    ask = [ids[7], "no-such-id", ids[2], ids[11]]
    recs = store.fetch(tgt, ask, with_dense=True, with_sparse=True)
    assert [r.id for r in recs] == [ids[7], ids[2], ids[11]]
    for r, row in zip(recs, (7, 2, 11)):
        assert r.payload == pl[row]
        np.testing.assert_array_equal(r.dense, x[row])
        assert r.dense.dtype == np.float32
        assert r.sparse == pairs[row]
    plain = store.fetch(tgt, [ids[0]])
    assert plain[0].dense is None and plain[0].sparse is None
    assert store.fetch(tgt, []) == []
    # the source keeps no sparse vector
    (d,) = store.fetch(src, [ids[1]], with_dense=True, with_sparse=True)
    np.testing.assert_array_equal(d.dense, x[1])
    assert d.sparse is None


# --------------------------------------------------------------------------- delete, set_payload, iter_payloads
@pytest.mark.parametrize("id_type", ["int", "str"])
def test_delete_by_id_is_idempotent(store, make_name, id_type):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 20, id_type=id_type)
    fill_sparse(store, src, tgt, ids, x, pl)
    absent = 7 if id_type == "int" else "no-such-id"
    store.delete(tgt, [ids[3], ids[3], ids[10], absent])  # repeated and absent ids are harmless
    store.delete(tgt, [ids[3]])  # deleting again is a no-op
    store.delete(tgt, [])
    keep = [i for n, i in enumerate(ids) if n not in (3, 10)]
    assert store.count(tgt) == 18
    assert store.fetch(tgt, [ids[3], ids[10]]) == []
    assert sorted(map(str, (i for p in store.iter_dense(tgt, 7) for i in p.ids))) == sorted(map(str, keep))
    hits = store.search_sparse(tgt, codes_for(x[3:4]), limit=20)[0]
    assert ids[3] not in {h.id for h in hits}
    store.delete(src, [ids[0]])  # a dense collection too
    assert store.count(src) == 19
    # a deleted id can be written again
    store.upsert(tgt, [ids[3]], codes_for(x[3:4]), [pl[3]], dense=x[3:4])
    assert [r.id for r in store.fetch(tgt, [ids[3]])] == [ids[3]]
    wrong = "x" if id_type == "int" else 5
    with pytest.raises(DataError):
        store.delete(tgt, [ids[0], wrong])
    assert store.count(tgt) == 19  # nothing deleted
    with pytest.raises(CollectionNotFoundError):
        store.delete(make_name("absent"), [ids[0]])


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_set_payload_replaces_payload_and_keeps_vectors(store, make_name, id_type):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 12, id_type=id_type, metric="ip")
    codes = fill_sparse(store, src, tgt, ids, x, pl)
    absent = 7 if id_type == "int" else "no-such-id"
    new = [{"title": "new é", "n": 1}, {"nested": {"a": [1, None]}}, {}]
    missing = store.set_payload(tgt, [ids[2], absent, ids[5], ids[9]], [new[0], {"x": 1}, new[1], new[2]])
    assert missing == [absent]
    assert store.count(tgt) == 12  # the absent id was not created
    recs = store.fetch(tgt, [ids[2], ids[5], ids[9], ids[0]], with_dense=True, with_sparse=True)
    assert [r.payload for r in recs] == [*new, pl[0]]
    for r, row in zip(recs, (2, 5, 9, 0)):
        np.testing.assert_array_equal(r.dense, x[row])
        assert r.sparse == codes.to_qdrant()[row]
    hits = store.search_sparse(tgt, codes_for(x[2:3]), limit=1, with_payload=True)[0]
    assert hits[0].id == ids[2] and hits[0].payload == new[0]
    with pytest.raises(DataError):
        store.set_payload(tgt, [ids[0], ids[1]], [{"ok": 1}])  # counts differ
    with pytest.raises(DataError):
        store.set_payload(tgt, [ids[0]], [{"bad": object()}])
    assert store.fetch(tgt, [ids[0]])[0].payload == pl[0]  # nothing written


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_iter_payloads_pages_like_iter_dense_without_vectors(store, make_name, id_type):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 23, id_type=id_type)
    fill_sparse(store, src, tgt, ids, x, pl, keep_dense=False)
    dense_order = [i for p in store.iter_dense(src, 5) for i in p.ids]
    for name in (src, tgt):  # a sparse-only collection can be scanned too
        pages = list(store.iter_payloads(name, 5))
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        got = {i: q for p in pages for i, q in zip(p.ids, p.payloads)}
        assert [i for p in pages for i in p.ids] == dense_order
        assert got == dict(zip(ids, pl))
        rest = [i for p in store.iter_payloads(name, 4, cursor=pages[1].cursor) for i in p.ids]
        assert rest == dense_order[10:]
    some = [p for page in store.iter_payloads(src, 100, fields=["row", "absent"]) for p in page.payloads]
    by_id = dict(zip([i for p in store.iter_payloads(src, 100, fields=[]) for i in p.ids], some))
    assert by_id == {i: ({"row": q["row"]} if "row" in q else {}) for i, q in zip(ids, pl)}
    assert all(p == {} for page in store.iter_payloads(src, 100, fields=[]) for p in page.payloads)


def test_fetch_names_the_dense_field(store, make_name):
    src = make_name("src")
    ids, x, _ = fill_dense(store, src, 4, metric="ip")
    (r,) = store.fetch(src, [ids[1]], with_dense=True, vector_field="vector")
    np.testing.assert_array_equal(r.dense, x[1])
    with pytest.raises(StoreError, match="no vector field 'nope'"):
        store.fetch(src, [ids[1]], with_dense=True, vector_field="nope")


# --------------------------------------------------------------------------- aliases & drop
def test_aliases_get_set_move_drop_and_read_through(store, make_name):
    a, b, alias = make_name("a"), make_name("b"), make_name("alias")
    ids_a, xa, _ = fill_dense(store, a, 10, seed=1)
    ids_b, xb, _ = fill_dense(store, b, 14, seed=2)
    assert store.get_alias(alias) is None
    store.set_alias(alias, a)
    assert store.get_alias(alias) == a
    assert store.has_collection(alias)
    assert alias not in store.list_collections()
    assert store.describe(alias).name == a
    assert store.count(alias) == 10
    got, _, _ = concat_pages(list(store.iter_dense(alias, batch_size=4)))
    assert got == sorted(ids_a)
    assert store.fetch(alias, [ids_a[0]])[0].id == ids_a[0]
    assert store.search_dense(alias, xa[:1], limit=1)[0][0].id == ids_a[0]
    store.set_alias(alias, b)  # move
    assert store.get_alias(alias) == b
    assert store.count(alias) == 14
    assert store.search_dense(alias, xb[:1], limit=1)[0][0].id == ids_b[0]
    with pytest.raises(StoreError):
        store.set_alias(a, b)  # an alias may not shadow a collection
    store.drop_alias(alias)
    assert store.get_alias(alias) is None
    assert not store.has_collection(alias)
    store.drop_alias(alias)  # again: no error
    with pytest.raises(CollectionNotFoundError):
        store.count(alias)


def test_drop(store, make_name):
    a, alias = make_name("a"), make_name("alias")
    fill_dense(store, a, 5)
    store.set_alias(alias, a)
    store.drop(a)  # also with an alias pointing at it
    assert not store.has_collection(a)
    assert a not in store.list_collections()
    assert store.get_alias(alias) is None
    store.drop(a)  # no error when absent
    fill_dense(store, a, 3)  # the name is free again
    assert store.count(a) == 3


# --------------------------------------------------------------------------- validation: nothing written
def _bad_sparse():
    ok_i, ok_v = np.array([[1, 2], [3, 4], [5, 6]]), np.ones((3, 2), np.float32)
    dup = SparseVectors(np.array([[1, 2], [3, 3], [5, 6]]), ok_v, H)
    nan_v = ok_v.copy()
    nan_v[1, 0] = np.nan
    empty_v = ok_v.copy()
    empty_v[2] = 0
    big = ok_i.copy()
    big[0, 1] = H
    neg = ok_i.copy()
    neg[1, 0] = -1
    inf_v = ok_v.copy()
    inf_v[0, 1] = np.inf
    return {
        "duplicate index": dup,
        "nan": SparseVectors(ok_i, nan_v, H),
        "inf": SparseVectors(ok_i, inf_v, H),
        "empty row": SparseVectors(ok_i, empty_v, H),
        "index >= dim": SparseVectors(big, ok_v, H),
        "negative index": SparseVectors(neg, ok_v, H),
    }


def test_malformed_sparse_raises_and_writes_nothing(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    ids, x, pl = fill_dense(store, src, 6)
    fill_sparse(store, src, tgt, ids[:3], x[:3], pl[:3])
    new_ids, new_x = ids[3:], x[3:]
    for what, bad in _bad_sparse().items():
        with pytest.raises(DataError):
            store.upsert(tgt, new_ids, bad, pl[3:], dense=new_x)
        assert store.count(tgt) == 3, what
        assert store.fetch(tgt, new_ids) == [], what
    # lengths that do not match
    with pytest.raises(DataError):
        SparseVectors(np.array([[1, 2]]), np.array([[1.0]], np.float32), H)
    good = codes_for(new_x)
    with pytest.raises(DataError):
        store.upsert(tgt, new_ids[:2], good, pl[3:], dense=new_x)
    with pytest.raises(DataError):
        store.upsert(tgt, new_ids, good, pl[3:5], dense=new_x)
    with pytest.raises(DataError):
        store.upsert(tgt, [new_ids[0]] * 3, good, pl[3:], dense=new_x)  # duplicate ids
    with pytest.raises(DataError):
        store.upsert(tgt, ["x", "y", "z"], good, pl[3:], dense=new_x)  # wrong id type
    with pytest.raises(DataError):
        store.upsert(tgt, new_ids, good, [{"s": {1, 2}}] * 3, dense=new_x)  # not JSON
    nan_dense = new_x.copy()
    nan_dense[0, 0] = np.nan
    with pytest.raises(DataError):
        store.upsert(tgt, new_ids, good, pl[3:], dense=nan_dense)
    with pytest.raises(DataError):
        store.upsert(tgt, new_ids, good, pl[3:], dense=new_x[:, :4])  # wrong dense dim
    assert store.count(tgt) == 3
    # the store is still usable
    store.upsert(tgt, new_ids, good, pl[3:], dense=new_x)
    store.flush(tgt)
    assert store.count(tgt) == 6
    assert [r.id for r in store.fetch(tgt, ids)] == ids


def test_malformed_dense_raises_and_writes_nothing(store, make_name):
    name = make_name("dense")
    ids, x, _ = fill_dense(store, name, 4)
    more = [i + 1 for i in ids]
    for bad in (x[:, :5], np.full_like(x, np.nan), np.zeros_like(x), x[:0]):
        with pytest.raises(DataError):
            store.insert_dense(name, more[: len(bad)], bad)
    with pytest.raises(DataError):
        store.insert_dense(name, ["a", "b", "c", "d"], x)  # str ids into an int collection
    with pytest.raises(DataError):
        store.insert_dense(name, [-1, 5, 6, 7], x)  # negative int id
    with pytest.raises(DataError):
        store.search_dense(name, x[:, :3])
    with pytest.raises(DataError):
        store.search_dense(name, np.full((1, DIM), np.nan, np.float32))
    assert store.count(name) == 4


def test_wrong_vector_field_is_a_store_error(store, make_name):
    src, tgt = make_name("src"), make_name("tgt")
    fill_dense(store, src, 5)
    with pytest.raises(StoreError) as err:
        list(store.iter_dense(src, vector_field="nope"))
    assert "nope" in str(err.value)
    with pytest.raises(StoreError):
        store.search_dense(src, np.ones((1, DIM), np.float32), vector_field="nope")
    with pytest.raises(StoreError):
        store.create_sparse_collection(tgt, like=src, vector_field="nope")
    assert not store.has_collection(tgt)


# --------------------------------------------------------------------------- unreachable servers
@pytest.mark.parametrize("family", ["milvus", "qdrant"])
def test_unreachable_server_is_a_store_error_naming_the_uri(family):
    from csr_vdb.adapters import open_store

    adapter_module(family)
    from tests.adapters.conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    secret = "s3cr3t-token-value"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        s = open_store(family, uri, token=secret, timeout=2.0, retries=0)
        s.list_collections()  # a lazy client may only notice here
    assert time.monotonic() - t0 < 8.0
    assert uri in str(err.value)
    assert secret not in str(err.value)
    assert secret not in repr(err.value.__cause__ or "")


# --------------------------------------------------------------------------- 10k round trip
@pytest.mark.slow
def test_round_trip_10k(store, store_kind, make_name):
    """Export 10k dense rows, write them as sparse with payloads and dense kept, read back identical."""
    src, tgt = make_name("src"), make_name("tgt")
    # qdrant-client's local mode is a pure-Python prototype store (~0.8k points/s, brute-force
    # reads): 2k rows keep it within the time budget and still span several pages.
    n = 2_000 if store_kind == "qdrant-local" else 10_000
    x, _ = clustered(n, 32, clusters=20, seed=3)
    ids = ids_for("int", n, seed=3)
    pl = [{"doc": f"d{i}", "i": i, "tags": [i % 3, "t"], "meta": {"ok": i % 2 == 0}} for i in range(n)]
    store.create_dense_collection(src, 32, metric="ip")
    for a in range(0, n, 2500):
        store.insert_dense(src, ids[a : a + 2500], x[a : a + 2500], pl[a : a + 2500])
    store.flush(src)
    store.create_sparse_collection(tgt, like=src)
    all_codes = []
    seen = []
    for page in store.iter_dense(src, batch_size=1000):
        codes = codes_for(page.vectors, h=256, k=8)
        store.upsert(tgt, page.ids, codes, page.payloads, dense=page.vectors)
        all_codes.append(codes)
        seen.extend(page.ids)
    store.flush(tgt)
    assert seen == sorted(ids)
    assert store.count(tgt) == n
    codes = SparseVectors.concat(all_codes)
    by_id = {i: r for r, i in enumerate(ids)}
    recs = []
    for a in range(0, n, 1000):
        recs.extend(store.fetch(tgt, seen[a : a + 1000], with_dense=True, with_sparse=True))
    assert [r.id for r in recs] == seen
    assert [r.payload for r in recs] == [pl[by_id[i]] for i in seen]
    np.testing.assert_array_equal(np.stack([r.dense for r in recs]), x[[by_id[i] for i in seen]])
    assert SparseVectors.from_qdrant([r.sparse for r in recs], 256).equals(codes)
