"""CSR sparse search from RAG frameworks: LangChain, LlamaIndex and Haystack.

One module per framework, each importing its framework only when it is imported itself, so that
``import csr_vdb`` never needs them; a missing framework raises `MissingExtraError` naming the
extra to install:

- `csr_vdb.integrations.langchain` (``pip install 'csr-vdb[langchain]'``): `CSRSparseEmbeddings`
  for ``langchain_qdrant.QdrantVectorStore``, `CSRMilvusSparseEmbedding` for
  ``langchain_milvus.Milvus``, `CSRRetriever` (exact re-scoring through `csr_vdb.retriever.Retriever`).
- `csr_vdb.integrations.llama_index` (``pip install 'csr-vdb[llama-index]'``): sparse document and
  query functions for LlamaIndex's ``QdrantVectorStore``, a sparse embedding function for its
  Milvus store.
- `csr_vdb.integrations.haystack` (``pip install 'csr-vdb[haystack]'``): sparse text and document
  embedders, and a Qdrant document store that reads the sparse field ``csr``.

Every adapter turns texts into CSR codes the same way (`CSRCodec`): the dense embedding the
collection was made with, then the trained encoder (documents: ``encode``; queries:
``encode_queries``). The docs (``docs/integrations.md``) show the few lines an application changes.
"""

from csr_vdb.integrations._base import CSRCodec, MissingExtraError

__all__ = ["CSRCodec", "MissingExtraError"]
