"""The corpus' dense embedding as each framework takes it; each builder imports its framework."""

from __future__ import annotations

from typing import Any


def langchain_embeddings(corpus: Any) -> Any:
    """LangChain ``Embeddings`` over the corpus' vectors (known texts looked up, others by MiniLM)."""
    from langchain_core.embeddings import Embeddings

    class CorpusEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return corpus.vectors_by_text.documents(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return corpus.vectors_by_text.query(text).tolist()

    return CorpusEmbeddings()


def llama_index_embedding(corpus: Any) -> Any:
    """A LlamaIndex ``BaseEmbedding`` over the corpus' vectors."""
    from llama_index.core.embeddings import BaseEmbedding

    class CorpusEmbedding(BaseEmbedding):
        def _get_text_embedding(self, text: str) -> list[float]:
            return corpus.vectors_by_text.documents([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return corpus.vectors_by_text.documents(list(texts)).tolist()

        def _get_query_embedding(self, query: str) -> list[float]:
            return corpus.vectors_by_text.query(query).tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    return CorpusEmbedding(embed_batch_size=256)


def llama_index_node(doc_id: str, text: str, meta: dict) -> Any:
    """A node whose metadata stay out of the embedded text, so its dense vector is the text's own."""
    from llama_index.core.schema import TextNode

    from tests.integrations.conftest import doc_uuid

    return TextNode(id_=doc_uuid(doc_id), text=text, metadata=dict(meta), excluded_embed_metadata_keys=list(meta))
