"""`CSRRetriever`: a LangChain retriever over `csr_vdb.retriever.Retriever` (search + exact re-score)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from csr_vdb.integrations._base import require

_retrievers = require("langchain_core.retrievers", "langchain", "CSRRetriever", "langchain-core")
_documents = require("langchain_core.documents", "langchain", "CSRRetriever", "langchain-core")

#: payload keys of LangChain's Qdrant store (``page_content`` + a ``metadata`` object)
QDRANT_CONTENT_KEY, QDRANT_METADATA_KEY = "page_content", "metadata"
#: text field of LangChain's Milvus store (metadata are the other fields)
MILVUS_TEXT_FIELD = "text"


def document_from_payload(
    payload: dict[str, Any] | None,
    *,
    content_key: str | None = None,
    metadata_key: str | None = None,
) -> Any:
    """A LangChain ``Document`` from a stored payload, in the layout LangChain's stores write.

    Args:
        payload: the row's payload (Qdrant) or its non-vector fields (Milvus).
        content_key: the field holding the text; None: ``page_content`` when present (Qdrant
            layout), else ``text`` (Milvus layout).
        metadata_key: the field holding the metadata object; None: ``metadata`` in the Qdrant
            layout, else every field but the text.
    """
    payload = dict(payload or {})
    if content_key is None:
        content_key = QDRANT_CONTENT_KEY if QDRANT_CONTENT_KEY in payload else MILVUS_TEXT_FIELD
        if metadata_key is None and content_key == QDRANT_CONTENT_KEY:
            metadata_key = QDRANT_METADATA_KEY
    content = payload.pop(content_key, None)
    metadata = dict(payload.get(metadata_key) or {}) if metadata_key is not None else payload
    return _documents.Document(page_content="" if content is None else str(content), metadata=metadata)


class CSRRetriever(_retrievers.BaseRetriever):
    """Retrieve from a migrated collection by sparse search plus exact re-scoring of the candidates.

    A vector store's sparse search returns the database's ranking; this retriever asks the database
    for ``candidates`` hits and re-ranks them exactly (`csr_vdb.retriever.Retriever.search`): by
    the dense vectors when the target kept them, else from the stored codes with the signed query.
    Each ``Document`` carries the stored text and metadata, plus ``_id`` and ``_score``.

    Build it with `from_collection` (opens the store; `close` releases it) or from an open
    `csr_vdb.retriever.Retriever`::

        retriever = CSRRetriever.from_collection("qdrant", "qdrant_data", "docs_csr", "models/docs",
                                                 embeddings=dense, k=4)
        docs = retriever.invoke("How do I compress a file?")

    Attributes:
        retriever: the `csr_vdb.retriever.Retriever` searched.
        embeddings: the dense LangChain ``Embeddings`` the collection was made with (queries are
            embedded with its ``embed_query``); None: the retriever's own text model.
        k: documents returned.
        candidates: sparse candidates re-ranked per query (at least k are); None: the model's
            ``search_candidates`` (100 when it has none).
        rerank: ``True`` (dense when kept, else codes), ``"dense"``, ``"codes"`` or ``False``.
        content_key / metadata_key: payload layout (see `document_from_payload`).
    """

    retriever: Any
    embeddings: Any = None
    k: int = 4
    candidates: int | None = None
    rerank: bool | str = True
    content_key: str | None = None
    metadata_key: str | None = None

    @classmethod
    def from_collection(
        cls,
        store: str,
        uri: str,
        collection_name: str,
        model: Any,
        embeddings: Any = None,
        *,
        device: str | None = None,
        **kwargs: Any,
    ) -> CSRRetriever:
        """Open ``store`` at ``uri`` (`csr_vdb.adapters.open_store`) and search ``collection_name``.

        Args:
            store: "milvus", "qdrant" or "qdrant-edge".
            uri: the database (a Milvus Lite file, a qdrant-client local directory, a server URL).
            collection_name: the migrated collection or its alias.
            model: the model folder of ``csr-vdb train`` (or a loaded `CSREncoder`).
            embeddings: the dense LangChain ``Embeddings`` of the collection.
            device: torch device of the encoder and re-ranker.
            **kwargs: fields of the retriever (``k``, ``candidates``, ``rerank``, ...).

        Raises:
            StoreError, CollectionNotFoundError: the store or collection cannot be used.
            ModelError: the model folder is missing or corrupt.
        """
        from csr_vdb.adapters import open_store
        from csr_vdb.model import CSREncoder
        from csr_vdb.retriever import Retriever

        handle = open_store(store, uri)
        try:
            encoder = CSREncoder.load(model, device=device) if isinstance(model, (str, os.PathLike)) else model
            inner = Retriever(handle, collection_name, encoder, device=device)
        except BaseException:
            handle.close()
            raise
        return cls(retriever=inner, embeddings=embeddings, **kwargs)

    def close(self) -> None:
        """Close the retriever's store (releases an embedded database's files)."""
        self.retriever.store.close()

    def _get_relevant_documents(self, query: str, *, run_manager: Any = None) -> list[Any]:
        q: Any = query
        if self.embeddings is not None:
            q = np.asarray([self.embeddings.embed_query(query)], dtype=np.float32)
        candidates = None if self.candidates is None else max(self.candidates, self.k)
        hits = self.retriever.search(q, top_k=self.k, candidates=candidates, rerank=self.rerank)[0]
        docs = []
        for hit in hits:
            doc = document_from_payload(hit.payload, content_key=self.content_key, metadata_key=self.metadata_key)
            doc.metadata["_id"] = hit.id
            doc.metadata["_score"] = float(hit.score)
            docs.append(doc)
        return docs
