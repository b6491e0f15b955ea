"""Schema checks of a migration: the source's dense field as planned, and a target it may write into."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from csr_vdb.store import SPARSE_FIELD, CollectionInfo, VectorStore
from csr_vdb.errors import ConfigError, MigrationError


class SourceSchema(BaseModel):
    """The source collection's schema as captured when the plan was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(description="Dimension of the migrated dense vector field.", ge=1)
    metric: str = Field(description="Metric of that field (cosine, ip or l2).")
    id_type: Literal["int", "str"] = Field(description="Primary key type of the collection.")
    vector_field: str = Field(description="Name of the migrated dense vector field.")

    @classmethod
    def of(cls, info: CollectionInfo, vector_field: str | None = None) -> SourceSchema:
        """The schema of ``vector_field`` (default: the first dense field) of a described collection.

        Raises:
            ConfigError: the collection has no dense field, or none of that name.
        """
        fields = dense_fields(info)
        if not fields:
            raise ConfigError(f"collection '{info.name}' has no dense vector field")
        field = vector_field or info.vector_field or next(iter(fields))
        if field not in fields:
            raise ConfigError(
                f"collection '{info.name}' has no vector field '{field}' (fields: {', '.join(fields)})"
            )
        return cls(dim=int(fields[field]), metric=str(info.metric), id_type=info.id_type, vector_field=field)


@dataclass(frozen=True)
class Preflight:
    """What the store held when a migration was checked, read once and shared by the plan and the run.

    Attributes:
        source: the source collection, described.
        target: the target collection, described; None while it does not exist.
    """

    source: CollectionInfo
    target: CollectionInfo | None

    @classmethod
    def read(cls, store: VectorStore, source: str, target: str) -> Preflight:
        """Describe the source (raises `CollectionNotFoundError` when absent) and the target if it exists."""
        info = store.describe(source)
        return cls(info, store.describe(target) if store.has_collection(target) else None)


def dense_fields(info: CollectionInfo) -> dict[str, int]:
    """A described collection's dense vector fields, name -> dimension."""
    if info.vector_fields:
        return dict(info.vector_fields)
    return {info.vector_field: info.dimension} if info.vector_field else {}


def check_source_unchanged(info: CollectionInfo, planned: SourceSchema, source: str) -> None:
    """Raise `MigrationError` if the described source no longer has the schema the plan captured."""
    try:
        now = SourceSchema.of(info, planned.vector_field)
    except ConfigError as exc:
        raise MigrationError(
            f"source collection '{source}' no longer has vector field '{planned.vector_field}'"
        ) from exc
    if now != planned:
        raise MigrationError(
            f"source collection '{source}' changed schema since the plan was made "
            f"(was {planned.model_dump()}, now {now.model_dump()})"
        )


def check_target_schema(info: CollectionInfo, schema: SourceSchema, keep_dense: bool, uri: str) -> None:
    """Raise `MigrationError` unless an existing target has the schema the plan would create."""
    problems = []
    if info.sparse_field != SPARSE_FIELD:
        problems.append(f"no sparse field '{SPARSE_FIELD}'")
    if info.id_type != schema.id_type:
        problems.append(f"id type {info.id_type} (source: {schema.id_type})")
    fields = dict(info.vector_fields)
    if keep_dense and fields.get(schema.vector_field) != schema.dim:
        problems.append(f"no dense field '{schema.vector_field}' of dimension {schema.dim}")
    if not keep_dense and fields:
        problems.append(f"dense fields {', '.join(fields)} (plan drops dense vectors)")
    if problems:
        raise MigrationError(
            f"target collection '{info.name}' already exists in {uri} with another schema: " + "; ".join(problems)
        )


def fidelity_differences(source: dict[str, Any], target: dict[str, Any], kept: str | None) -> list[str]:
    """Where a target's native schema (`CollectionInfo.native_schema`) differs from what a migration
    of ``source`` keeping dense field ``kept`` (None: none) must give it, one line per difference.

    The id, the payload layout and indexes, the kept dense field (and, in Qdrant, whether the
    vectors are one unnamed vector or a dict) must be the source's exactly; the target holds no
    other dense field. The sparse field is not part of a native schema.
    """
    want: dict[str, Any] = {"id": source.get("id"), "payload": source.get("payload")}
    want["vectors"] = {kept: (source.get("vectors") or {}).get(kept)} if kept is not None else {}
    if kept is not None and "vectors_form" in source:
        want["vectors_form"] = source["vectors_form"]
    got = {k: target.get(k) for k in want}
    got["vectors"] = target.get("vectors") or {}
    return list(_diff(want, got, ""))


def _diff(want: Any, got: Any, path: str):
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got), key=str):
            where = f"{path}.{k}" if path else str(k)
            if k not in got:
                yield f"{where}: missing in the target (source: {_short(want[k])})"
            elif k not in want:
                yield f"{where}: not in the source (target: {_short(got[k])})"
            else:
                yield from _diff(want[k], got[k], where)
    elif want != got:
        yield f"{path or 'schema'}: source {_short(want)}, target {_short(got)}"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
