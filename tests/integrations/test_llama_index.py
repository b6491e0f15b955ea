"""LlamaIndex's QdrantVectorStore on a collection it wrote, migrated by the CLI (qdrant-client local mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integrations.conftest import (
    QDRANT_LOCAL_QUERIES,
    Corpus,
    assert_same_ranking,
    doc_uuid,
    exact_top,
    new_texts,
    train_and_migrate,
)
from tests.integrations.dense import llama_index_embedding, llama_index_node

lq = pytest.importorskip(
    "llama_index.vector_stores.qdrant",
    reason="the 'llama-index' extra is not installed: pip install 'csr-vdb[llama-index]'",
)
from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402
from qdrant_client import QdrantClient  # noqa: E402

from csr_vdb.integrations.llama_index import CSRSparseFunctions  # noqa: E402

SOURCE = "docs"
TARGET = "docs_csr"


def retrieve(index, corpus: Corpus, mode: str, query_ids: list[str]) -> dict[str, list[str]]:
    by_id = dict(zip(corpus.query_ids, corpus.query_texts))
    kwargs = {"similarity_top_k": 10}
    if mode != "default":
        kwargs.update(vector_store_query_mode=mode, sparse_top_k=10)
    r = index.as_retriever(**kwargs)
    return {q: [n.node.metadata["doc_id"] for n in r.retrieve(by_id[q])] for q in query_ids}


def check_whole(nodes, corpus: Corpus) -> None:
    corpus.assert_whole([(n.node.metadata["doc_id"], n.node.get_content(), n.node.metadata) for n in nodes])
    assert all(n.node.node_id == doc_uuid(n.node.metadata["doc_id"]) for n in nodes)


def run_flow(corpus: Corpus, tmp_path: Path, model: Path | None, sample: int | None, min_ratio: float) -> dict:
    path, state = str(tmp_path / "qdrant"), tmp_path / "state"
    embed = llama_index_embedding(corpus)
    client = QdrantClient(path=path)
    source = lq.QdrantVectorStore(client=client, collection_name=SOURCE)
    VectorStoreIndex(
        [llama_index_node(i, t, m) for i, t, m in zip(corpus.ids, corpus.texts, corpus.metadata)],
        storage_context=StorageContext.from_defaults(vector_store=source), embed_model=embed,
    )
    client.close()
    model = train_and_migrate("qdrant", path, SOURCE, corpus, model, state)

    fns = CSRSparseFunctions(model, embed_model=embed)
    client = QdrantClient(path=path)
    try:
        dense_index = VectorStoreIndex.from_vector_store(lq.QdrantVectorStore(client=client, collection_name=SOURCE),
                                                         embed_model=embed)
        target = lq.QdrantVectorStore(client=client, collection_name=TARGET, enable_hybrid=True,
                                      sparse_doc_fn=fns.sparse_doc_fn, sparse_query_fn=fns.sparse_query_fn,
                                      sparse_vector_name="csr")
        index = VectorStoreIndex.from_vector_store(target, embed_model=embed)
        qids = corpus.query_ids[:sample] if sample else corpus.query_ids
        dense_run = retrieve(dense_index, corpus, "default", corpus.query_ids)
        sparse_run = retrieve(index, corpus, "sparse", qids)
        r = index.as_retriever(similarity_top_k=10, vector_store_query_mode="sparse", sparse_top_k=10)
        check_whole(r.retrieve(corpus.query_texts[0]), corpus)
        check_whole(index.as_retriever(similarity_top_k=5, vector_store_query_mode="hybrid", sparse_top_k=10)
                    .retrieve(corpus.query_texts[1]), corpus)
        if sample:
            points, _ = client.scroll(TARGET, limit=len(corpus.ids) + 10, with_payload=True, with_vectors=["csr"])
            codes = {p.id: (p.vector["csr"].indices, p.vector["csr"].values) for p in points}
            ind, val = fns.sparse_query_fn(corpus.query_texts)
            exact = dict(zip(corpus.query_ids, exact_top(list(zip(ind, val)), codes)))
            by_uuid = {doc_uuid(i): i for i in corpus.ids}
            by_q = dict(zip(corpus.query_ids, corpus.query_texts))
            for q in qids:
                got = [(n.node.node_id, n.score) for n in r.retrieve(by_q[q])]
                assert_same_ranking(got, exact[q])
            sparse_run = {q: [by_uuid[i] for i, _ in exact[q]] for q in corpus.query_ids}
        figures = {"dense": corpus.ndcg(dense_run), "sparse": corpus.ndcg(sparse_run)}
        assert figures["sparse"] >= min_ratio * figures["dense"], figures

        extra = new_texts(corpus)
        new = [llama_index_node(f"new-{n}", t, {**corpus.metadata[0], "doc_id": f"new-{n}"})
               for n, t in enumerate(extra)]
        index.insert_nodes(new)
        first = index.as_retriever(similarity_top_k=1, vector_store_query_mode="sparse", sparse_top_k=1)
        for n in new:
            top = first.retrieve(n.text)[0]
            assert top.node.node_id == n.node_id and top.node.get_content() == n.text
        stored = client.retrieve(TARGET, [new[0].node_id], with_vectors=True)[0].vector
        np.testing.assert_allclose(stored[target.dense_vector_name], embed.get_text_embedding(new[0].text), atol=1e-6)
    finally:
        client.close()
    return figures


def test_small_collection(small_corpus, tmp_path):
    figures = run_flow(small_corpus, tmp_path, None, None, min_ratio=0.9)
    print("llama-index-qdrant small", figures)


@pytest.mark.realdata
@pytest.mark.slow
def test_scifact(scifact_corpus, scifact_model, tmp_path):
    figures = run_flow(scifact_corpus, tmp_path, scifact_model, QDRANT_LOCAL_QUERIES, min_ratio=0.94)
    print("llama-index-qdrant scifact", figures)
