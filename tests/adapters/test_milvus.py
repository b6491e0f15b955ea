"""Milvus-specific behaviour of `MilvusStore` beyond the shared contract (tests/adapters/test_contract.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.adapters.base import SPARSE_FIELD
from csr_vdb.errors import DataError, StoreError
from csr_vdb.sparse import SparseVectors
from tests.adapters.conftest import free_port
from tests.adapters.test_contract import codes_for
from tests.helpers import clustered

pymilvus = pytest.importorskip("pymilvus")
from csr_vdb.adapters.milvus import MilvusStore  # noqa: E402

DataType = pymilvus.DataType


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "m.db")


def _user_collection(uri: str, name: str, n: int = 40):
    """A collection as a user would have made it: custom pk/vector names, typed scalar fields,
    a nullable column, L2 metric and the dynamic field on."""
    client = pymilvus.MilvusClient(uri)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("doc_id", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=8)
    schema.add_field("title", DataType.VARCHAR, max_length=200)
    schema.add_field("year", DataType.INT64)
    schema.add_field("score", DataType.DOUBLE, nullable=True)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=8, max_length=32)
    index = client.prepare_index_params()
    index.add_index("emb", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=index)
    x, _ = clustered(n, 8, clusters=4, seed=5)
    x = x * 3.0
    rows = []
    for i in range(n):
        row = {
            "doc_id": 1000 - i * 7,
            "emb": x[i].tolist(),
            "title": f"titre n°{i}",
            "year": 1990 + i,
            "score": None if i % 3 == 0 else i / 4,
            "meta": {"src": "wiki", "n": [i, None]},
            "tags": ["a", f"t{i}"],
        }
        if i % 2:
            row["extra"] = {"dyn": i}  # a dynamic (schemaless) key on some rows only
        rows.append(row)
    client.insert(name, rows)
    client.flush(name)
    client.close()
    ids = [r["doc_id"] for r in rows]
    payloads = [{k: v for k, v in r.items() if k not in ("doc_id", "emb")} for r in rows]
    return ids, x.astype(np.float32), payloads


def test_user_collection_scalar_and_dynamic_fields_are_payload(db):
    ids, x, payloads = _user_collection(db, "docs")
    with MilvusStore(db) as store:
        info = store.describe("docs")
        assert (info.vector_field, info.dimension, info.metric, info.id_type, info.count) == ("emb", 8, "l2", "int", 40)
        assert info.payload_schema == {
            "title": "varchar", "year": "int64", "score": "double", "meta": "json", "tags": "array", "$meta": "dynamic",
        }
        pages = list(store.iter_dense("docs", batch_size=16))
        order = sorted(range(40), key=lambda r: ids[r])
        assert [i for p in pages for i in p.ids] == [ids[r] for r in order]
        assert [q for p in pages for q in p.payloads] == [payloads[r] for r in order]
        np.testing.assert_array_equal(np.concatenate([p.vectors for p in pages]), x[order])

        # the sparse copy keeps the typed columns, the dynamic field and the dense field's metric
        store.create_sparse_collection("docs_csr", like="docs")
        store.create_sparse_collection("docs_csr", like="docs")
        tgt = store.describe("docs_csr")
        assert tgt.payload_schema == info.payload_schema
        assert (tgt.vector_field, tgt.metric, tgt.sparse_field) == ("emb", "l2", SPARSE_FIELD)
        store.upsert("docs_csr", ids, codes_for(x), payloads, dense=x)
        recs = store.fetch("docs_csr", ids, with_dense=True, with_sparse=True)
        assert [r.payload for r in recs] == payloads
        np.testing.assert_array_equal(np.stack([r.dense for r in recs]), x)

        # L2: best first, score = minus the squared distance (higher is better, like MemoryStore)
        q = x[:3] + 0.05
        hits = store.search_dense("docs_csr", q, limit=5)
        d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        for r, hs in enumerate(hits):
            assert [h.id for h in hs] == [ids[j] for j in np.argsort(d2[r], kind="stable")[:5]]
            np.testing.assert_allclose([h.score for h in hs], -np.sort(d2[r])[:5], rtol=1e-4, atol=1e-5)


def test_scalar_field_rules_are_enforced_by_milvus(db):
    ids, x, payloads = _user_collection(db, "docs", n=6)
    with MilvusStore(db) as store:
        store.create_sparse_collection("docs_csr", like="docs")
        bad = [dict(p, year="not a number") for p in payloads]
        with pytest.raises(StoreError) as err:
            store.upsert("docs_csr", ids, codes_for(x), bad, dense=x)
        assert "docs_csr" in str(err.value) and db in str(err.value)


def test_payload_keys_may_not_shadow_fields(db):
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8)
        x, _ = clustered(2, 8)
        for key in ("id", "vector", "$meta"):
            with pytest.raises(DataError):
                store.insert_dense("d", [1, 2], x, [{key: 1}, {}])
        store.create_sparse_collection("s", like="d")
        with pytest.raises(DataError):
            store.upsert("s", [1, 2], codes_for(x), [{SPARSE_FIELD: 1}, {}], dense=x)
        assert store.count("d") == 0 and store.count("s") == 0


def test_reopen_loads_collections_and_releases_the_file(db):
    x, _ = clustered(30, 8, seed=2)
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8)
        store.insert_dense("d", list(range(30)), x)
        store.create_sparse_collection("s", like="d")
        store.upsert("s", list(range(30)), codes_for(x), dense=x)
    # another process can open the file once the last store in this process closed it
    code = (
        "from csr_vdb.adapters.milvus import MilvusStore\n"
        "from tests.adapters.test_contract import codes_for\n"
        "import numpy as np\n"
        f"s = MilvusStore({db!r})\n"
        "print(s.count('s'), s.count('d'))\n"
        "x = np.stack([r.dense for r in s.fetch('d', [0, 1], with_dense=True)])\n"
        "print(s.search_sparse('s', codes_for(x), limit=1)[0][0].id)\n"
        "s.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(_repo())
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["30", "30", "0"]
    with MilvusStore(db) as again:  # and this process can reopen it too (collections loaded again)
        assert again.search_dense("d", x[:1], limit=1)[0][0].id == 0


def test_two_stores_on_one_file_share_the_embedded_server(db):
    a = MilvusStore(db)
    b = MilvusStore(db)
    a.create_dense_collection("d", 8)
    a.close()  # b still works: the server stays until the last store closes
    assert b.count("d") == 0
    b.close()


def test_lite_file_in_a_new_folder(tmp_path):
    uri = str(tmp_path / "new" / "sub" / "x.db")
    store = open_store("milvus", uri)
    assert isinstance(store, MilvusStore) and store.uri == uri
    assert store.list_collections() == []
    store.close()


def test_credentials_in_uri_never_show(tmp_path):
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        MilvusStore(f"http://alice:pa55word@127.0.0.1:{port}", token="tok-123", timeout=2, retries=0)
    assert time.monotonic() - t0 < 6
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}" in msg
    assert "pa55word" not in msg and "tok-123" not in msg and "alice" not in msg


def test_unroutable_server_times_out(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        MilvusStore("http://10.255.255.1:19530", token="secret", timeout=2, retries=0)
    assert time.monotonic() - t0 < 8
    assert "10.255.255.1" in str(err.value) and "secret" not in str(err.value)


def test_cursor_of_the_wrong_type_is_a_data_error(db):
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8)
        with pytest.raises(DataError):
            list(store.iter_dense("d", cursor="5"))
        store.create_dense_collection("s", 8, id_type="str")
        with pytest.raises(DataError):
            list(store.iter_dense("s", cursor=5))


def test_string_ids_with_quotes_and_backslashes(db):
    ids = ['a"b', "c'd", "e\\f", "g\\\"h", "日本", "z"]
    x, _ = clustered(len(ids), 8, seed=4)
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8, id_type="str")
        store.insert_dense("d", ids, x)
        assert [r.id for r in store.fetch("d", ids[::-1])] == ids[::-1]
        got = [i for p in store.iter_dense("d", batch_size=2, cursor=ids[0]) for i in p.ids]
        assert got == sorted(i for i in ids if i > ids[0])


def test_empty_sparse_query_matches_nothing(db):
    x, _ = clustered(5, 8)
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8)
        store.create_sparse_collection("s", like="d", keep_dense=False)
        store.upsert("s", list(range(5)), codes_for(x))
        q = SparseVectors(np.array([[0], [3]]), np.array([[0.0], [1.0]], np.float32), 64)
        hits = store.search_sparse("s", q, limit=2)
        assert hits[0] == []


def _repo():
    from tests.conftest import REPO

    return REPO


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_server_cursor_paging_equals_lite_id_paging(db, id_type):
    """Milvus Lite pages by sorted primary keys; servers by ``pk > cursor`` queries in key order.
    Both paths run here (Lite answers ordered queries too) and must agree page for page."""
    from tests.adapters.test_contract import fill_dense

    with MilvusStore(db) as store:
        fill_dense(store, "d", 57, id_type=id_type, batches=3)
        ids = sorted(i for p in store.iter_dense("d", batch_size=100) for i in p.ids)
        for bs, after in ((5, None), (16, ids[10]), (100, ids[-2]), (3, ids[-1])):
            store._is_lite = True
            lite = list(store.iter_dense("d", batch_size=bs, cursor=after))
            store._is_lite = False
            server = list(store.iter_dense("d", batch_size=bs, cursor=after))
            assert [p.ids for p in lite] == [p.ids for p in server]
            assert [p.payloads for p in lite] == [p.payloads for p in server]
            for a, b in zip(lite, server):
                np.testing.assert_array_equal(a.vectors, b.vectors)
            start = 0 if after is None else ids.index(after) + 1
            assert [i for p in lite for i in p.ids] == ids[start:]
            assert all(len(p) <= bs for p in lite + server)
        store._is_lite = True


def test_a_lite_file_open_in_another_process_is_a_clear_store_error(db):
    with MilvusStore(db) as store:
        store.create_dense_collection("d", 8)
        code = (
            "from csr_vdb.adapters.milvus import MilvusStore\n"
            "from csr_vdb.errors import StoreError\n"
            "try:\n"
            f"    MilvusStore({db!r})\n"
            "    print('opened')\n"
            "except StoreError as exc:\n"
            "    print(exc)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "another process" in out.stdout and db in out.stdout
