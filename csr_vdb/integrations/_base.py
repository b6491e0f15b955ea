"""What the framework adapters share: texts -> CSR codes, and the error for a missing framework."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from csr_vdb.errors import ConfigError
from csr_vdb.sparse import SparseVectors


class MissingExtraError(ConfigError, ImportError):
    """A framework integration was used without its framework installed (names the extra)."""


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise `MissingExtraError` naming the pip extra that installs it.

    Args:
        module: dotted module name, e.g. ``"langchain_qdrant"``.
        extra: the csr-vdb extra that brings it, e.g. ``"langchain"``.
        what: the feature that needs it, for the message.
        package: the distribution to name (default: the module's top-level name).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module.split(".")[0]
        raise MissingExtraError(f"{what} needs the '{name}' package: pip install 'csr-vdb[{extra}]'") from exc


def lazy_getattr(module: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports ``exports[name]`` on first access, so that a
    framework is imported only when one of its adapters is used."""

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__


def _as_rows(vectors: Any, what: str) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"{what} must be a non-empty [n, dim] array, got shape {x.shape}")
    return x


class CSRCodec:
    """A trained CSR encoder beside the dense embedding its collection was made with.

    Frameworks hand adapters texts; the codes of a migrated collection were computed from the
    dense vectors of those texts, so the same dense embedding must come first. Documents get
    ``encoder.encode`` (the codes `csr-vdb migrate` wrote), queries ``encoder.encode_queries``
    (the non-negative search query that a database's sparse index takes).

    Args:
        model: a model folder written by ``csr-vdb train`` (or `CSREncoder.save`), or a loaded
            `CSREncoder`.
        embed_documents: ``texts -> [n, dim]`` dense vectors of documents (for `embed_documents`).
        embed_query: ``text -> [dim]`` dense vector of a query, which may differ from a document's
            (for `embed_query`). Without them the codec encodes vectors only.
        query_k: non-zeros of a search query; None = the width for a search whose ranking is
            used as it is (`CSRConfig.k_query_alone`: 512 for decoder-projection queries at k=32,
            not the model's narrower ``k_query``, which assumes an exact re-score after). Fewer
            walk fewer posting lists at a cost in quality.
        device: torch device of the encoder ("cpu", "cuda"; None = CUDA when present).

    Raises:
        ModelError: the model folder is missing or corrupt.
        ConfigError: ``query_k`` is not positive.
    """

    def __init__(
        self,
        model: Any,
        embed_documents: Callable[[list[str]], Any] | None = None,
        embed_query: Callable[[str], Any] | None = None,
        *,
        query_k: int | None = None,
        device: str | None = None,
    ) -> None:
        if query_k is not None and query_k < 1:
            raise ConfigError(f"query_k must be >= 1, got {query_k}")
        if isinstance(model, (str, os.PathLike)):
            from csr_vdb.model import CSREncoder

            model = CSREncoder.load(model, device=device)
        self.encoder = model
        self.query_k = query_k
        self._embed_documents = embed_documents
        self._embed_query = embed_query

    @property
    def dim(self) -> int:
        """Dimension of the dense embeddings the encoder takes."""
        return int(self.encoder.config.input_dim)

    # ------------------------------------------------------------------ documents
    def document_codes(self, vectors: Any) -> SparseVectors:
        """Codes of documents from their dense vectors ``[n, dim]``: what the migration stored."""
        return self.encoder.encode(_as_rows(vectors, "document vectors"))

    def embed_documents(self, texts: Sequence[str]) -> SparseVectors:
        """Codes of documents from their texts (dense embedding, then `document_codes`)."""
        texts = list(texts)
        if not texts:
            return SparseVectors.empty(self.encoder.config.code_dim)
        return self.document_codes(self._need(self._embed_documents, "embed_documents")(texts))

    # ------------------------------------------------------------------ queries
    def query_codes(self, vectors: Any) -> SparseVectors:
        """Search queries from dense query vectors ``[q, dim]``: non-negative, ``query_k`` wide."""
        k = self.query_k if self.query_k is not None else self.encoder.config.k_query_alone()
        return self.encoder.encode_queries(_as_rows(vectors, "query vectors"), k=k)

    def embed_query(self, text: str) -> SparseVectors:
        """The search query of one text (one row)."""
        return self.query_codes(self._need(self._embed_query, "embed_query")(text))

    def embed_queries(self, texts: Sequence[str]) -> SparseVectors:
        """Search queries of several texts, each embedded as a query."""
        texts = list(texts)
        if not texts:
            return SparseVectors.empty(self.encoder.config.code_dim)
        embed = self._need(self._embed_query, "embed_query")
        return self.query_codes(np.stack([_as_rows(embed(t), "query vector")[0] for t in texts]))

    @staticmethod
    def _need(fn: Callable[..., Any] | None, name: str) -> Callable[..., Any]:
        if fn is None:
            raise ConfigError(f"this CSRCodec was built without {name}: it encodes dense vectors only")
        return fn


class EmbeddingsCodec:
    """Mixin of the LangChain adapters: a `CSRCodec` over a LangChain ``Embeddings``.

    Args:
        model: the model folder of ``csr-vdb train`` (or a loaded `CSREncoder`).
        embeddings: the dense embeddings the collection was made with (``embed_documents``,
            ``embed_query``).
        query_k: non-zeros of a search query (None: the encoder's).
        device: torch device of the encoder (None: CUDA when present).
    """

    def __init__(self, model: Any, embeddings: Any, *, query_k: int | None = None, device: str | None = None) -> None:
        self.embeddings = embeddings
        self.codec = CSRCodec(model, embeddings.embed_documents, embeddings.embed_query, query_k=query_k, device=device)


def pairs(codes: SparseVectors) -> list[tuple[list[int], list[float]]]:
    """``(indices, values)`` per row, sorted by index, zeros dropped (Qdrant's sparse format)."""
    return codes.to_qdrant()


def dicts(codes: SparseVectors) -> list[dict[int, float]]:
    """``{index: value}`` per row, zeros dropped (Milvus' sparse format)."""
    return codes.to_milvus()
