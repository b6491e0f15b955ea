"""csr_vdb.store: the contract's records, its input checks, the page cursor and the URI helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from csr_vdb import store
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import Candidates, DensePage, Hit, VectorStore


def test_names_every_layer_shares():
    assert store.SPARSE_FIELD == "csr"
    assert store.STORE_KINDS == ("milvus", "qdrant", "qdrant-edge")
    import csr_vdb.adapters as adapters
    import csr_vdb.adapters.base as base

    # the adapters re-export the core's objects (not copies), and open_store adds its test double
    assert base.VectorStore is VectorStore and base.Hit is Hit and base.check_ids is store.check_ids
    assert adapters.STORE_KINDS == (*store.STORE_KINDS, "memory")


def test_records_are_frozen_and_pages_know_their_cursor():
    page = DensePage(ids=[3, 9], vectors=np.zeros((2, 4), np.float32), payloads=[{}, {"a": 1}])
    assert page.cursor == 9 and len(page) == 2
    hit = Hit("a", 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.score = 1.0  # type: ignore[misc]
    assert dataclasses.replace(hit, score=2.0) == Hit("a", 2.0, None)
    rec = store.Record(id=1, payload={})
    assert rec.dense is None and rec.sparse is None
    info = store.CollectionInfo(name="c", dimension=0, metric="ip", vector_field=None, id_type="int", count=0)
    assert info.vector_fields == {} and info.sparse_field is None


def test_candidates_group_their_rows_by_query():
    codes = SparseVectors(np.zeros((3, 1), np.int64), np.ones((3, 1), np.float32), 8)
    found = Candidates([[Hit(1, 1.0), Hit(2, 0.5)], [], [Hit(7, 0.1)]], codes=codes)
    assert found.lengths == [2, 0, 1] and sum(found.lengths) == len(codes)
    assert found.dense is None


def test_candidates_select_builds_the_kept_hits_and_reads_their_payloads_only():
    asked: list[list] = []

    def reader(ids):
        asked.append(list(ids))
        return {i: {"name": f"doc {i}"} for i in ids if i != 9}  # 9 was deleted meanwhile

    found = Candidates(ids=[[4, 9, 2], [7]], scores=[np.array([3.0, 2.0, 1.0]), np.array([0.5])],
                       payload_reader=reader)
    assert found.lengths == [3, 1] and asked == []
    top = found.select([(np.array([2, 1]), np.array([5.0, 4.0])), (np.array([0]), None)])
    assert asked == [[2, 9, 7]]  # one read, for the kept hits only
    assert top == [[Hit(2, 5.0, {"name": "doc 2"}), Hit(9, 4.0, {})], [Hit(7, 0.5, {"name": "doc 7"})]]
    assert found.hits[0][0] == Hit(4, 3.0, {"name": "doc 4"}) and len(asked) == 2  # all of them, on demand
    plain = Candidates(ids=[[1, 2]], scores=[np.array([1.0, 0.5])])
    assert plain.payloads is None and plain.select([([1], None)]) == [[Hit(2, 0.5, None)]]
    with pytest.raises(DataError):
        Candidates(ids=[[1]], scores=[])


def test_sparse_index_config_checks_its_settings():
    cfg = store.SparseIndexConfig.parse({"datatype": "uint8", "full_scan_threshold": 100})
    assert cfg.given() == {"datatype": "uint8", "full_scan_threshold": 100}
    assert store.SparseIndexConfig.parse(None) is None and store.SparseIndexConfig.parse(cfg) is cfg
    merged = store.SparseIndexConfig(memory="cold").merged(store.SparseIndexConfig(datatype="uint8", memory="pinned"))
    assert merged.given() == {"datatype": "uint8", "memory": "cold"}  # the caller's over the defaults
    cfg.check_engine("QdrantEdgeStore", ("datatype", "memory", "full_scan_threshold"))
    with pytest.raises(ConfigError, match="MilvusStore has no sparse index setting datatype, full_scan_threshold"):
        cfg.check_engine("MilvusStore", ("inverted_index_algo", "drop_ratio_build"))
    for bad in ({"datatype": "int4"}, {"memory": "disk"}, {"inverted_index_algo": "WAND"}, {"full_scan_threshold": -1},
                {"full_scan_threshold": 1.5}, {"drop_ratio_build": 1.0}, {"drop_ratio_build": True}, {"nope": 1}):
        with pytest.raises(ConfigError):
            store.SparseIndexConfig.parse(bad)
    with pytest.raises(ConfigError):
        store.SparseIndexConfig.parse("uint8")  # type: ignore[arg-type]


def test_memory_store_satisfies_the_protocol():
    from csr_vdb.adapters.memory import MemoryStore

    assert isinstance(MemoryStore(), VectorStore)


# ------------------------------------------------------------------------------ checks
def test_check_ids():
    assert store.check_ids((5, 0, 2**63 - 1), "int", 3) == [5, 0, 2**63 - 1]
    assert store.check_ids(["b", "a"], "str", 2) == ["b", "a"]
    with pytest.raises(DataError, match="got 1 ids for 2 vectors"):
        store.check_ids([1], "int", 2)
    with pytest.raises(DataError, match="duplicate ids in one batch: \\[4\\]") as err:
        store.check_ids([4, 5, 4], "int", 3)
    assert err.value.rows == [4]
    with pytest.raises(DataError, match="ids must be int"):
        store.check_ids([1, "2"], "int", 2)
    with pytest.raises(DataError, match="ids must be int"):
        store.check_ids([True], "int", 1)  # a bool is not an id
    with pytest.raises(DataError, match="ids must be str"):
        store.check_ids([1], "str", 1)
    with pytest.raises(DataError, match=r"\[0, 2\*\*63\)"):
        store.check_ids([-1, 2**63], "int", 2)


def test_check_payloads():
    assert store.check_payloads(None, 2) == [{}, {}]
    assert store.check_payloads(({"a": [1, {"b": None}]},), 1) == [{"a": [1, {"b": None}]}]
    with pytest.raises(DataError, match="got 1 payloads for 2 rows"):
        store.check_payloads([{}], 2)
    with pytest.raises(DataError, match="must be dicts"):
        store.check_payloads(["x"], 1)  # type: ignore[list-item]
    with pytest.raises(DataError, match="JSON-serialisable"):
        store.check_payloads([{"x": object()}], 1)


def test_limits_batch_sizes_and_cursors():
    assert store.check_limit(0) == 0 and store.check_limit(np.int64(7)) == 7
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="limit"):
            store.check_limit(bad)  # type: ignore[arg-type]
    assert store.check_batch_size(1) == 1
    for bad in (0, -3, False):
        with pytest.raises(ConfigError, match="batch_size"):
            store.check_batch_size(bad)
    store.check_cursor(None, "int", "c")
    store.check_cursor(7, "int", "c")
    store.check_cursor("x", None, "c")  # id type not known yet: anything goes
    with pytest.raises(DataError, match="cursor 'x' is not a int id of collection 'c'"):
        store.check_cursor("x", "int", "c")
    with pytest.raises(DataError, match="not a str id"):
        store.check_cursor(3, "str", "c")


def test_usable_ids_leave_out_what_cannot_exist():
    assert store.usable_ids([3, "a", True, -1, 0], "int") == [3, 0]
    assert store.usable_ids([3, "a", True], "str") == ["a"]
    assert store.usable_ids([3, "a", -2], None) == [3, "a"]


def test_page_cursor_takes_the_deprecated_after():
    assert store.page_cursor(None, None) is None
    assert store.page_cursor(5, None) == 5
    with pytest.warns(DeprecationWarning, match="cursor="):
        assert store.page_cursor(None, 8) == 8
    with pytest.raises(ConfigError, match="once"):
        store.page_cursor(1, 2)


def test_iter_dense_takes_cursor_and_the_deprecated_after():
    from csr_vdb.adapters.memory import MemoryStore

    store = MemoryStore()
    store.create_dense_collection("d", 2)
    store.insert_dense("d", [1, 2, 3, 4], np.ones((4, 2), np.float32))
    assert [p.ids for p in store.iter_dense("d", batch_size=2, cursor=1)] == [[2, 3], [4]]
    assert [p.ids for p in store.iter_dense("d", 2, 2)] == [[3, 4]]  # positional, as before
    with pytest.warns(DeprecationWarning):
        assert [p.ids for p in store.iter_dense("d", batch_size=2, after=1)] == [[2, 3], [4]]


# ------------------------------------------------------------------------------ URIs
@pytest.mark.parametrize(
    "uri, stripped",
    [
        ("https://user:pw@host.example:6333/p?api-key=x", "https://host.example:6333/p"),
        ("http://alice:pa55word@127.0.0.1:19530", "http://127.0.0.1:19530"),
        ("http://127.0.0.1:19530", "http://127.0.0.1:19530"),
        ("grpc://token@db.internal:6334/x#frag", "grpc://db.internal:6334/x"),
        ("http://[::1]:6333?key=s", "http://[::1]:6333"),
        ("memory://", "memory://"),
        ("/data/qdrant", "/data/qdrant"),
        ("demo_out/demo.db", "demo_out/demo.db"),
        ("http://u:p@host:99999/x?t=1", "http://host:99999/x"),  # a port urllib refuses: still stripped
    ],
)
def test_strip_credentials(uri, stripped):
    assert store.strip_credentials(uri) == stripped
    assert store.strip_credentials(stripped) == stripped  # idempotent


def test_strip_credentials_can_keep_the_query_and_spells_a_server_one_way():
    assert store.strip_credentials("https://u:p@h:1/db?name=x#f", keep_query=True) == "https://h:1/db?name=x"
    assert store.strip_credentials("https://h:1/db?name=x", keep_query=True) == "https://h:1/db?name=x"
    assert store.strip_credentials("HTTP://Host.Example:6333/p") == "http://host.example:6333/p"


def test_redact_uri_keeps_the_user_and_masks_the_password():
    assert store.redact_uri("https://alice:s3cret@host:19530/db?x=1") == "https://alice:***@host:19530/db?x=1"
    assert store.redact_uri("https://host:19530") == "https://host:19530"
    assert store.redact_uri("/local/path.db") == "/local/path.db"
    assert "s3cret" not in store.redact_uri("http://u:s3cret@host:99999")
