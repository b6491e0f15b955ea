"""QdrantStore (qdrant-client) behaviour beyond the store contract, in local mode; shared id helpers."""

from __future__ import annotations

import random
import time
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from csr_vdb.adapters._qdrant_common import RESERVED_ID_KEY, next_uuid_after, to_point_id
from csr_vdb.adapters.qdrant import QdrantStore
from csr_vdb.errors import DataError, StoreError
from csr_vdb.sparse import SparseVectors
from tests.adapters.conftest import free_port
from tests.helpers import clustered

DIM = 8
H = 32


def codes_for(x: np.ndarray, k: int = 4) -> SparseVectors:
    w = np.random.default_rng(1).normal(size=(x.shape[1], H)).astype(np.float32)
    z = np.maximum(x @ w, 0)
    top = np.argsort(-z, axis=1)[:, :k]
    val = np.take_along_axis(z, top, axis=1)
    val[:, 0] = np.maximum(val[:, 0], 1e-3)
    return SparseVectors(top, val, H)


@pytest.fixture()
def path(tmp_path):
    return str(tmp_path / "qdrant")


@pytest.fixture(scope="module")
def data():
    return clustered(40, DIM, 4)[0]


# ---------------------------------------------------------------- local mode: lock, persistence
def test_second_local_client_is_refused_until_close(path):
    s = QdrantStore(path)
    with pytest.raises(StoreError, match="in use by another process"):
        QdrantStore(path)
    s.close()
    with QdrantStore(path) as again:
        assert again.list_collections() == []


def test_data_and_aliases_persist_across_reopen(path, data):
    ids = [f"doc:{i}" for i in range(12)]
    with QdrantStore(path) as s:
        s.create_dense_collection("docs", DIM, id_type="str")
        s.insert_dense("docs", ids, data[:12], [{"n": i} for i in range(12)])
        s.create_sparse_collection("docs_csr", "docs")
        codes = codes_for(data[:12])
        s.upsert("docs_csr", ids, codes, [{"n": i} for i in range(12)], dense=data[:12])
        s.set_alias("live", "docs_csr")
    with QdrantStore(path) as s:
        assert s.get_alias("live") == "docs_csr"
        info = s.describe("live")
        assert (info.name, info.id_type, info.count, info.metric, info.sparse_field) == (
            "docs_csr", "str", 12, "cosine", "csr",
        )  # fmt: skip
        (rec,) = s.fetch("live", ["doc:3"], with_dense=True, with_sparse=True)
        assert rec.payload == {"n": 3}
        np.testing.assert_array_equal(rec.dense, data[3])
        want_idx, want_val = codes[3:4].to_qdrant()[0]  # what was written, computed once
        assert rec.sparse[0] == want_idx
        np.testing.assert_allclose(rec.sparse[1], want_val, rtol=1e-6)
        assert s.search_sparse("live", codes_for(data[3:4]), 12)[0][0].id in ids


# ---------------------------------------------------------------- ids
def test_str_id_mapping_round_trip_and_reserved_key(path, data):
    real_uuid = str(uuid.UUID(int=7))
    ids = ["plain", "", "ünïcode ✓", "123E4567-E89B-12D3-A456-426614174000", real_uuid]
    with QdrantStore(path) as s:
        s.create_dense_collection("s", DIM, id_type="str")
        s.insert_dense("s", ids, data[: len(ids)], [{"k": i} for i in range(len(ids))])
        assert [r.id for r in s.fetch("s", ids)] == ids
        assert [r.payload for r in s.fetch("s", ids)] == [{"k": i} for i in range(len(ids))]
        hits = s.search_dense("s", data[:1], 5, with_payload=True)[0]
        assert {h.id for h in hits} == set(ids) and all(RESERVED_ID_KEY not in h.payload for h in hits)
        assert all(h.payload is None for h in s.search_dense("s", data[:1], 5)[0])
        with pytest.raises(DataError, match="reserved"):
            s.insert_dense("s", ["x"], data[:1], [{RESERVED_ID_KEY: 1}])
    # what Qdrant itself holds: UUIDs as they are, other strings as uuid5 + the hidden key
    client = QdrantClient(path=path)
    try:
        points = {str(p.id): p.payload for p in client.scroll("s", limit=10)[0]}
    finally:
        client.close()
    assert points[real_uuid] == {"k": 4}
    assert points[to_point_id("plain")] == {"k": 0, RESERVED_ID_KEY: "plain"}


