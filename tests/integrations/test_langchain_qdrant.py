"""LangChain's QdrantVectorStore on a collection it wrote, migrated by the CLI (qdrant-client local mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integrations.conftest import (
    LANGCHAIN_MISSING,
    Case,
    Corpus,
    assert_same_ranking,
    doc_uuid,
    exact_ranking,
    exact_top,
    new_texts,
    stored_codes,
    train_and_migrate,
)
from tests.integrations.dense import langchain_embeddings

lq = pytest.importorskip("langchain_qdrant", reason=LANGCHAIN_MISSING)
from qdrant_client import QdrantClient  # noqa: E402

from csr_vdb.integrations.langchain import CSRRetriever, CSRSparseEmbeddings  # noqa: E402
from csr_vdb.model import CSREncoder  # noqa: E402
from csr_vdb.retriever import DEFAULT_CANDIDATES  # noqa: E402

SOURCE = "docs"
TARGET = "docs_csr"


def build_source(corpus: Corpus, path: str, dense: Any) -> None:
    store = lq.QdrantVectorStore.from_texts(
        corpus.texts, dense, metadatas=corpus.metadata, ids=[doc_uuid(i) for i in corpus.ids],
        collection_name=SOURCE, path=path, batch_size=512,
    )
    store.client.close()


def dense_params(client: QdrantClient, name: str) -> dict:
    vectors = client.get_collection(name).config.params.vectors
    return {f: (p.size, p.distance) for f, p in (vectors.items() if isinstance(vectors, dict) else [("", vectors)])}


def ranked(store, corpus: Corpus, query_ids: list[str]) -> dict[str, list[str]]:
    by_id = dict(zip(corpus.query_ids, corpus.query_texts))
    return {q: [d.metadata["doc_id"] for d in store.similarity_search(by_id[q], k=10)] for q in query_ids}


def check_whole(docs, corpus: Corpus) -> None:
    """Documents come back with their text and metadata, as LangChain wrote them."""
    corpus.assert_whole([(d.metadata["doc_id"], d.page_content,
                          {k: v for k, v in d.metadata.items() if not k.startswith("_")}) for d in docs])


def test_flow(case: Case, tmp_path: Path) -> None:
    corpus, sample = case.corpus, case.sample
    path, state = str(tmp_path / "qdrant"), tmp_path / "state"
    dense = langchain_embeddings(corpus)
    build_source(corpus, path, dense)
    model = train_and_migrate("qdrant", path, SOURCE, corpus, case.model, state)

    sparse = CSRSparseEmbeddings(model, embeddings=dense)
    client = QdrantClient(path=path)
    try:
        # the dense field keeps its name, size and distance (LangChain's {"": params} is the default vector)
        assert dense_params(client, TARGET) == dense_params(client, SOURCE)
        dense_store = lq.QdrantVectorStore(client, SOURCE, embedding=dense)
        sparse_store = lq.QdrantVectorStore(
            client, TARGET, sparse_embedding=sparse, retrieval_mode=lq.RetrievalMode.SPARSE, sparse_vector_name="csr"
        )
        # HYBRID validates the dense field (size and distance) and the sparse one: no error
        hybrid_store = lq.QdrantVectorStore(
            client, TARGET, embedding=dense, sparse_embedding=sparse, retrieval_mode=lq.RetrievalMode.HYBRID,
            sparse_vector_name="csr",
        )
        qids = corpus.query_ids[:sample] if sample else corpus.query_ids
        dense_run = ranked(dense_store, corpus, corpus.query_ids)
        sparse_run = ranked(sparse_store, corpus, qids)
        check_whole(sparse_store.similarity_search(corpus.query_texts[0], k=10), corpus)
        check_whole(hybrid_store.similarity_search(corpus.query_texts[1], k=5), corpus)
        if sample:
            # the database's sparse ranking is exact: every query scored from the stored codes,
            # the sampled framework queries checked against it
            codes = stored_codes(client, TARGET, lambda p: p.payload["metadata"]["doc_id"], ["metadata"])
            queries = [(q.indices, q.values) for q in (sparse.embed_query(t) for t in corpus.query_texts)]
            by_q = exact_ranking(corpus, codes, queries, qids, lambda t: [
                (d.metadata["doc_id"], s) for d, s in sparse_store.similarity_search_with_score(t, k=10)])
            # what CSRRetriever asks the database for: the model's own search query (k_query wide,
            # narrower than the framework's) and its number of candidates
            encoder = CSREncoder.load(model)
            vectors = np.asarray([dense.embed_query(t) for t in corpus.query_texts], dtype=np.float32)
            narrow = encoder.encode_queries(vectors)
            n_candidates = encoder.config.search_candidates or DEFAULT_CANDIDATES
            candidates = exact_top(narrow.to_qdrant(), codes, k=n_candidates)
            sparse_run = {q: [i for i, _ in by_q[q]] for q in corpus.query_ids}
        figures = {"dense": corpus.ndcg(dense_run), "sparse": corpus.ndcg(sparse_run)}
        assert figures["sparse"] >= case.min_ratio * figures["dense"], figures

        # new documents written through the framework are found by sparse search
        extra = new_texts(corpus)
        meta = [{"doc_id": f"new-{n}", "kind": "added"} for n in range(len(extra))]
        hybrid_store.add_texts(extra, metadatas=meta, ids=[doc_uuid(m["doc_id"]) for m in meta])
        for t, m in zip(extra, meta):
            top = sparse_store.similarity_search(t, k=1)[0]
            assert top.page_content == t and top.metadata["doc_id"] == m["doc_id"]
    finally:
        client.close()

    retriever = CSRRetriever.from_collection("qdrant", path, TARGET, model, embeddings=dense, k=10)
    try:
        docs = retriever.invoke(corpus.query_texts[0])
        check_whole([d for d in docs if not d.metadata["doc_id"].startswith("new-")], corpus)
        text_of = dict(zip(corpus.query_ids, corpus.query_texts))
        got = {q: [(d.metadata["doc_id"], d.metadata["_score"]) for d in retriever.invoke(text_of[q])] for q in qids}
    finally:
        retriever.close()
    if sample:
        # the exact sparse candidates re-ranked by the cosine of their dense vectors: every query
        # scored in-process, the sampled ones checked against the retriever
        row = {i: n for n, i in enumerate(corpus.ids)}
        want = {}
        for q, cands in zip(corpus.query_ids, candidates):
            x = dense.embed_query(text_of[q])
            scored = sorted(((i, float(corpus.vectors[row[i]] @ x)) for i, _ in cands), key=lambda t: -t[1])
            want[q] = scored[:10]
        for q in qids:
            assert_same_ranking(got[q], want[q], atol=1e-5)
        got = want
    figures["retriever"] = corpus.ndcg({q: [i for i, _ in hits] for q, hits in got.items()})
    # CSRRetriever's default, the dense re-rank of the candidates, keeps 96% of dense on SciFact
    min_retriever_ratio = 0.9 if case.name == "small" else 0.96
    assert figures["retriever"] >= min_retriever_ratio * figures["dense"], figures
    print("langchain-qdrant", case.name, figures)
