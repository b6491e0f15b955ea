"""Haystack pipelines on collections they wrote, migrated by the CLI: qdrant-haystack (qdrant-client
local mode) and milvus-haystack (Milvus Lite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integrations.conftest import (
    Case,
    Corpus,
    exact_ranking,
    new_texts,
    stored_codes,
    train_and_migrate,
)

MISSING = "{} is not installed: pip install 'csr-vdb[haystack]'"
pytest.importorskip("haystack", reason=MISSING.format("the 'haystack' extra"))
from haystack import Document, Pipeline, component  # noqa: E402
from haystack.components.writers import DocumentWriter  # noqa: E402
from haystack.document_stores.types import DuplicatePolicy  # noqa: E402

from csr_vdb.integrations.haystack import CSRSparseDocumentEmbedder, CSRSparseTextEmbedder  # noqa: E402

SOURCE = "docs"
TARGET = "docs_csr"


@component
class DenseTextEmbedder:
    """The collection's dense embedding, as a Haystack text embedder."""

    def __init__(self, corpus: Any) -> None:
        self.tv = corpus.vectors_by_text

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        return {"embedding": self.tv.query(text).tolist()}


@component
class DenseDocumentEmbedder:
    """The collection's dense embedding, as a Haystack document embedder."""

    def __init__(self, corpus: Any) -> None:
        self.tv = corpus.vectors_by_text

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        vectors = self.tv.documents([d.content for d in documents])
        return {"documents": [Document(id=d.id, content=d.content, meta=d.meta, embedding=v.tolist())
                              for d, v in zip(documents, vectors)]}


def documents(corpus: Corpus) -> list[Document]:
    return [Document(id=i, content=t, meta=dict(m)) for i, t, m in zip(corpus.ids, corpus.texts, corpus.metadata)]


def index(corpus: Corpus, store: Any, docs: list[Document], sparse: CSRSparseDocumentEmbedder | None = None) -> None:
    p = Pipeline()
    p.add_component("dense", DenseDocumentEmbedder(corpus))
    p.add_component("writer", DocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE))
    if sparse is None:
        p.connect("dense.documents", "writer.documents")
    else:
        p.add_component("sparse", sparse)
        p.connect("dense.documents", "sparse.documents")
        p.connect("sparse.documents", "writer.documents")
    p.run({"dense": {"documents": docs}})


def query_pipeline(corpus: Corpus, retriever: Any, model: Path | None = None) -> Pipeline:
    """dense text embedder -> (CSR sparse text embedder ->) retriever."""
    p = Pipeline()
    p.add_component("dense", DenseTextEmbedder(corpus))
    p.add_component("retriever", retriever)
    if model is None:
        p.connect("dense.embedding", "retriever.query_embedding")
    else:
        p.add_component("sparse", CSRSparseTextEmbedder(model))
        p.connect("dense.embedding", "sparse.embedding")
        p.connect("sparse.sparse_embedding", "retriever.query_sparse_embedding")
    return p


def ask(p: Pipeline, text: str, sparse: bool) -> list[Document]:
    inputs = {"dense": {"text": text}}
    if sparse:
        inputs["sparse"] = {"text": text}
    return p.run(inputs)["retriever"]["documents"]


def ranked(p: Pipeline, corpus: Corpus, query_ids: list[str], sparse: bool) -> dict[str, list[str]]:
    by_id = dict(zip(corpus.query_ids, corpus.query_texts))
    return {q: [d.id for d in ask(p, by_id[q], sparse)] for q in query_ids}


def check_whole(docs: list[Document], corpus: Corpus) -> None:
    corpus.assert_whole([(d.id, d.content, d.meta) for d in docs])


def check_added(corpus: Corpus, store: Any, sparse_pipeline: Pipeline, model: Path) -> None:
    """Documents written through a Haystack indexing pipeline are found by sparse search."""
    extra = new_texts(corpus)
    new = [Document(id=f"new-{n}", content=t, meta={**corpus.metadata[0], "doc_id": f"new-{n}"})
           for n, t in enumerate(extra)]
    index(corpus, store, new, CSRSparseDocumentEmbedder(model))
    for d in new:
        top = ask(sparse_pipeline, d.content, sparse=True)[0]
        assert top.id == d.id and top.content == d.content and top.meta == d.meta


