"""`MigrationPlan`: what one migration does, checked up front and saved as plan.json in its state folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csr_vdb.store import StoreKind, VectorStore, strip_credentials
from csr_vdb.errors import CollectionNotFoundError, ConfigError, DataError, MigrationError, ModelError
from csr_vdb.fileutil import atomic_write_json, model_checksum
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.schema import Preflight, SourceSchema, check_target_schema

log = logging.getLogger(__name__)

DEFAULT_STATE_BASE = Path(".csr-vdb")
"""Where state folders live unless the caller (the CLI's ``--state-dir``) says otherwise."""

StateBase: TypeAlias = str | os.PathLike[str] | None
"""The base folder of state folders as callers give it: None means `DEFAULT_STATE_BASE`."""

PLAN_FILE = "plan.json"
JOURNAL_FILE = "journal.sqlite"
VERIFY_FILE = "verify.json"
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


class MigrationPlan(BaseModel):
    """One migration of a dense collection into a sparse (CSR) one.

    Make it with `MigrationPlan.create`, which checks the store before anything is written;
    `run_migration` saves it as ``plan.json`` in the plan's state folder.
    """

    model_config = ConfigDict(extra="forbid")

    store_kind: Literal[StoreKind, "memory"] = Field(
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
        except (OSError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MigrationError(f"invalid migration plan {path}: {msg}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan atomically as JSON."""
        atomic_write_json(path, self.model_dump())

    def shards(self) -> list[MigrationPlan]:
        """The plans of every shard of this plan's split, in shard order (this plan among them)."""
        return [self if i == self.shard_index else self.for_shard(i) for i in range(self.shard_count)]

    @classmethod
    def create(cls, store: VectorStore, **options: Any) -> MigrationPlan:
        """Check the store and build a plan; nothing is written anywhere.

        Takes the keyword arguments of `plan_migration` and returns its plan.
        """
        return plan_migration(store, **options)[0]


def default_target(source: str) -> str:
    """The sparse collection a migration of ``source`` writes unless told otherwise."""
    return f"{source}_csr"


def default_alias(source: str) -> str:
    """The alias that cutover moves unless told otherwise."""
    return f"{source}_live"


def plan_migration(
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
) -> tuple[MigrationPlan, Preflight]:
    """Check the store and build a plan; nothing is written anywhere.

    The source and the target are described once; that `Preflight` comes back with the plan, so
    a run started right away (``run_migration(..., preflight=...)``) does not look again.

    Args:
        store: the open store holding ``source``.
        store_kind: "milvus", "qdrant", "qdrant-edge" or "memory".
        uri: the store's location as given by the user (credentials in a URL are dropped).
        source: dense collection to migrate.
        model_dir: folder of the saved encoder (``model.safetensors`` + ``config.json``).
        target: sparse collection to write; default `default_target`.
        vector_field: dense field to encode; default the source's first.
        batch_size: rows per batch.
        keep_dense: also copy dense vectors into the target.
        shard: ``"i/n"``: migrate only the ids whose crc32 hashes to i mod n.
        skip_invalid: skip and record invalid rows instead of stopping.
        alias: alias for cutover/rollback; default `default_alias`.
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
    target = target or default_target(source)
    alias = alias or default_alias(source)
    clean_uri = normalize_uri(uri)
    if target == source:
        raise ConfigError(f"target must differ from the source ('{source}')")
    if alias in (source, target):
        raise ConfigError(f"alias '{alias}' must differ from the source and target names")

    pre = Preflight.read(store, source, target)
    if pre.source.count == 0:
        raise DataError(f"source collection '{source}' in {clean_uri} is empty: nothing to migrate")
    schema = SourceSchema.of(pre.source, vector_field)
    if model_dim is not None and int(model_dim) != schema.dim:
        raise ModelError(
            f"model input dimension {model_dim} does not match collection '{source}' "
            f"field '{schema.vector_field}' dimension {schema.dim}"
        )
    if alias in store.list_collections():
        raise ConfigError(f"alias '{alias}' is the name of an existing collection in {clean_uri}")
    mdir = Path(model_dir).resolve()
    try:
        sha = model_checksum(mdir)
    except OSError as exc:
        raise ModelError(f"cannot read model files in {mdir}: {exc.strerror or exc}") from exc
    if pre.target is not None:
        check_target_schema(pre.target, schema, keep_dense, clean_uri)
    try:
        plan = MigrationPlan(
            store_kind=store_kind, uri=clean_uri, source=source, target=target, alias=alias,  # type: ignore[arg-type]
            vector_field=schema.vector_field, source_schema=schema, model_dir=str(mdir), model_sha256=sha,
            batch_size=batch_size, keep_dense=keep_dense, shard_index=shard_index, shard_count=shard_count,
            skip_invalid=skip_invalid,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid migration plan: {exc.errors()[0]['msg']}") from exc
    return plan, pre


def parse_shard(shard: str, what: str = "shard") -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``.

    Args:
        shard: the text to parse.
        what: how error messages name the setting (the CLI passes ``"--shard"``).

    Raises:
        ConfigError: anything else.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m:
        raise ConfigError(f"{what} must look like i/n (e.g. 0/4), got '{shard}'")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"{what} {shard}: need n >= 1 and 0 <= i < n")
    return i, n


def shard_of(id_: object, shard_count: int) -> int:
    """The shard an id belongs to: crc32 of ``str(id)`` mod ``shard_count`` (stable across runs)."""
    return zlib.crc32(str(id_).encode()) % shard_count


def normalize_uri(uri: str) -> str:
    """Drop credentials from a URL and make a local path absolute, so one store has one name."""
    if "://" in uri:
        return strip_credentials(uri, keep_query=True)
    return str(Path(uri).expanduser().resolve())


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit] or "_"


def state_name(store_kind: str, uri: str, source: str, target: str, shard_index: int, shard_count: int) -> str:
    """Folder name of one (store, uri, source, target, shard): readable names + a hash of all five."""
    key = json.dumps([store_kind, normalize_uri(uri), source, target, shard_index, shard_count])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{_slug(source)}__{_slug(target)}__{shard_index}of{shard_count}__{digest}"


def state_dir(base: StateBase, plan: MigrationPlan) -> Path:
    """Folder of one plan's plan.json, journal.sqlite, verify.json and reports (not created here).

    Args:
        base: the state base folder (the CLI's ``--state-dir``); None means ``./.csr-vdb``.
        plan: the migration plan.
    """
    name = state_name(plan.store_kind, plan.uri, plan.source, plan.target, plan.shard_index, plan.shard_count)
    return _base(base) / name


def _base(base: StateBase) -> Path:
    return Path(base) if base is not None else DEFAULT_STATE_BASE


def find_plan(
    base: StateBase, store_kind: str, uri: str, source: str, target: str | None = None, shard: str = "0/1",
    store: VectorStore | None = None,
) -> MigrationPlan:
    """Load the saved plan of a migration.

    Args:
        base: the state base folder (None: ``./.csr-vdb``).
        store_kind, uri, source: the store and the source collection of the migration.
        target: its target (default `default_target`).
        shard: its shard ``"i/n"``.
        store: the open store; when given, a missing source is reported as such first.

    Raises:
        CollectionNotFoundError: ``store`` is given and has no collection ``source``.
        MigrationError: no migration of that source, target and shard was started here.
    """
    i, n = parse_shard(shard)
    if store is not None and not store.has_collection(source):
        raise CollectionNotFoundError(f"collection '{source}' not found in {normalize_uri(uri)}")
    target = target or default_target(source)
    folder = _base(base) / state_name(store_kind, uri, source, target, i, n)
    path = folder / PLAN_FILE
    jpath = folder / JOURNAL_FILE
    if not path.exists() and not jpath.exists():
        raise MigrationError(
            f"no migration of '{source}' -> '{target}' (shard {i}/{n}) in {normalize_uri(uri)} "
            f"found under state dir {_base(base)}"
        )
    if jpath.exists():
        with Journal.open(jpath, readonly=True) as journal:
            check_plan_file(folder, journal.meta().get("plan"), restore=False)
    return MigrationPlan.load(path)


def check_plan_file(folder: Path, saved: dict[str, Any] | None, *, restore: bool) -> None:
    """plan.json must be the plan its journal was started with (the journal keeps a copy).

    Other commands act on what plan.json says (the alias to move, the model to verify with), so a
    file changed by hand is refused rather than followed; a missing one is restored from the
    journal by a ``--resume`` run.

    Args:
        folder: the plan's state folder.
        saved: the journal's copy (None: a journal of an earlier version, which keeps none).
        restore: write a missing plan.json back from the copy (a run holding the plan's lock).

    Raises:
        MigrationError: plan.json missing (and not ``restore``), unreadable, or changed.
    """
    if saved is None:
        return
    path = folder / PLAN_FILE
    recover = f"run `csr-vdb migrate ... --resume`, which restores it from the journal {folder / JOURNAL_FILE}"
    if not path.exists():
        if not restore:
            raise MigrationError(f"plan file {path} is missing: {recover}")
        try:
            atomic_write_json(path, saved)
        except OSError as exc:
            raise MigrationError(f"cannot restore the plan {path}: {exc.strerror or exc}") from exc
        log.warning("plan file %s was missing: restored from the journal", path)
        return
    try:
        on_disk = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MigrationError(f"plan file {path} cannot be read ({exc}): delete it and {recover}") from exc
    changed = plan_changes(on_disk, saved)
    if changed:
        raise MigrationError(
            f"plan file {path} was changed since the migration started ({', '.join(changed)}): put those "
            f"values back, or delete the file and {recover}"
        )


def plan_changes(on_disk: Any, saved: dict[str, Any]) -> list[str]:
    """The top-level fields in which a plan file differs from the journal's copy."""
    if not isinstance(on_disk, dict):
        return ["not a JSON object"]
    return sorted(k for k in set(on_disk) | set(saved) if on_disk.get(k) != saved.get(k))


def plans_for(
    base: StateBase, store_kind: str, uri: str, collection: str, target: str | None = None
) -> list[MigrationPlan]:
    """Saved plans of this store in which ``collection`` is the source, the target or the alias.

    A search of ``docs_live`` after a cutover finds the migration (and so the model) that made it.
    Unreadable plan files are skipped with a debug log: a foreign or damaged file must not hide
    the others. ``target``, when given, keeps only the plans with that target.
    """
    want = normalize_uri(uri)
    found = []
    for path in sorted(_base(base).glob(f"*/{PLAN_FILE}")):
        try:
            plan = MigrationPlan.load(path)
        except MigrationError as exc:
            log.debug("ignoring %s: %s", path, exc)
            continue
        if plan.store_kind != store_kind or normalize_uri(plan.uri) != want:
            continue
        if collection in (plan.source, plan.target, plan.alias) and target in (None, plan.target):
            found.append(plan)
    return found
