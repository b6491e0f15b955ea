"""LlamaIndex: CSR sparse functions for its Qdrant vector store, a sparse embedding function for its Milvus store.

``pip install 'csr-vdb[llama-index]'`` (LlamaIndex's core and Qdrant store). With a collection
migrated by csr-vdb::

    fns = CSRSparseFunctions("models/docs", embed_model=embed_model)
    store = QdrantVectorStore(client=client, collection_name="docs_csr", enable_hybrid=True,
                              sparse_doc_fn=fns.sparse_doc_fn, sparse_query_fn=fns.sparse_query_fn,
                              sparse_vector_name="csr")
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    nodes = index.as_retriever(vector_store_query_mode="sparse", sparse_top_k=10).retrieve("...")

`milvus_sparse_embedding_function` gives the same codes to ``llama_index.vector_stores.milvus``
(``sparse_embedding_function=``, ``sparse_embedding_field="csr"``). That store (every release up to
1.2) requires pymilvus < 3 while csr-vdb's Milvus adapter runs on pymilvus 3, so it is not part of
the extra: see docs/integrations.md for the combination that installs.
"""

from __future__ import annotations

from typing import Any

from csr_vdb.integrations._base import EmbeddingsCodec, k_query_arg, pairs, require


def _split(rows: list[tuple[list[int], list[float]]]) -> tuple[list[list[int]], list[list[float]]]:
    return [i for i, _ in rows], [v for _, v in rows]


class CSRSparseFunctions(EmbeddingsCodec):
    """``sparse_doc_fn`` and ``sparse_query_fn`` of LlamaIndex's ``QdrantVectorStore``.

    Both take a batch of texts and return ``(indices, values)`` lists. Documents get the codes
    ``csr-vdb migrate`` stored (from the dense embedding of the text LlamaIndex embeds, i.e. the
    node's content in ``MetadataMode.EMBED``), queries the non-negative search query.

    Args: ``model`` (the model folder of ``csr-vdb train``), ``embed_model`` (the LlamaIndex
    ``BaseEmbedding`` the collection was made with), ``k_query`` (``query_k``, deprecated),
    ``device``: see `EmbeddingsCodec`.
    """

    EMBED_METHODS = ("get_text_embedding_batch", "get_query_embedding")

    def __init__(self, model: Any, embed_model: Any, **options: Any) -> None:
        super().__init__(model, embed_model, **options)
        self.embed_model = embed_model

    def sparse_doc_fn(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Document codes of ``texts``."""
        return _split(pairs(self.codec.embed_documents(texts)))

    def sparse_query_fn(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Search queries of ``texts``."""
        return _split(pairs(self.codec.embed_queries(texts)))


def milvus_sparse_embedding_function(model: Any, embed_model: Any, *, k_query: int | None = None,
                                     device: str | None = None, query_k: int | None = None) -> Any:
    """A ``BaseSparseEmbeddingFunction`` of ``llama_index.vector_stores.milvus`` over CSR codes.

    Pass it as ``MilvusVectorStore(..., enable_sparse=True, sparse_embedding_function=fn,
    sparse_embedding_field="csr")`` on a collection migrated by csr-vdb.

    Raises:
        MissingExtraError: llama-index-vector-stores-milvus is not installed.
    """
    utils = require(
        "llama_index.vector_stores.milvus.utils", "llama-index-milvus", "milvus_sparse_embedding_function",
        "llama-index-vector-stores-milvus",
    )
    fns = CSRSparseFunctions(model, embed_model, k_query=k_query_arg(k_query, query_k), device=device)

    class CSRMilvusSparseEmbeddingFunction(utils.BaseSparseEmbeddingFunction):
        """CSR codes as ``{index: value}`` dicts, queries and documents."""

        codec = fns.codec

        def encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
            return self.codec.embed_queries(queries).to_milvus()

        def encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
            return self.codec.embed_documents(documents).to_milvus()

    return CSRMilvusSparseEmbeddingFunction()
