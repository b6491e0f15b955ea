"""`CSRSparseEmbeddings`: CSR codes as ``langchain_qdrant`` sparse embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from csr_vdb.integrations._base import EmbeddingsCodec, pairs, require

_lq = require("langchain_qdrant", "langchain", "CSRSparseEmbeddings", "langchain-qdrant")


class CSRSparseEmbeddings(EmbeddingsCodec, _lq.SparseEmbeddings):
    """Sparse embeddings of a collection migrated by csr-vdb, for LangChain's ``QdrantVectorStore``.

    Documents get the codes ``csr-vdb migrate`` stored (so ``add_texts`` writes what the migration
    would have), queries the non-negative search query. Use with the target collection::

        sparse = CSRSparseEmbeddings("models/docs", embeddings=dense)
        store = QdrantVectorStore(client, "docs_csr", embedding=dense, sparse_embedding=sparse,
                                  retrieval_mode=RetrievalMode.HYBRID, sparse_vector_name="csr")

    Args: ``model`` (the model folder of ``csr-vdb train``), ``embeddings`` (the dense LangChain
    ``Embeddings`` of the collection), ``k_query`` (``query_k``, deprecated), ``device``: see `EmbeddingsCodec`.
    """

    def embed_documents(self, texts: list[str]) -> list[Any]:
        """Document codes, one ``SparseVector`` per text."""
        return _vectors(pairs(self.codec.embed_documents(texts)))

    def embed_query(self, text: str) -> Any:
        """The search query of ``text`` as a ``SparseVector``."""
        return _vectors(pairs(self.codec.embed_query(text)))[0]


def _vectors(rows: Sequence[tuple[list[int], list[float]]]) -> list[Any]:
    return [_lq.SparseVector(indices=i, values=v) for i, v in rows]
