"""LlamaIndex's MilvusVectorStore on a collection it wrote, migrated by the CLI (Milvus Lite).

llama-index-vector-stores-milvus needs pymilvus < 3 and so cannot sit beside the ``langchain``
extra: these tests run in an environment made with ``pip install -e '.[dev,demo,llama-index-milvus]'``
and skip elsewhere (``make test`` installs the other extras).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integrations.conftest import Case, Corpus, new_texts, train_and_migrate
from tests.integrations.dense import llama_index_embedding, llama_index_node

lm = pytest.importorskip(
    "llama_index.vector_stores.milvus",
    reason="llama-index-vector-stores-milvus is not installed: pip install 'csr-vdb[llama-index-milvus]' "
    "(it needs pymilvus < 3, so not beside the langchain extra)",
)
from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402

from csr_vdb.integrations.llama_index import milvus_sparse_embedding_function  # noqa: E402

SOURCE = "docs"
TARGET = "docs_csr"


def retrieve(index, corpus: Corpus, **kwargs: Any) -> dict[str, list[str]]:
    r = index.as_retriever(similarity_top_k=10, **kwargs)
    return {q: [n.node.metadata["doc_id"] for n in r.retrieve(t)] for q, t in zip(corpus.query_ids, corpus.query_texts)}


def test_flow(case: Case, tmp_path: Path) -> None:
    corpus = case.corpus
    db, state = str(tmp_path / "milvus.db"), tmp_path / "state"
    embed = llama_index_embedding(corpus)
    dim = corpus.vectors.shape[1]
    source = lm.MilvusVectorStore(uri=db, collection_name=SOURCE, dim=dim, overwrite=True)
    VectorStoreIndex([llama_index_node(i, t, m) for i, t, m in zip(corpus.ids, corpus.texts, corpus.metadata)],
                     storage_context=StorageContext.from_defaults(vector_store=source), embed_model=embed)
    source.client.close()
    model = train_and_migrate("milvus", db, SOURCE, corpus, case.model, state)

    fn = milvus_sparse_embedding_function(model, embed_model=embed)
    dense_store = lm.MilvusVectorStore(uri=db, collection_name=SOURCE, dim=dim)
    # its "sparse" query mode sends drop_ratio_search 0.2, which Milvus Lite refuses; its hybrid mode
    # does not, and with the dense request weighted 0 it ranks by the sparse scores alone
    target = lm.MilvusVectorStore(uri=db, collection_name=TARGET, dim=dim, enable_sparse=True,
                                  sparse_embedding_function=fn, sparse_embedding_field="csr",
                                  hybrid_ranker="WeightedRanker", hybrid_ranker_params={"weights": [0.0, 1.0]})
    # Milvus Lite reopens collections released, and LlamaIndex's store does not load them
    dense_store.client.load_collection(SOURCE)
    target.client.load_collection(TARGET)
    try:
        index = VectorStoreIndex.from_vector_store(target, embed_model=embed)
        figures = {
            "dense": corpus.ndcg(retrieve(VectorStoreIndex.from_vector_store(dense_store, embed_model=embed), corpus)),
            "sparse": corpus.ndcg(retrieve(index, corpus, vector_store_query_mode="hybrid")),
        }
        assert figures["sparse"] >= case.min_ratio * figures["dense"], figures
        hits = index.as_retriever(similarity_top_k=5, vector_store_query_mode="hybrid").retrieve(corpus.query_texts[0])
        corpus.assert_whole([(h.node.metadata["doc_id"], h.node.get_content(), h.node.metadata) for h in hits])

        new = [llama_index_node(f"new-{n}", t, {**corpus.metadata[0], "doc_id": f"new-{n}"})
               for n, t in enumerate(new_texts(corpus))]
        index.insert_nodes(new)
        for n in new:
            top = index.as_retriever(similarity_top_k=1, vector_store_query_mode="hybrid").retrieve(n.text)[0]
            assert top.node.node_id == n.node_id
    finally:
        dense_store.client.close()
        target.client.close()
    print("llama-index-milvus", case.name, figures)