def test_iter_dense_order_and_cursor_with_str_ids(path, data):
    ids = [f"id-{i:02d}" for i in range(30)]
    with QdrantStore(path) as s:
        s.create_dense_collection("s", DIM, id_type="str")
        s.insert_dense("s", ids, data[:30])
        order = [i for p in s.iter_dense("s", batch_size=4) for i in p.ids]
        assert order == sorted(ids, key=lambda i: uuid.UUID(to_point_id(i)).int)
        for cut in (0, 9, 29):
            rest = [i for p in s.iter_dense("s", batch_size=5, cursor=order[cut]) for i in p.ids]
            assert rest == order[cut + 1 :]
        absent = "8"
        rest = [i for p in s.iter_dense("s", batch_size=5, cursor=absent) for i in p.ids]
        assert rest == [i for i in order if to_point_id(i) > absent]


def test_next_uuid_after_is_the_least_canonical_uuid_above():
    rng = random.Random(0)
    stored = sorted(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(300))
    alphabet = "0123456789abcdef-gA_~"
    for _ in range(3000):
        base = rng.choice(stored)
        value = base[: rng.randint(0, 37)] + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2)))
        nxt = next_uuid_after(value)
        if nxt is None:
            assert all(u <= value for u in stored)
            continue
        assert str(uuid.UUID(nxt)) == nxt and nxt > value
        assert [u for u in stored if u > value] == [u for u in stored if u >= nxt]
    assert next_uuid_after("ffffffff-ffff-ffff-ffff-ffffffffffff") is None
    assert next_uuid_after("") == "00000000-0000-0000-0000-000000000000"


# ---------------------------------------------------------------- vectors
def test_cosine_stays_cosine_and_copies_within_rounding(path, data):
    """Local mode re-normalises cosine rows in float64: a unit row may move in its last bit only.
    The target's vector params are the source's, as other clients (LangChain's store) check."""
    raw = data[:10] * np.linspace(0.5, 3.0, 10, dtype=np.float32)[:, None]  # not unit: normalised once
    with QdrantStore(path) as s:
        s.create_dense_collection("c", DIM, metric="cosine")
        s.insert_dense("c", list(range(10)), np.concatenate([data[:5], raw[5:]]))
        assert s.describe("c").metric == "cosine"
        got = {r.id: r.dense for r in s.fetch("c", list(range(10)), with_dense=True)}
        for i in range(10):
            np.testing.assert_allclose(got[i], data[i], rtol=0, atol=1e-7)
        q = data[:3] * 7.0
        hits = s.search_dense("c", q, 3)
        for h, row in zip(hits, range(3)):
            assert h[0].id == row and h[0].score == pytest.approx(1.0, abs=1e-5)
        s.create_sparse_collection("c_csr", "c")
        assert s.describe("c_csr").metric == "cosine"
        ids = list(range(10))
        s.upsert("c_csr", ids, codes_for(data[:10]), dense=np.stack([got[i] for i in ids]))
        copied = {r.id: r.dense for r in s.fetch("c_csr", ids, with_dense=True)}
        for i in ids:
            np.testing.assert_allclose(copied[i], got[i], rtol=0, atol=1e-7)
    client = QdrantClient(path=path)
    try:
        src = client.get_collection("c").config.params.vectors
        tgt = client.get_collection("c_csr").config.params.vectors
        assert tgt == src and src["vector"].distance == qm.Distance.COSINE
    finally:
        client.close()


