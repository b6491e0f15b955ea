"""`MigrationPlan`: what one migration does, checked up front and saved as plan.json in its state folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csr_vdb.adapters.base import SPARSE_FIELD, VectorStore
from csr_vdb.errors import (
    CollectionNotFoundError,
    ConfigError,
    DataError,
    MigrationError,
    ModelError,
)
from csr_vdb.fileutil import atomic_write_json, model_checksum

log = logging.getLogger(__name__)

DEFAULT_STATE_BASE = Path(".csr-vdb")
"""Where state folders live unless the caller (the CLI's ``--state-dir``) says otherwise."""

PLAN_FILE = "plan.json"
JOURNAL_FILE = "journal.sqlite"
VERIFY_FILE = "verify.json"
LOCK_FILE = "run.lock"
CUTOVER_FILE = "cutover.json"

# The fields whose values define a migration: a journal written under one plan_id is never
# continued under another. Batch size and skip_invalid may change between runs (the cursor,
# not the batch number, says where to continue); the model checksum and the source schema are
# checked separately so that the refusal can say exactly what changed.
_DEFINING_FIELDS = (
    "store_kind",
    "uri",
    "source",
    "target",
    "vector_field",
    "keep_dense",
    "shard_index",
    "shard_count",
)


class SourceSchema(BaseModel):
    """The source collection's schema as captured when the plan was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(description="Dimension of the migrated dense vector field.", ge=1)
    metric: str = Field(description="Metric of that field (cosine, ip or l2).")
    id_type: Literal["int", "str"] = Field(description="Primary key type of the collection.")
    vector_field: str = Field(description="Name of the migrated dense vector field.")


class MigrationPlan(BaseModel):
    """One migration of a dense collection into a sparse (CSR) one.

    Make it with `MigrationPlan.create`, which checks the store before anything is written;
    `run_migration` saves it as ``plan.json`` in the plan's state folder.
    """

    model_config = ConfigDict(extra="forbid")

    store_kind: Literal["milvus", "qdrant", "qdrant-edge", "memory"] = Field(
        description="Which adapter opens the store."
    )
    uri: str = Field(description="Where the store lives (file, directory or URL); never holds a secret.")
    source: str = Field(description="Dense collection to read (never written).")
    target: str = Field(description="Sparse collection to write.")
    vector_field: str = Field(description="Dense vector field of the source that is encoded.")
    model_dir: str = Field(description="Folder of the saved CSR encoder (absolute path).")
    model_sha256: str = Field(description="csr_vdb.fileutil.model_checksum of model_dir.")
    batch_size: int = Field(1000, ge=1, description="Rows read, encoded and written per batch.")
    keep_dense: bool = Field(True, description="Copy the dense vectors into the target too.")
    shard_index: int = Field(0, ge=0, description="This worker's shard i of shard_count.")
    shard_count: int = Field(1, ge=1, description="Number of shards (workers) the source is split into.")
    skip_invalid: bool = Field(
        False, description="Skip (and record) rows with NaN/inf/all-zero vectors instead of stopping."
    )
    alias: str = Field(description="Alias that cutover points at the target and rollback at the source.")
    source_schema: SourceSchema = Field(description="Source schema captured at plan time.")
    plan_id: str = Field("", description="Stable hash of the plan's defining fields (computed).")
    created_at: str = Field("", description="When the plan was made (ISO 8601, UTC).")

    @model_validator(mode="after")
    def _check(self) -> MigrationPlan:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard {self.shard_index}/{self.shard_count}: index must be < count")
        if self.target == self.source:
            raise ValueError(f"target must differ from the source ('{self.source}')")
        if self.alias in (self.source, self.target):
            raise ValueError(f"alias '{self.alias}' must differ from source and target names")
        if self.source_schema.vector_field != self.vector_field:
            raise ValueError("source_schema.vector_field differs from vector_field")
        pid = self.compute_plan_id()
        if not self.plan_id:
            self.plan_id = pid
        elif self.plan_id != pid:
            raise ValueError(f"plan_id {self.plan_id} does not match the plan's fields ({pid})")
        if not self.created_at:
            self.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return self

    # ----------------------------------------------------------------- helpers
    def compute_plan_id(self) -> str:
        """sha256 (first 16 hex digits) over the defining fields, in a fixed order."""
        blob = json.dumps({k: getattr(self, k) for k in _DEFINING_FIELDS}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def shard(self) -> str:
        """The shard as ``"i/n"``."""
        return f"{self.shard_index}/{self.shard_count}"

    def for_shard(self, index: int) -> MigrationPlan:
        """The same plan for another shard of the same split."""
        data = self.model_dump()
        data.update(shard_index=index, plan_id="")
        return MigrationPlan(**data)

    def in_shard(self, ids: list) -> list[bool]:
        """Which ids belong to this plan's shard (crc32 of ``str(id)`` mod shard_count)."""
        if self.shard_count == 1:
            return [True] * len(ids)
        return [shard_of(i, self.shard_count) == self.shard_index for i in ids]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MigrationPlan:
        """Read a plan.json; raises `MigrationError` when it is missing or invalid."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as exc:
            raise MigrationError(f"no migration plan at {path}") from exc
        except (OSError, ValueError, ValidationError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MigrationError(f"invalid migration plan {path}: {msg}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan atomically as JSON."""
        atomic_write_json(path, self.model_dump())

    # ------------------------------------------------------------------ create
    @classmethod
    def create(
        cls,
        store: VectorStore,
        *,
        store_kind: str,
        uri: str,
        source: str,
        model_dir: str | os.PathLike[str],
        target: str | None = None,
        vector_field: str | None = None,
        batch_size: int = 1000,
        keep_dense: bool = True,
        shard: str = "0/1",
        skip_invalid: bool = False,
        alias: str | None = None,
        model_dim: int | None = None,
    ) -> MigrationPlan:
        """Check the store and build a plan; nothing is written anywhere.

        Args:
            store: the open store holding ``source``.
            store_kind: "milvus", "qdrant", "qdrant-edge" or "memory".
            uri: the store's location as given by the user (credentials in a URL are dropped).
            source: dense collection to migrate.
            model_dir: folder of the saved encoder (``model.safetensors`` + ``config.json``).
            target: sparse collection to write; default ``f"{source}_csr"``.
            vector_field: dense field to encode; default the source's first.
            batch_size: rows per batch.
            keep_dense: also copy dense vectors into the target.
            shard: ``"i/n"``: migrate only the ids whose crc32 hashes to i mod n.
            skip_invalid: skip and record invalid rows instead of stopping.
            alias: alias for cutover/rollback; default ``f"{source}_live"``.
            model_dim: the encoder's ``input_dim``, checked against the collection's dimension.

        Raises:
            ConfigError: bad shard/batch size/names, or an unknown vector field.
            CollectionNotFoundError: the source does not exist.
            DataError: the source is empty.
            ModelError: model files missing, or ``model_dim`` differs from the collection's.
            MigrationError: the target exists with another schema.
        """
        shard_index, shard_count = parse_shard(shard)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        target = target or f"{source}_csr"
        alias = alias or f"{source}_live"
        clean_uri = normalize_uri(uri)
        if target == source:
            raise ConfigError(f"target must differ from the source ('{source}')")
        if alias in (source, target):
            raise ConfigError(f"alias '{alias}' must differ from the source and target names")

        if not store.has_collection(source):
            raise CollectionNotFoundError(f"source collection '{source}' not found in {clean_uri}")
        info = store.describe(source)
        if info.count == 0:
            raise DataError(f"source collection '{source}' in {clean_uri} is empty: nothing to migrate")
        if not info.vector_fields and info.vector_field is None:
            raise ConfigError(f"source collection '{source}' in {clean_uri} has no dense vector field")
        fields = dict(info.vector_fields) or {info.vector_field: info.dimension}
        field = vector_field or info.vector_field or next(iter(fields))
        if field not in fields:
            raise ConfigError(
                f"collection '{source}' has no vector field '{field}' (fields: {', '.join(fields)})"
            )
        dim = int(fields[field])
        if model_dim is not None and int(model_dim) != dim:
            raise ModelError(
                f"model input dimension {model_dim} does not match collection '{source}' "
                f"field '{field}' dimension {dim}"
            )
        if alias in store.list_collections():
            raise ConfigError(f"alias '{alias}' is the name of an existing collection in {clean_uri}")

        mdir = Path(model_dir).resolve()
        try:
            sha = model_checksum(mdir)
        except OSError as exc:
            raise ModelError(f"cannot read model files in {mdir}: {exc.strerror or exc}") from exc

        schema = SourceSchema(dim=dim, metric=str(info.metric), id_type=info.id_type, vector_field=field)
        if store.has_collection(target):
            check_target_schema(store, target, schema, keep_dense, clean_uri)
        try:
            return cls(
                store_kind=store_kind,  # type: ignore[arg-type]
                uri=clean_uri,
                source=source,
                target=target,
                vector_field=field,
                model_dir=str(mdir),
                model_sha256=sha,
                batch_size=batch_size,
                keep_dense=keep_dense,
                shard_index=shard_index,
                shard_count=shard_count,
                skip_invalid=skip_invalid,
                alias=alias,
                source_schema=schema,
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid migration plan: {exc.errors()[0]['msg']}") from exc


def check_target_schema(
    store: VectorStore, target: str, schema: SourceSchema, keep_dense: bool, uri: str
) -> None:
    """Raise `MigrationError` unless an existing ``target`` has the schema the plan would create."""
    tinfo = store.describe(target)
    problems = []
    if tinfo.sparse_field != SPARSE_FIELD:
        problems.append(f"no sparse field '{SPARSE_FIELD}'")
    if tinfo.id_type != schema.id_type:
        problems.append(f"id type {tinfo.id_type} (source: {schema.id_type})")
    tfields = dict(tinfo.vector_fields)
    if keep_dense and tfields.get(schema.vector_field) != schema.dim:
        problems.append(f"no dense field '{schema.vector_field}' of dimension {schema.dim}")
    if not keep_dense and tfields:
        problems.append(f"dense fields {', '.join(tfields)} (plan drops dense vectors)")
    if problems:
        raise MigrationError(
            f"target collection '{target}' already exists in {uri} with another schema: "
            + "; ".join(problems)
        )


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; raises `ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m:
        raise ConfigError(f"shard must look like i/n (e.g. 0/4), got '{shard}'")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"shard {shard}: need n >= 1 and 0 <= i < n")
    return i, n


def shard_of(id_: object, shard_count: int) -> int:
    """The shard an id belongs to: crc32 of ``str(id)`` mod ``shard_count`` (stable across runs)."""
    import zlib

    return zlib.crc32(str(id_).encode()) % shard_count


def normalize_uri(uri: str) -> str:
    """Drop credentials from a URL and make a local path absolute, so one store has one name."""
    if "://" in uri:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        # Rebuilt by hand: urlunsplit turns "memory://" into "memory:", which is not idempotent.
        out = f"{parts.scheme}://{host}{parts.path}"
        return f"{out}?{parts.query}" if parts.query else out
    return str(Path(uri).expanduser().resolve())


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit] or "_"


def state_name(store_kind: str, uri: str, source: str, target: str, shard_index: int, shard_count: int) -> str:
    """Folder name of one (store, uri, source, target, shard): readable names + a hash of all five."""
    key = json.dumps([store_kind, normalize_uri(uri), source, target, shard_index, shard_count])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{_slug(source)}__{_slug(target)}__{shard_index}of{shard_count}__{digest}"


def state_dir(base: str | os.PathLike[str] | None, plan: MigrationPlan) -> Path:
    """Folder of one plan's plan.json, journal.sqlite, verify.json and reports (not created here).

    Args:
        base: the state base folder (the CLI's ``--state-dir``); None means ``./.csr-vdb``.
        plan: the migration plan.
    """
    base = Path(base) if base is not None else DEFAULT_STATE_BASE
    return base / state_name(
        plan.store_kind, plan.uri, plan.source, plan.target, plan.shard_index, plan.shard_count
    )


def find_plan(
    base: str | os.PathLike[str] | None,
    store_kind: str,
    uri: str,
    source: str,
    target: str | None = None,
    shard: str = "0/1",
) -> MigrationPlan:
    """Load the saved plan of a migration; raises `MigrationError` when none was started."""
    i, n = parse_shard(shard)
    target = target or f"{source}_csr"
    b = Path(base) if base is not None else DEFAULT_STATE_BASE
    folder = b / state_name(store_kind, uri, source, target, i, n)
    path = folder / PLAN_FILE
    if not path.exists():
        raise MigrationError(
            f"no migration of '{source}' -> '{target}' (shard {i}/{n}) in {normalize_uri(uri)} "
            f"found under state dir {b}"
        )
    return MigrationPlan.load(path)
