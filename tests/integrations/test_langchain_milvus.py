"""LangChain's Milvus store on a collection it wrote, migrated by the CLI (Milvus Lite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integrations.conftest import LANGCHAIN_MISSING, Case, Corpus, new_texts, train_and_migrate
from tests.integrations.dense import langchain_embeddings

lm = pytest.importorskip("langchain_milvus", reason=LANGCHAIN_MISSING)

from csr_vdb.integrations.langchain import (  # noqa: E402
    MILVUS_SPARSE_SEARCH_PARAMS,
    CSRMilvusSparseEmbedding,
    CSRRetriever,
)

SOURCE = "docs"
TARGET = "docs_csr"


def ranked(store, corpus: Corpus) -> dict[str, list[str]]:
    return {q: [d.metadata["doc_id"] for d in store.similarity_search(t, k=10)]
            for q, t in zip(corpus.query_ids, corpus.query_texts)}


def check_whole(docs, corpus: Corpus) -> None:
    """Text and metadata as LangChain wrote them. A store that knows only the sparse field returns
    the target's other vector field too: LangChain leaves out only the vector fields it was given."""
    skip = ("pk", "vector")
    corpus.assert_whole([(d.metadata["doc_id"], d.page_content,
                          {k: v for k, v in d.metadata.items() if k not in skip and not k.startswith("_")})
                         for d in docs])


def test_flow(case: Case, tmp_path: Path) -> None:
    corpus = case.corpus
    min_ratio = 0.85 if case.name == "small" else case.min_ratio
    # on SciFact, CSRRetriever's default (the dense re-rank) must keep 96% of dense; the re-score from
    # codes after the model's narrow search (16 entries, 300 candidates) is held to the framework
    # search's 94%: bench/quality.py measures it at 97.6% with the recipe's seed-0 model, and the
    # model trained inside the full suite (other thread settings) scores 95.4%
    min_retriever_ratio = {True: 0.9, "codes": 0.9} if case.name == "small" else {True: 0.96, "codes": 0.94}
    db, state = str(tmp_path / "milvus.db"), tmp_path / "state"
    conn = {"uri": db}
    dense = langchain_embeddings(corpus)
    src = lm.Milvus.from_texts(corpus.texts, dense, metadatas=corpus.metadata, ids=list(corpus.ids),
                               collection_name=SOURCE, connection_args=conn)
    src.client.close()
    model = train_and_migrate("milvus", db, SOURCE, corpus, case.model, state)

    sparse = CSRMilvusSparseEmbedding(model, embeddings=dense)
    assert sparse.search_params == MILVUS_SPARSE_SEARCH_PARAMS
    dense_store = lm.Milvus(dense, collection_name=SOURCE, connection_args=conn)
    # the sparse field alone, as the only embedding of the store
    sparse_store = lm.Milvus(sparse, collection_name=TARGET, vector_field="csr", connection_args=conn,
                             search_params=sparse.search_params)
    # beside the dense field: what add_texts needs (the target's dense field is required)
    both = lm.Milvus([dense, sparse], collection_name=TARGET, vector_field=["vector", "csr"], connection_args=conn,
                     search_params=[{"metric_type": "L2", "params": {}}, sparse.search_params])
    try:
        figures = {"dense": corpus.ndcg(ranked(dense_store, corpus)),
                   "sparse": corpus.ndcg(ranked(sparse_store, corpus))}
        assert figures["sparse"] >= min_ratio * figures["dense"], figures
        check_whole(sparse_store.similarity_search(corpus.query_texts[0], k=10), corpus)
        check_whole(both.similarity_search(corpus.query_texts[1], k=5), corpus)

        extra = new_texts(corpus)
        meta = [{"doc_id": f"new-{n}", **{k: "added" for k in corpus.metadata[0] if k != "doc_id"}}
                for n in range(len(extra))]
        both.add_texts(extra, metadatas=meta, ids=[m["doc_id"] for m in meta])
        for t, m in zip(extra, meta):
            top = sparse_store.similarity_search(t, k=1)[0]
            assert top.page_content == t and top.metadata["doc_id"] == m["doc_id"]
    finally:
        for s in (dense_store, sparse_store, both):
            s.client.close()

    retriever = CSRRetriever.from_collection("milvus", db, TARGET, model, embeddings=dense, k=10)
    try:
        check_whole([d for d in retriever.invoke(corpus.query_texts[0]) if not d.metadata["doc_id"].startswith("new-")],
                    corpus)
        for rerank in (True, "codes"):
            retriever.rerank = rerank
            run = {q: [d.metadata["doc_id"] for d in retriever.invoke(t)]
                   for q, t in zip(corpus.query_ids, corpus.query_texts)}
            figures[f"retriever_{rerank}"] = corpus.ndcg(run)
            assert figures[f"retriever_{rerank}"] >= min_retriever_ratio[rerank] * figures["dense"], figures
    finally:
        retriever.close()
    print("langchain-milvus", case.name, figures)

