"""One error hierarchy for the whole project; each class carries the CLI exit code.

Hierarchy::

    CSRVDBError            (exit 1)  base of everything csr-vdb raises on purpose
    ├── ConfigError        (exit 2)  bad flags, config file, plan or model settings
    ├── DataError          (exit 3)  NaN/inf, all-zero rows, wrong dimension, empty input
    ├── ModelError         (exit 4)  missing, corrupt, truncated or mismatched model files
    ├── StoreError         (exit 5)  database unreachable, missing collection, schema problems
    │   └── CollectionNotFoundError (exit 6)
    ├── MigrationError     (exit 7)  journal of another plan, resume refused, cutover refused
    └── VerificationError  (exit 8)  verify found a mismatch
"""

from __future__ import annotations

from collections.abc import Sequence


class CSRVDBError(Exception):
    """Base class of every error csr-vdb raises on purpose."""

    exit_code: int = 1


class ConfigError(CSRVDBError):
    """Invalid configuration: flags, config file, plan or model settings."""

    exit_code = 2


class DataError(CSRVDBError):
    """Invalid vectors: NaN/inf, all-zero rows, wrong dimension, empty input."""

    exit_code = 3

    def __init__(self, message: str, rows: Sequence[object] | None = None) -> None:
        super().__init__(message)
        self.rows = list(rows) if rows is not None else []


class ModelError(CSRVDBError):
    """A model folder is missing, corrupt, truncated or does not fit the data."""

    exit_code = 4


class StoreError(CSRVDBError):
    """A database operation failed (unreachable server, bad schema, rejected write)."""

    exit_code = 5


class CollectionNotFoundError(StoreError):
    """The named collection (or alias) does not exist."""

    exit_code = 6


class MigrationError(CSRVDBError):
    """A migration cannot proceed (journal of another plan, cutover refused, ...)."""

    exit_code = 7


class VerificationError(CSRVDBError):
    """Verification of a migrated collection found a mismatch."""

    exit_code = 8


def describe_rows(rows: Sequence[object], limit: int = 5) -> str:
    """Format offending row ids/positions for a one-line message: ``3, 17, 42 (+12 more)``."""
    shown = ", ".join(str(r) for r in list(rows)[:limit])
    extra = len(rows) - limit
    return f"{shown} (+{extra} more)" if extra > 0 else shown
