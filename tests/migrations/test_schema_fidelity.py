"""Schema fidelity: a migrated target keeps its source's schema exactly as the database's own client
reports it (dense vector names, form, dimensions, metrics and index, id type, payload fields and
indexes); verify compares the two and fails (exit 8) on a difference; a collection LangChain built
opens in LangChain's HYBRID mode once migrated."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from pymilvus import DataType, MilvusClient
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from csr_vdb.adapters import open_store
from csr_vdb.cli.main import main
from csr_vdb.migrations import MigrationPlan, run_migration, verify_migration
from csr_vdb.store import SPARSE_FIELD
from tests.helpers import ProjectionEncoder, clustered, save_tiny_model

DIM, ROWS = 16, 120


def _migrate_and_verify(kind: str, uri: str, model_dir, state, **plan):
    store = open_store(kind, uri)
    try:
        p = MigrationPlan.create(store, store_kind=kind, uri=uri, source="docs", model_dir=model_dir, **plan)
        enc = ProjectionEncoder(DIM)
        run_migration(store, p, enc, state_base=state)
        return verify_migration(store, p, enc, enc, state_base=state, sample=16)
    finally:
        store.close()


# ------------------------------------------------------------------------------ Qdrant
@pytest.mark.parametrize("form", ["unnamed", "named ''", "named"])
def test_qdrant_target_keeps_the_vector_params_and_their_form(tmp_path, model_dir, form):
    path = str(tmp_path / "q")
    params = qm.VectorParams(size=DIM, distance=qm.Distance.COSINE, on_disk=True,
                             hnsw_config=qm.HnswConfigDiff(m=8, ef_construct=64))
    config = {"unnamed": params, "named ''": {"": params}, "named": {"dense": params, "other": params}}[form]
    client = QdrantClient(path=path)
    client.create_collection("docs", vectors_config=config)
    x, _ = clustered(ROWS, DIM)

    def vector(i: int):
        row = x[i].tolist()
        return {"unnamed": row, "named ''": {"": row}, "named": {"dense": row, "other": row}}[form]

    client.upsert("docs", [qm.PointStruct(id=i, vector=vector(i), payload={"text": f"t{i}", "metadata": {"n": i}})
                           for i in range(ROWS)])
    client.close()
    rep = _migrate_and_verify("qdrant", path, model_dir, tmp_path / "state")
    assert rep.ok and rep.schema_check.ok, rep.problems
    client = QdrantClient(path=path)
    try:
        src, tgt = client.get_collection("docs").config.params, client.get_collection("docs_csr").config.params
        want = config if form != "named" else {"dense": params}  # only the migrated dense field is kept
        assert tgt.vectors == want == (src.vectors if form != "named" else {"dense": src.vectors["dense"]})
        assert type(tgt.vectors) is type(src.vectors)  # an unnamed vector stays unnamed, a dict a dict
        assert set(tgt.sparse_vectors) == {SPARSE_FIELD}
    finally:
        client.close()


def test_verify_fails_on_a_schema_difference_with_exit_8(tmp_path, model_dir, monkeypatch):
    """Qdrant Edge: a payload index only the target has is a difference the clients would see."""
    uri = str(tmp_path / "edge")
    store = open_store("qdrant-edge", uri)
    x, _ = clustered(ROWS, DIM)
    store.create_dense_collection("docs", DIM)
    store.insert_dense("docs", list(range(ROWS)), x, [{"label": f"l{i % 3}"} for i in range(ROWS)])
    import qdrant_edge as qe

    shard = store._layout("docs").shard
    shard.update(qe.UpdateOperation.create_field_index("label", qe.PayloadSchemaType.Keyword))
    store.close()
    model = save_tiny_model(tmp_path / "model", DIM)
    env = {"CSR_VDB_STORE": "qdrant-edge", "CSR_VDB_URI": uri, "CSR_VDB_STATE_DIR": str(tmp_path / "state"),
           "CSR_VDB_CONFIG": None, "CSR_VDB_DEVICE": "cpu"}
    monkeypatch.chdir(tmp_path)
    run = lambda *a: CliRunner().invoke(main, list(a), env=env)  # noqa: E731
    res = run("migrate", "--to", "sparse", "--collection", "docs", "--model", str(model))
    assert res.exit_code == 0, res.output
    res = run("verify", "--collection", "docs", "--json")
    assert res.exit_code == 0, res.output  # the payload index was copied
    store = open_store("qdrant-edge", uri)
    assert store.describe("docs_csr").native_schema["payload"]["indexes"] == {
        "label": {"data_type": "Keyword", "params": None}}
    store._layout("docs_csr").shard.update(qe.UpdateOperation.create_field_index("n", qe.PayloadSchemaType.Integer))
    store.close()
    res = run("verify", "--collection", "docs")
    assert res.exit_code == 8, res.output
    assert "schema differs" in res.output and "payload.indexes.n: not in the source" in res.output


# ------------------------------------------------------------------------------ Milvus
def test_milvus_target_keeps_fields_dynamic_field_partition_key_and_indexes(tmp_path, model_dir):
    uri = str(tmp_path / "m.db")
    client = MilvusClient(uri)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("cat", DataType.VARCHAR, max_length=32, is_partition_key=True)
    schema.add_field("n", DataType.INT64, nullable=True)
    schema.add_field("d", DataType.INT32, default_value=7)
    schema.add_field("meta", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index("emb", index_type="HNSW", metric_type="IP", params={"M": 8, "efConstruction": 64})
    index.add_index("cat", index_type="INVERTED")
    client.create_collection("docs", schema=schema, index_params=index, num_partitions=4)
    x, _ = clustered(ROWS, DIM)
    client.insert("docs", [{"pk": f"p{i:04d}", "emb": x[i].tolist(), "cat": f"c{i % 3}", "n": i, "d": i,
                            "meta": {"i": i}} for i in range(ROWS)])
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)  # the adapter opens the file next
    rep = _migrate_and_verify("milvus", uri, model_dir, tmp_path / "state")
    assert rep.ok and rep.schema_check.ok, rep.problems
    src, tgt = rep.schema_check.source, rep.schema_check.target
    assert tgt["payload"]["dynamic_field"] is False  # a source without one does not gain one
    assert tgt["payload"]["fields"]["cat"]["is_partition_key"] and tgt["payload"]["fields"]["cat"]["index"]
    assert tgt["vectors"]["emb"]["index"]["index_type"] == "HNSW" and tgt["id"] == src["id"]
    store = open_store("milvus", uri)
    try:
        rows = store.fetch("docs_csr", ["p0003"], with_dense=True)
        assert rows[0].payload == {"cat": "c0", "n": 3, "d": 3, "meta": {"i": 3}}
    finally:
        store.close()


# ------------------------------------------------------------------------------ LangChain
def test_a_langchain_collection_opens_in_hybrid_mode_once_migrated(tmp_path, model_dir):
    """LangChain's store checks the distance: the target must keep the source's Cosine in local mode."""
    lc = pytest.importorskip("langchain_qdrant", reason="langchain-qdrant is not installed (the langchain extra)")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    dense = DeterministicFakeEmbedding(size=DIM)
    encoder = ProjectionEncoder(DIM)

    class CSRSparse(lc.SparseEmbeddings):
        """The migration's codes for LangChain: the dense embedding, encoded."""

        def embed_documents(self, texts):
            codes = encoder(np.asarray(dense.embed_documents(texts), np.float32)).to_qdrant()
            return [lc.SparseVector(indices=[int(i) for i in idx], values=[float(v) for v in val]) for idx, val in codes]

        def embed_query(self, text):
            return self.embed_documents([text])[0]

    texts = [f"passage {i} on topic {i % 7}" for i in range(60)]
    path = str(tmp_path / "lc")
    built = lc.QdrantVectorStore.from_texts(texts, dense, path=path, collection_name="docs")
    built.client.close()
    rep = _migrate_and_verify("qdrant", path, model_dir, tmp_path / "state")
    assert rep.ok and rep.schema_check.ok, rep.problems
    client = QdrantClient(path=path)
    try:
        hybrid = lc.QdrantVectorStore(client=client, collection_name="docs_csr", embedding=dense,
                                      sparse_embedding=CSRSparse(), retrieval_mode=lc.RetrievalMode.HYBRID,
                                      sparse_vector_name=SPARSE_FIELD)  # validates the collection's config
        hits = hybrid.similarity_search(texts[5], k=3)
        assert hits[0].page_content == texts[5]
        sparse = lc.QdrantVectorStore(client=client, collection_name="docs_csr", sparse_embedding=CSRSparse(),
                                      retrieval_mode=lc.RetrievalMode.SPARSE, sparse_vector_name=SPARSE_FIELD)
        assert sparse.similarity_search(texts[9], k=1)[0].page_content == texts[9]
    finally:
        client.close()
