"""LlamaIndex's QdrantVectorStore on a collection it wrote, migrated by the CLI (qdrant-client local mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integrations.conftest import (
    Case,
    Corpus,
    doc_uuid,
    exact_ranking,
    new_texts,
    stored_codes,
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


def test_flow(case: Case, tmp_path: Path) -> None:
    corpus, sample = case.corpus, case.sample
    path, state = str(tmp_path / "qdrant"), tmp_path / "state"
    embed = llama_index_embedding(corpus)
    client = QdrantClient(path=path)
    source = lq.QdrantVectorStore(client=client, collection_name=SOURCE)
    VectorStoreIndex(
        [llama_index_node(i, t, m) for i, t, m in zip(corpus.ids, corpus.texts, corpus.metadata)],
        storage_context=StorageContext.from_defaults(vector_store=source), embed_model=embed,
    )
    client.close()
    model = train_and_migrate("qdrant", path, SOURCE, corpus, case.model, state)

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
            codes = stored_codes(client, TARGET, lambda p: p.id)
            ind, val = fns.sparse_query_fn(corpus.query_texts)
            exact = exact_ranking(corpus, codes, list(zip(ind, val)), qids,
                                  lambda t: [(n.node.node_id, n.score) for n in r.retrieve(t)])
            by_uuid = {doc_uuid(i): i for i in corpus.ids}
            sparse_run = {q: [by_uuid[i] for i, _ in exact[q]] for q in corpus.query_ids}
        figures = {"dense": corpus.ndcg(dense_run), "sparse": corpus.ndcg(sparse_run)}
        assert figures["sparse"] >= case.min_ratio * figures["dense"], figures

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
    print("llama-index-qdrant", case.name, figures)
