"""csr-vdb: Contrastive Sparse Representation (CSR) codes for vector databases.

Public names are imported lazily (PEP 562), so ``import csr_vdb`` loads neither torch nor a
database client nor sentence-transformers until one of them is used. Database access lives in
`csr_vdb.adapters` (``open_store``), migrations in `csr_vdb.migrations`: the core never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CSRVDBError": "csr_vdb.errors",
    "ConfigError": "csr_vdb.errors",
    "DataError": "csr_vdb.errors",
    "ModelError": "csr_vdb.errors",
    "StoreError": "csr_vdb.errors",
    "CollectionNotFoundError": "csr_vdb.errors",
    "MigrationError": "csr_vdb.errors",
    "VerificationError": "csr_vdb.errors",
    "SparseVectors": "csr_vdb.sparse",
    "CSRConfig": "csr_vdb.config",
    "TrainConfig": "csr_vdb.config",
    "CSREncoder": "csr_vdb.model",
    "train_encoder": "csr_vdb.training",
    "ArraySource": "csr_vdb.sources",
    "NpySource": "csr_vdb.sources",
    "IteratorSource": "csr_vdb.sources",
    "SparseIndex": "csr_vdb.index",
    "Reranker": "csr_vdb.rerank",
    "Retriever": "csr_vdb.retriever",
    "TextEmbedder": "csr_vdb.text",
    "load_text_model": "csr_vdb.text",
    "evaluate_collection": "csr_vdb.collection_eval",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'csr_vdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers see the real symbols
    from csr_vdb.collection_eval import evaluate_collection
    from csr_vdb.config import CSRConfig, TrainConfig
    from csr_vdb.errors import (
        CollectionNotFoundError,
        ConfigError,
        CSRVDBError,
        DataError,
        MigrationError,
        ModelError,
        StoreError,
        VerificationError,
    )
    from csr_vdb.model import CSREncoder
    from csr_vdb.retriever import Retriever
    from csr_vdb.index import SparseIndex
    from csr_vdb.rerank import Reranker
    from csr_vdb.sparse import SparseVectors
    from csr_vdb.text import TextEmbedder, load_text_model
    from csr_vdb.sources import ArraySource, IteratorSource, NpySource
    from csr_vdb.training import train_encoder
