"""`SparseWriter`: an application's writes to a migrated collection, encoded with the collection's model.

While a collection is live, new and edited documents must reach the sparse collection as a
migration would write them: validated the same way, encoded by the same model, ids and payloads
intact. With ``write_source`` the dense source is written too (first), so that an application can
dual-write during the transition; `csr-vdb sync` then finds those rows already applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from csr_vdb.config import CSRConfig
from csr_vdb.errors import ConfigError, DataError, StoreError
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import SPARSE_FIELD, Id, VectorStore, check_ids, check_payloads
from csr_vdb.validation import check_dense

Embed = Callable[[Sequence[str]], np.ndarray]


class DocumentEncoder(Protocol):
    """What `SparseWriter` needs of an encoder (a `csr_vdb.model.CSREncoder`)."""

    config: CSRConfig

    def encode(self, x: np.ndarray, *, validated: bool = False) -> SparseVectors: ...


class SparseWriter:
    """Add, update and delete documents in a sparse (migrated) collection, encoding them on the way.

    Args:
        store: an open `VectorStore`.
        collection_name: the sparse collection (or the alias pointing at it).
        encoder: the collection's encoder (the model its migration used).
        source: the dense source collection, written too with ``write_source=True``.
        embed: texts -> float32 ``[n, input_dim]`` for text documents (e.g. `Retriever.embed` or a
            `csr_vdb.text.TextEmbedder`); None accepts vectors only.

    Attributes:
        info: the collection's `csr_vdb.store.CollectionInfo`.
        has_dense: the collection keeps dense vectors beside the codes (written with each document).

    Raises:
        CollectionNotFoundError: the collection or the source does not exist.
        StoreError: the collection has no sparse field ``csr``.
        ConfigError: the encoder's ``input_dim`` differs from the collection's or the source's dimension.

    `csr_vdb.retriever.Retriever` is a `SparseWriter` that also searches the collection.
    """

    def __init__(
        self,
        store: VectorStore,
        collection_name: str,
        encoder: DocumentEncoder,
        *,
        source: str | None = None,
        embed: Embed | None = None,
    ) -> None:
        self.store, self.collection_name, self.encoder, self.source, self._embed = (
            store, collection_name, encoder, source, embed)
        self.info = store.describe(collection_name)
        if self.info.sparse_field is None:
            raise StoreError(f"collection '{collection_name}' in {store.uri} has no sparse field '{SPARSE_FIELD}': "
                             "migrate it first (csr-vdb migrate --to sparse) and use the target")
        dim = encoder.config.input_dim
        # the unnamed default vector of a Qdrant collection is the field "" (falsy, still a dense field)
        self.has_dense = self.info.vector_field is not None and self.info.dimension > 0
        for name, info in ((collection_name, self.info), (source, store.describe(source) if source else None)):
            if info is not None and info.dimension and info.dimension != dim:
                raise ConfigError(f"encoder input_dim {dim} != dimension {info.dimension} of collection '{name}'")

    @property
    def keeps_dense(self) -> bool:
        """Deprecated name of ``has_dense``: the collection keeps dense vectors beside the codes."""
        return self.has_dense

    def _vectors(self, docs: np.ndarray | str | Sequence[str], ids: list[Id]) -> np.ndarray:
        if isinstance(docs, np.ndarray):
            x = docs
        else:
            texts = [docs] if isinstance(docs, str) else list(docs)
            if self._embed is None:
                raise ConfigError("text documents need a text model (SparseWriter(..., embed=...))")
            x = np.asarray(self._embed(texts), dtype=np.float32)
        return check_dense(x, dim=self.encoder.config.input_dim, ids=ids if len(ids) == len(x) else None,
                           what="document vectors")

    def _need_source(self) -> str:
        if self.source is None:
            raise ConfigError("write_source needs the dense source collection (SparseWriter(..., source=...))")
        return self.source

    def add(
        self,
        docs: np.ndarray | str | Sequence[str],
        ids: Sequence[Id],
        payloads: Sequence[dict[str, Any]] | None = None,
        write_source: bool = False,
    ) -> int:
        """Encode documents and upsert them (new ids are inserted, existing ones replaced).

        Args:
            docs: dense vectors ``[n, input_dim]``, or texts (through ``embed``).
            ids: one id per document, of the collection's id type.
            payloads: one dict per document (None: empty payloads).
            write_source: write the dense source first (dual-write during the transition).

        Returns:
            The number of documents written.

        Raises:
            DataError: a count mismatch, repeated or mistyped ids, NaN/inf/all-zero or
                wrong-dimension vectors, payloads the store cannot hold: nothing is written.
            ConfigError: texts without ``embed``, ``write_source`` without ``source``.
            StoreError: the store failed (with ``write_source``, the source may hold the rows
                already: `csr-vdb sync` completes the target).
        """
        ids = list(ids)
        x = self._vectors(docs, ids)  # each row validated here, once: the encoder and the store are told
        ids = check_ids(ids, self.info.id_type, len(x))
        rows = check_payloads(payloads, len(x))
        codes = self.encoder.encode(x, validated=True)
        if not isinstance(codes, SparseVectors) or len(codes) != len(ids):
            raise DataError(f"encoder returned {len(codes) if isinstance(codes, SparseVectors) else codes!r} "
                            f"sparse vectors for {len(ids)} documents")
        if write_source:
            # the source is written first: the codes are checked before it, not by the target's write only
            codes.validate(ids)
            self.store.insert_dense(self._need_source(), ids, x, rows, validated=True)
        self.store.upsert(self.collection_name, ids, codes, rows, dense=x if self.has_dense else None,
                          validated=True)
        return len(ids)

    def delete(self, ids: Sequence[Id], write_source: bool = False) -> None:
        """Delete documents by id (absent ids are ignored); with ``write_source`` from the source first."""
        ids = list(ids)
        if write_source:
            self.store.delete(self._need_source(), ids)
        self.store.delete(self.collection_name, ids)
