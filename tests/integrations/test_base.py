"""What every framework adapter shares: the codec, lazy imports and the missing-extra error."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from csr_vdb.config import CSRConfig
from csr_vdb.errors import CollectionNotFoundError, ConfigError
from csr_vdb.integrations import CSRCodec, MissingExtraError
from csr_vdb.integrations._base import require
from csr_vdb.model import CSREncoder
from tests.helpers import clustered
from tests.integrations.conftest import LANGCHAIN_MISSING

DIM = 8


@pytest.fixture(scope="module")
def encoder() -> CSREncoder:
    cfg = CSRConfig(input_dim=DIM, hidden_dim=32, k=4, query_projection="decoder", doc_codes="pursuit",
                    bias_latent=True, normalize_codes=True)
    return CSREncoder(cfg, device="cpu").eval()


def test_codec_gives_the_migration_codes_and_search_queries(encoder, tmp_path):
    x, _ = clustered(6, DIM, 2, seed=3)
    table = {f"t{i}": x[i] for i in range(6)}
    codec = CSRCodec(encoder, lambda ts: np.stack([table[t] for t in ts]), lambda t: table[t])
    assert codec.dim == DIM
    assert codec.embed_documents(["t0", "t3"]).equals(encoder.encode(x[[0, 3]]))
    assert codec.embed_query("t2").equals(encoder.encode_queries(x[2:3]))
    assert codec.embed_queries(["t1", "t5"]).equals(encoder.encode_queries(x[[1, 5]]))
    assert len(codec.embed_documents([])) == 0
    narrow = CSRCodec(encoder, embed_query=lambda t: table[t], query_k=3)
    assert narrow.embed_query("t4").nnz().tolist() == [3]
    # a model whose k_query narrows the search for a re-score after: frameworks rank by the search
    # alone, so their queries keep the full width unless asked otherwise
    narrowed = CSREncoder(encoder.config.model_copy(update={"k_query": 2}), device="cpu").eval()
    narrowed.load_state_dict(encoder.state_dict())
    wide = CSRCodec(narrowed, embed_query=lambda t: table[t]).embed_query("t4")
    full = encoder.config.k_query_alone()
    assert full == 32 and wide.equals(narrowed.encode_queries(x[4:5], k=full))
    assert narrowed.encode_queries(x[4:5]).nnz().tolist() == [2]
    # a saved model folder loads the same weights
    encoder.save(tmp_path / "m")
    again = CSRCodec(tmp_path / "m", embed_query=lambda t: table[t])
    np.testing.assert_allclose(again.embed_query("t1").values, codec.embed_query("t1").values, rtol=0, atol=1e-6)


def test_codec_refuses_what_it_cannot_do(encoder):
    codec = CSRCodec(encoder)
    with pytest.raises(ConfigError, match="embed_documents"):
        codec.embed_documents(["a"])
    with pytest.raises(ConfigError, match="embed_query"):
        codec.embed_query("a")
    with pytest.raises(ConfigError, match="query_k"):
        CSRCodec(encoder, query_k=0)
    with pytest.raises(ConfigError, match="non-empty"):
        codec.document_codes(np.zeros((0, DIM), np.float32))


def test_missing_framework_names_the_extra(monkeypatch):
    err = pytest.raises(MissingExtraError, require, "csr_vdb_no_such_module", "langchain", "Thing", "some-package")
    assert "pip install 'csr-vdb[langchain]'" in str(err.value) and "'some-package'" in str(err.value)
    assert isinstance(err.value, ImportError) and err.value.exit_code == ConfigError.exit_code


@pytest.mark.parametrize(
    "blocked, module, name, extra",
    [
        ("langchain_qdrant", "csr_vdb.integrations.langchain", "CSRSparseEmbeddings", "langchain"),
        ("langchain_milvus", "csr_vdb.integrations.langchain", "CSRMilvusSparseEmbedding", "langchain"),
        ("langchain_core", "csr_vdb.integrations.langchain", "CSRRetriever", "langchain"),
        ("haystack", "csr_vdb.integrations.haystack", None, "haystack"),
        ("llama_index.vector_stores.milvus", "csr_vdb.integrations.llama_index", "milvus_sparse_embedding_function",
         "llama-index-milvus"),
    ],
)
def test_each_module_says_which_extra_is_missing(monkeypatch, blocked, module, name, extra):
    for mod in list(sys.modules):
        fresh = mod.startswith("csr_vdb.integrations.") and mod != "csr_vdb.integrations._base"
        if mod == blocked or mod.startswith(blocked + ".") or fresh:
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, blocked, None)  # import of it raises ImportError
    with pytest.raises(MissingExtraError, match=rf"pip install 'csr-vdb\[{extra}\]'"):
        mod = __import__(module, fromlist=["_"])
        value = getattr(mod, name)
        if name == "milvus_sparse_embedding_function":
            value("unused-model", embed_model=None)


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, csr_vdb.integrations, csr_vdb.integrations.langchain, csr_vdb.integrations.llama_index\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'langchain_qdrant', "
        "'langchain_milvus', 'llama_index', 'haystack', 'haystack_integrations', 'milvus_haystack')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_retriever_from_a_missing_collection_releases_the_store(tmp_path, encoder):
    pytest.importorskip("langchain_core", reason=LANGCHAIN_MISSING)
    from qdrant_client import QdrantClient

    from csr_vdb.integrations.langchain import CSRRetriever

    path = str(tmp_path / "qdrant")
    with pytest.raises(CollectionNotFoundError):
        CSRRetriever.from_collection("qdrant", path, "nothing_here", encoder)
    QdrantClient(path=path).close()  # the local directory's lock was released


def test_documents_from_each_payload_layout():
    pytest.importorskip("langchain_core", reason=LANGCHAIN_MISSING)
    from csr_vdb.integrations.langchain import document_from_payload

    d = document_from_payload({"page_content": "a text", "metadata": {"k": 1}})
    assert (d.page_content, d.metadata) == ("a text", {"k": 1})
    d = document_from_payload({"text": "milvus text", "k": 2, "tag": "x"})
    assert (d.page_content, d.metadata) == ("milvus text", {"k": 2, "tag": "x"})
    d = document_from_payload({"body": "b", "meta": {"k": 3}, "other": 1}, content_key="body", metadata_key="meta")
    assert (d.page_content, d.metadata) == ("b", {"k": 3})
    assert document_from_payload(None).page_content == ""


def test_retriever_re_ranks_by_the_unnamed_dense_vector(tmp_path, encoder):
    """Collections written by LangChain or Haystack keep Qdrant's unnamed default vector (field "")."""
    from csr_vdb.adapters import open_store
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    from csr_vdb.retriever import Retriever

    x, _ = clustered(40, DIM, 4, seed=5)
    path = str(tmp_path / "qdrant")
    client = QdrantClient(path=path)
    client.create_collection("app", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    client.upsert("app", [qm.PointStruct(id=i, vector=x[i].tolist(), payload={"i": i}) for i in range(40)])
    client.close()
    store = open_store("qdrant", path)
    try:
        store.create_sparse_collection("app_csr", like="app")
        store.upsert("app_csr", list(range(40)), encoder.encode(x), [{"i": i} for i in range(40)], dense=x)
        retriever = Retriever(store, "app_csr", encoder)
        assert retriever.has_dense
        hits = retriever.search(x[:3], top_k=5, candidates=40)
        for q, hs in enumerate(hits):
            want = sorted(((float(x[h.id] @ x[q]), h.id) for h in hs), reverse=True)
            np.testing.assert_allclose([h.score for h in hs], [s for s, _ in want], rtol=0, atol=1e-5)
            assert hs[0].id == q  # the query's own row, by its dense cosine 1.0
    finally:
        store.close()
