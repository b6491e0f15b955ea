"""The store contract, re-exported where adapters and older code import it from.

It lives in the core, `csr_vdb.store` (the protocol, the records that cross it, the id and
payload checks, the URI helpers); this module keeps ``csr_vdb.adapters.base`` imports working.
"""

from __future__ import annotations

from csr_vdb.store import (
    METRICS,
    SPARSE_FIELD,
    STORE_KINDS,
    Candidates,
    CollectionInfo,
    DensePage,
    Hit,
    Id,
    IdType,
    Metric,
    Record,
    VectorStore,
    check_ids,
    check_payloads,
    redact_uri,
    strip_credentials,
)

__all__ = [
    "METRICS",
    "SPARSE_FIELD",
    "STORE_KINDS",
    "Candidates",
    "CollectionInfo",
    "DensePage",
    "Hit",
    "Id",
    "IdType",
    "Metric",
    "Record",
    "VectorStore",
    "check_ids",
    "check_payloads",
    "redact_uri",
    "strip_credentials",
]