# ---------------------------------------------------------------------- Qdrant
def test_qdrant(case: Case, tmp_path: Path) -> None:
    corpus, sample = case.corpus, case.sample
    hq = pytest.importorskip("haystack_integrations.document_stores.qdrant", reason=MISSING.format("qdrant-haystack"))
    from haystack_integrations.components.retrievers.qdrant import (
        QdrantEmbeddingRetriever,
        QdrantHybridRetriever,
        QdrantSparseEmbeddingRetriever,
    )

    from csr_vdb.integrations.haystack import CSRQdrantDocumentStore

    path, state = str(tmp_path / "qdrant"), tmp_path / "state"
    common = {"path": path, "embedding_dim": corpus.vectors.shape[1], "similarity": "cosine", "progress_bar": False}
    src = hq.QdrantDocumentStore(index=SOURCE, recreate_index=True, write_batch_size=512, **common)
    index(corpus, src, documents(corpus))
    src.close()
    model = train_and_migrate("qdrant", path, SOURCE, corpus, case.model, state)
    codes = target_codes(path) if sample else {}

    target = CSRQdrantDocumentStore(index=TARGET, **common)
    try:
        qids = corpus.query_ids[:sample] if sample else corpus.query_ids
        dense_p = query_pipeline(corpus, QdrantEmbeddingRetriever(document_store=target, top_k=10))
        sparse_p = query_pipeline(corpus, QdrantSparseEmbeddingRetriever(document_store=target, top_k=10), model)
        dense_run = ranked(dense_p, corpus, corpus.query_ids, sparse=False)  # the dense field, unchanged
        sparse_run = ranked(sparse_p, corpus, qids, sparse=True)
        check_whole(ask(sparse_p, corpus.query_texts[0], sparse=True), corpus)
        check_whole(ask(dense_p, corpus.query_texts[1], sparse=False), corpus)
        hybrid_p = query_pipeline(corpus, QdrantHybridRetriever(document_store=target, top_k=5), model)
        hybrid_p.connect("dense.embedding", "retriever.query_embedding")
        check_whole(ask(hybrid_p, corpus.query_texts[2], sparse=True), corpus)
        one = corpus.ids[5]
        only = sparse_p.run({"dense": {"text": corpus.texts[5]}, "sparse": {"text": corpus.texts[5]},
                             "retriever": {"filters": {"field": "meta.doc_id", "operator": "==", "value": one}}})
        assert [d.id for d in only["retriever"]["documents"]] == [one]
        if sample:
            embedder = CSRSparseTextEmbedder(model, DenseTextEmbedder(corpus))
            queries = [embedder.run(text=t)["sparse_embedding"] for t in corpus.query_texts]
            exact = exact_ranking(corpus, codes, [(q.indices, q.values) for q in queries], qids,
                                  lambda t: [(d.id, d.score) for d in ask(sparse_p, t, sparse=True)])
            sparse_run = {q: [i for i, _ in exact[q]] for q in corpus.query_ids}
        figures = {"dense": corpus.ndcg(dense_run), "sparse": corpus.ndcg(sparse_run)}
        assert figures["sparse"] >= case.min_ratio * figures["dense"], figures
        check_added(corpus, target, sparse_p, model)
        got = target.get_documents_by_id(["new-0"])[0]
        assert got.content and got.meta["doc_id"] == "new-0"
    finally:
        target.close()
    print("haystack-qdrant", case.name, figures)


def target_codes(path: str) -> dict[str, tuple[list[int], list[float]]]:
    """The target's codes by document id, read before the store opens the local directory."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=path)
    try:
        return stored_codes(client, TARGET, lambda p: p.payload["id"], ["id"])
    finally:
        client.close()


# ---------------------------------------------------------------------- Milvus
def test_milvus(case: Case, tmp_path: Path) -> None:
    corpus = case.corpus
    mh = pytest.importorskip("milvus_haystack", reason=MISSING.format("milvus-haystack"))
    from milvus_haystack.milvus_embedding_retriever import (
        MilvusEmbeddingRetriever,
        MilvusHybridRetriever,
        MilvusSparseEmbeddingRetriever,
    )

    db, state = str(tmp_path / "milvus.db"), tmp_path / "state"
    conn = {"uri": db}
    src = mh.MilvusDocumentStore(collection_name=SOURCE, connection_args=conn, drop_old=True)
    index(corpus, src, documents(corpus))
    src.client.close()
    model = train_and_migrate("milvus", db, SOURCE, corpus, case.model, state)

    dense_store = mh.MilvusDocumentStore(collection_name=SOURCE, connection_args=conn)
    target = mh.MilvusDocumentStore(collection_name=TARGET, connection_args=conn, sparse_vector_field="csr")
    try:
        dense_p = query_pipeline(corpus, MilvusEmbeddingRetriever(document_store=dense_store, top_k=10))
        sparse_p = query_pipeline(corpus, MilvusSparseEmbeddingRetriever(document_store=target, top_k=10), model)
        figures = {"dense": corpus.ndcg(ranked(dense_p, corpus, corpus.query_ids, sparse=False)),
                   "sparse": corpus.ndcg(ranked(sparse_p, corpus, corpus.query_ids, sparse=True))}
        assert figures["sparse"] >= case.min_ratio * figures["dense"], figures
        docs = ask(sparse_p, corpus.query_texts[0], sparse=True)
        check_whole(docs, corpus)
        hybrid_p = query_pipeline(corpus, MilvusHybridRetriever(document_store=target, top_k=5), model)
        hybrid_p.connect("dense.embedding", "retriever.query_embedding")
        check_whole(ask(hybrid_p, corpus.query_texts[2], sparse=True), corpus)
        assert docs[0].sparse_embedding is not None and len(docs[0].sparse_embedding.indices) > 0
        check_added(corpus, target, sparse_p, model)
        # milvus-haystack returns the stored vectors: the dense one written beside the codes
        first = new_texts(corpus)[0]
        top = ask(sparse_p, first, sparse=True)[0]
        want = corpus.vectors_by_text.documents([first])[0]
        np.testing.assert_allclose(np.asarray(top.embedding, np.float32), want, rtol=0, atol=1e-6)
    finally:
        dense_store.client.close()
        target.client.close()
    print("haystack-milvus", case.name, figures)
