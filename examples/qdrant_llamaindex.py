"""A LlamaIndex RAG index on Qdrant, moved to CSR sparse vectors, queried through LlamaIndex again.

Needs ``pip install 'csr-vdb[llama-index,demo]'`` (the demo extra brings the offline MiniLM),
nothing else: it builds its own small index in qdrant-client's local mode (under ``--dir``,
replaced on each run), then

1. LlamaIndex writes the collection (``VectorStoreIndex`` over ``QdrantVectorStore``);
2. ``csr-vdb train`` and ``csr-vdb migrate --to sparse`` run on it (the CLI, as in production);
3. LlamaIndex opens the target ``<collection>_csr`` with `CSRSparseFunctions` as its sparse
   document and query functions, retrieves in sparse and hybrid mode, and inserts a node.

    python examples/qdrant_llamaindex.py "How do I read a JSON document?"
"""

from __future__ import annotations

from typing import Any

from _steps import fresh_workdir, parse_args, train_and_migrate
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import TextNode
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from csr_vdb.corpus import stdlib_passages
from csr_vdb.integrations.llama_index import CSRSparseFunctions
from csr_vdb.text import load_text_model


class MiniLMEmbedding(BaseEmbedding):
    """The bundled all-MiniLM-L6-v2 as a LlamaIndex embedding (any dense embedding works the same)."""

    model: Any = None

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if self.model is None:
            self.model = load_text_model(device="cpu")
        return self.model(list(texts)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(__doc__, "qdrant_llamaindex_demo", argv)
    work = fresh_workdir(args.dir)
    path, model = work.qdrant, work.model
    embed = MiniLMEmbedding(embed_batch_size=64)

    # 1. the application's index, written by LlamaIndex
    nodes = [TextNode(text=p.text, metadata={"name": p.name, "kind": p.kind},
                      excluded_embed_metadata_keys=["name", "kind"]) for p in stdlib_passages(args.limit)]
    client = QdrantClient(path=path)
    store = QdrantVectorStore(client=client, collection_name="docs")
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed)
    client.close()  # qdrant-client's local mode: one client at a time

    # 2. train and migrate with the CLI
    train_and_migrate(work, "docs", args.epochs)

    # 3. the few lines that change in the application: the sparse functions and the target's name
    fns = CSRSparseFunctions(model, embed_model=embed)
    client = QdrantClient(path=path)
    try:
        target = QdrantVectorStore(client=client, collection_name="docs_csr", enable_hybrid=True,
                                   sparse_doc_fn=fns.sparse_doc_fn, sparse_query_fn=fns.sparse_query_fn,
                                   sparse_vector_name="csr")
        index = VectorStoreIndex.from_vector_store(target, embed_model=embed)
        print(f"Q: {args.question}")
        names: list[str] = []
        for mode in ("sparse", "hybrid"):
            # sparse mode returns sparse_top_k hits; hybrid fuses 3 dense with 10 sparse candidates
            retriever = index.as_retriever(vector_store_query_mode=mode, similarity_top_k=3,
                                           sparse_top_k=3 if mode == "sparse" else 10)
            hits = retriever.retrieve(args.question)
            for rank, hit in enumerate(hits, 1):
                print(f"  {mode} {rank}. {hit.node.metadata['name']}: {hit.node.get_content()[:90]}")
            names = names or [h.node.metadata["name"] for h in hits]
        # a new node is written with its dense vector and its CSR code, and found by sparse search
        note = TextNode(text="csr-vdb moves a dense collection onto sparse CSR codes that Qdrant indexes natively.",
                        metadata={"name": "added.note", "kind": "note"}, excluded_embed_metadata_keys=["name", "kind"])
        index.insert_nodes([note])
        top = index.as_retriever(vector_store_query_mode="sparse", sparse_top_k=1).retrieve(note.text)[0]
        print("  added:", top.node.metadata["name"])
    finally:
        client.close()
    return names


if __name__ == "__main__":
    main()
