"""`CSRMilvusSparseEmbedding`: CSR codes as a ``langchain_milvus`` sparse embedding."""

from __future__ import annotations

import copy
from typing import Any

from csr_vdb.integrations._base import EmbeddingsCodec, dicts, require

_sparse = require("langchain_milvus.utils.sparse", "langchain", "CSRMilvusSparseEmbedding", "langchain-milvus")

MILVUS_SPARSE_SEARCH_PARAMS: dict[str, Any] = {"metric_type": "IP", "params": {}}
"""Search parameters for the sparse field ``csr``: inner product, nothing dropped. LangChain's
default for a SPARSE_INVERTED_INDEX carries ``drop_ratio_build: 0.2``, which Milvus Lite refuses
("only drop_ratio_build=0 is supported") and which is an index-build setting anyway."""


class CSRMilvusSparseEmbedding(EmbeddingsCodec, _sparse.BaseSparseEmbedding):
    """Sparse embedding of a collection migrated by csr-vdb, for ``langchain_milvus.Milvus``.

    Alone (search only: the target's dense field is required on insert) or beside the dense
    embedding (search and ``add_texts``)::

        sparse = CSRMilvusSparseEmbedding("models/docs", embeddings=dense)
        store = Milvus(embedding_function=sparse, collection_name="docs_csr", vector_field="csr",
                       search_params=sparse.search_params, connection_args={"uri": "docs.db"})
        store = Milvus(embedding_function=[dense, sparse], vector_field=["vector", "csr"],
                       search_params=[{"metric_type": "COSINE"}, sparse.search_params], ...)

    Args: as `CSRSparseEmbeddings` (`EmbeddingsCodec`).
    """

    @property
    def search_params(self) -> dict[str, Any]:
        """A fresh copy of `MILVUS_SPARSE_SEARCH_PARAMS` for the store's ``search_params``."""
        return copy.deepcopy(MILVUS_SPARSE_SEARCH_PARAMS)

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Document codes, one ``{index: value}`` dict per text."""
        return dicts(self.codec.embed_documents(texts))

    def embed_query(self, query: str) -> dict[int, float]:
        """The search query of ``query`` as ``{index: value}``."""
        return dicts(self.codec.embed_query(query))[0]