def test_cosine_stored_as_dot_by_earlier_versions_reads_as_cosine(path, data):
    client = QdrantClient(path=path)
    client.create_collection(
        "old", vectors_config={"vector": qm.VectorParams(size=DIM, distance=qm.Distance.DOT)},
        metadata={"csr_vdb": {"id_type": "int", "cosine_as_dot": ["vector"]}},
    )
    client.close()
    with QdrantStore(path) as s:
        assert s.describe("old").metric == "cosine"
        s.insert_dense("old", [1, 2], data[:2] * 3.0)  # normalised by the adapter, as before
        got = {r.id: r.dense for r in s.fetch("old", [1, 2], with_dense=True)}
        np.testing.assert_allclose(got[1], data[0], rtol=0, atol=1e-6)
        assert s.search_dense("old", data[1:2] * 5.0, 1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_collection_made_by_another_tool(path, data):
    """An unnamed default vector and UUID ids, as most Qdrant apps create them."""
    client = QdrantClient(path=path)
    uuids = [str(uuid.UUID(int=1000 + i)) for i in range(10)]
    client.create_collection("app", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.DOT))
    client.upsert("app", [qm.PointStruct(id=u, vector=data[i].tolist(), payload={"i": i}) for i, u in enumerate(uuids)])
    client.close()
    with QdrantStore(path) as s:
        info = s.describe("app")
        assert (info.vector_field, info.vector_fields, info.metric, info.id_type) == ("", {"": DIM}, "ip", "str")
        pages = list(s.iter_dense("app", batch_size=4))
        assert [i for p in pages for i in p.ids] == sorted(uuids)
        np.testing.assert_array_equal(np.concatenate([p.vectors for p in pages]), data[:10])
        s.create_sparse_collection("app_csr", "app")
        s.upsert("app_csr", uuids, codes_for(data[:10]), [{"i": i} for i in range(10)], dense=data[:10])
        assert s.describe("app_csr").vector_field == ""
        (rec,) = s.fetch("app_csr", [uuids[2]], with_dense=True, with_sparse=True)
        np.testing.assert_array_equal(rec.dense, data[2])
        assert rec.payload == {"i": 2}
        assert s.search_dense("app_csr", data[2:3], 1)[0][0].id == uuids[2]
        s.set_alias("app_live", "app_csr")
    client = QdrantClient(path=path)  # the alias is Qdrant's own: other clients see it
    try:
        assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("app_live", "app_csr")]
        assert client.count("app_live").count == 10
    finally:
        client.close()


# ---------------------------------------------------------------- servers
def test_unreachable_server_fails_fast_without_leaking_the_key():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        QdrantStore(uri, api_key="k-123-secret", timeout=1.0, retries=0)
    assert time.monotonic() - t0 < 5
    assert uri in str(err.value) and "k-123-secret" not in str(err.value)


def test_empty_collection_without_metadata_takes_the_id_type_of_its_first_rows(path, data):
    """Servers before collection metadata (and other tools) leave the id type to the data."""
    client = QdrantClient(path=path)
    for name in ("raw_s", "raw_i"):
        client.create_collection(name, vectors_config={"v": qm.VectorParams(size=DIM, distance=qm.Distance.DOT)})
    client.close()
    with QdrantStore(path) as s:
        s.insert_dense("raw_s", ["a", "b"], data[:2])
        s.insert_dense("raw_i", [3, 4], data[:2])
        assert s.describe("raw_s").id_type == "str" and s.describe("raw_i").id_type == "int"
        with pytest.raises(DataError):
            s.insert_dense("raw_s", [5], data[:1])
        assert [r.id for r in s.fetch("raw_s", ["b", "a", 7])] == ["b", "a"]


def test_local_mode_takes_writes_on_one_thread_while_another_pages(path):
    # a migration pages the source on a thread of its own while the application writes to it; local
    # mode's in-Python collections are not safe for that unless the adapter runs one call at a time
    import threading

    x = clustered(3000, DIM, 8, seed=2)[0]
    with QdrantStore(path) as s:
        s.create_dense_collection("src", DIM)
        s.insert_dense("src", list(range(1000)), x[:1000])
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for start in range(1000, 3000, 20):
                    s.insert_dense("src", list(range(start, start + 20)), x[start : start + 20])
                    s.delete("src", [start - 1000])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        pages = 0
        while True:  # at least one full scan, however fast the writer is
            for page in s.iter_dense("src", batch_size=50):
                pages += 1
                assert page.vectors.shape == (len(page.ids), DIM)
            if not writer.is_alive():
                break
        writer.join()
        assert not errors and pages
        got = sorted(i for p in s.iter_dense("src", batch_size=500) for i in p.ids)
        assert got == sorted(set(range(3000)) - set(range(0, 2000, 20)))
