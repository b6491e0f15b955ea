"""Haystack: CSR sparse text and document embedders, and a Qdrant document store for migrated collections.

``pip install 'csr-vdb[haystack]'``. The embedders produce Haystack ``SparseEmbedding``s:

- `CSRSparseTextEmbedder`: a query's search code, for qdrant-haystack's
  ``QdrantSparseEmbeddingRetriever`` / ``QdrantHybridRetriever`` and milvus-haystack's
  ``MilvusSparseEmbeddingRetriever`` / ``MilvusHybridRetriever``.
- `CSRSparseDocumentEmbedder`: documents' codes (what ``csr-vdb migrate`` stored), so that new
  documents written after the migration are found by sparse search.
- `CSRQdrantDocumentStore` (needs qdrant-haystack): qdrant-haystack's store keeps its sparse vectors
  under a fixed name (``text-sparse``); this one searches and writes the sparse field ``csr`` of a
  migrated collection, and reads and writes the dense field as the source had it.

milvus-haystack needs no store of its own: ``MilvusDocumentStore(collection_name="docs_csr",
sparse_vector_field="csr", ...)`` reads a migrated collection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from csr_vdb.errors import ConfigError
from csr_vdb.integrations._base import CSRCodec, k_query_arg, lazy_getattr, pairs, require

_hs = require("haystack", "haystack", "csr_vdb.integrations.haystack", "haystack-ai")
_sparse = require("haystack.dataclasses.sparse_embedding", "haystack", "csr_vdb.integrations.haystack", "haystack-ai")
component = _hs.component
Document = _hs.Document
SparseEmbedding = _sparse.SparseEmbedding

_LAZY = {"CSRQdrantDocumentStore": "csr_vdb.integrations._haystack_qdrant"}

__all__ = ["CSRSparseTextEmbedder", "CSRSparseDocumentEmbedder", "CSRQdrantDocumentStore"]
__getattr__ = lazy_getattr(__name__, _LAZY, globals())


if TYPE_CHECKING:
    from csr_vdb.integrations._haystack_qdrant import CSRQdrantDocumentStore  # noqa: F401


def _warm(embedder: Any) -> None:
    warm_up = getattr(embedder, "warm_up", None)
    if callable(warm_up):
        warm_up()


def _sparse_embeddings(codes: Any) -> list[Any]:
    return [SparseEmbedding(indices=i, values=v) for i, v in pairs(codes)]


class _CodecHolder:
    """Loads the encoder on `warm_up` (or first use), as Haystack components load models."""

    def __init__(self, model: Any, k_query: int | None, device: str | None) -> None:
        self.model = model
        self.k_query = k_query
        self.device = device
        self._codec: CSRCodec | None = None

    def codec(self, embed_query: Callable[[str], Any] | None = None) -> CSRCodec:
        if self._codec is None:
            self._codec = CSRCodec(self.model, embed_query=embed_query, k_query=self.k_query, device=self.device)
        return self._codec


@component
class CSRSparseTextEmbedder:
    """Embeds a query text into the CSR search query of a migrated collection.

    The dense query embedding comes from the pipeline (connect a dense text embedder's
    ``embedding`` output to this component's ``embedding`` input), or from ``text_embedder``.

    Args:
        model: the model folder of ``csr-vdb train`` (or a loaded `CSREncoder`).
        text_embedder: the dense text embedder the collection was made with: a Haystack component
            whose ``run(text=...)`` returns ``{"embedding": [...]}``, or a callable ``text -> vector``.
            Optional when the dense embedding is passed to `run`.
        k_query: non-zeros of the search query (None: the full width, `CSRConfig.k_query_alone`).
        device: torch device of the encoder (None: CUDA when present).
        query_k: deprecated spelling of ``k_query``.
    """

    def __init__(
        self, model: Any, text_embedder: Any = None, *, k_query: int | None = None, device: str | None = None,
        query_k: int | None = None,
    ) -> None:
        self.text_embedder = text_embedder
        self._holder = _CodecHolder(model, k_query_arg(k_query, query_k), device)

    def warm_up(self) -> None:
        """Load the encoder and warm up the dense embedder."""
        _warm(self.text_embedder)
        self._codec()

    def _embed_text(self, text: str) -> Any:
        if self.text_embedder is None:
            raise ConfigError("CSRSparseTextEmbedder got no dense embedding: pass `embedding` or a text_embedder")
        if hasattr(self.text_embedder, "run"):
            return self.text_embedder.run(text=text)["embedding"]
        return self.text_embedder(text)

    def _codec(self) -> CSRCodec:
        return self._holder.codec(self._embed_text)

    @component.output_types(sparse_embedding=SparseEmbedding)
    def run(self, text: str, embedding: list[float] | None = None) -> dict[str, Any]:
        """The search query of ``text``.

        Args:
            text: the query.
            embedding: its dense embedding, when a dense embedder ran before this one.

        Returns:
            ``{"sparse_embedding": SparseEmbedding}``.
        """
        codec = self._codec()
        if embedding is not None:
            codes = codec.query_codes(np.asarray(embedding, np.float32))
        else:
            codes = codec.embed_query(text)
        return {"sparse_embedding": _sparse_embeddings(codes)[0]}


@component
class CSRSparseDocumentEmbedder:
    """Adds CSR codes (``sparse_embedding``) to documents, as ``csr-vdb migrate`` computed them.

    A document's dense ``embedding`` is used when present (put a dense document embedder first),
    else ``document_embedder`` computes it (and it is kept on the returned document).

    Args:
        model: the model folder of ``csr-vdb train`` (or a loaded `CSREncoder`).
        document_embedder: the dense document embedder the collection was made with: a Haystack
            component whose ``run(documents=...)`` returns ``{"documents": [...]}`` with embeddings,
            or a callable ``texts -> vectors``. Optional when documents arrive embedded.
        device: torch device of the encoder (None: CUDA when present).
    """

    def __init__(self, model: Any, document_embedder: Any = None, *, device: str | None = None) -> None:
        self.document_embedder = document_embedder
        self._holder = _CodecHolder(model, None, device)

    def warm_up(self) -> None:
        """Load the encoder and warm up the dense embedder."""
        _warm(self.document_embedder)
        self._holder.codec()

    def _dense(self, documents: list[Any]) -> list[Any]:
        if self.document_embedder is None:
            raise ConfigError(
                f"{len(documents)} documents have no dense embedding: run a dense document embedder "
                "first or pass document_embedder"
            )
        if hasattr(self.document_embedder, "run"):
            return [d.embedding for d in self.document_embedder.run(documents=documents)["documents"]]
        return list(self.document_embedder([d.content or "" for d in documents]))

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """New documents with ``sparse_embedding`` set (and ``embedding`` when computed here).

        Raises:
            ConfigError: a document has no embedding and no ``document_embedder`` was given.
        """
        codec = self._holder.codec()
        if not documents:
            return {"documents": []}
        dense = [d.embedding for d in documents]
        todo = [n for n, v in enumerate(dense) if v is None]
        if todo:
            for n, v in zip(todo, self._dense([documents[n] for n in todo])):
                dense[n] = [float(f) for f in np.asarray(v, np.float32)]
        codes = codec.document_codes(np.asarray(dense, np.float32))
        out = [
            replace(d, embedding=v, sparse_embedding=s) for d, v, s in zip(documents, dense, _sparse_embeddings(codes))
        ]
        return {"documents": out}
