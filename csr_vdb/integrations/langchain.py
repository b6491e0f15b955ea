"""LangChain: CSR sparse embeddings for its Qdrant and Milvus vector stores, and a re-scoring retriever.

``pip install 'csr-vdb[langchain]'``. Names are loaded on first use, each importing only the
LangChain package it needs (`MissingExtraError` when that package is absent):

- `CSRSparseEmbeddings`: ``langchain_qdrant.SparseEmbeddings`` for
  ``QdrantVectorStore(..., retrieval_mode=RetrievalMode.SPARSE or HYBRID, sparse_vector_name="csr")``.
- `CSRMilvusSparseEmbedding`: ``langchain_milvus`` ``BaseSparseEmbedding`` for
  ``Milvus(embedding_function=..., vector_field="csr", search_params=MILVUS_SPARSE_SEARCH_PARAMS)``,
  alone or beside the dense embedding and field.
- `CSRRetriever`: a ``BaseRetriever`` over `csr_vdb.retriever.Retriever`: the database's sparse
  candidates re-ranked exactly (the vector stores' own search stops at the database's ranking).
- `MILVUS_SPARSE_SEARCH_PARAMS`: sparse search parameters that Milvus Lite and servers accept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from csr_vdb.integrations._base import lazy_getattr

_EXPORTS = {
    "CSRSparseEmbeddings": "csr_vdb.integrations._langchain_qdrant",
    "CSRMilvusSparseEmbedding": "csr_vdb.integrations._langchain_milvus",
    "MILVUS_SPARSE_SEARCH_PARAMS": "csr_vdb.integrations._langchain_milvus",
    "CSRRetriever": "csr_vdb.integrations._langchain_retriever",
    "document_from_payload": "csr_vdb.integrations._langchain_retriever",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers see the real symbols
    from csr_vdb.integrations._langchain_milvus import (  # noqa: F401
        MILVUS_SPARSE_SEARCH_PARAMS,
        CSRMilvusSparseEmbedding,
    )
    from csr_vdb.integrations._langchain_qdrant import CSRSparseEmbeddings  # noqa: F401
    from csr_vdb.integrations._langchain_retriever import CSRRetriever, document_from_payload  # noqa: F401
