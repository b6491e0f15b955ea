"""Schema checks on real stores: the planned source field, a changed source, a target to write into."""

from __future__ import annotations

import numpy as np
import pytest

from csr_vdb.errors import CollectionNotFoundError, ConfigError, MigrationError
from csr_vdb.migrations import Preflight, SourceSchema
from csr_vdb.migrations.schema import check_source_unchanged, check_target_schema, dense_fields
from tests.migrations.conftest import fill_source

DIM = 16


def test_source_schema_of_a_described_collection(store):
    fill_source(store, "docs", 10, DIM, id_type="str")
    info = store.describe("docs")
    schema = SourceSchema.of(info)
    assert schema == SourceSchema(dim=DIM, metric="cosine", id_type="str", vector_field=info.vector_field)
    assert SourceSchema.of(info, info.vector_field) == schema and dense_fields(info) == {info.vector_field: DIM}
    with pytest.raises(ConfigError, match="no vector field 'emb'"):
        SourceSchema.of(info, "emb")
    store.create_sparse_collection("lean", like="docs", keep_dense=False)
    with pytest.raises(ConfigError, match="has no dense vector field"):
        SourceSchema.of(store.describe("lean"))


def test_a_changed_source_is_refused(store):
    fill_source(store, "docs", 10, DIM)
    planned = SourceSchema.of(store.describe("docs"))
    check_source_unchanged(store.describe("docs"), planned, "docs")
    store.drop("docs")
    store.create_dense_collection("docs", DIM + 1, metric="ip")
    store.insert_dense("docs", [1], np.ones((1, DIM + 1), np.float32))
    with pytest.raises(MigrationError, match="changed schema"):
        check_source_unchanged(store.describe("docs"), planned, "docs")
    moved = planned.model_copy(update={"vector_field": "emb"})
    with pytest.raises(MigrationError, match="no longer has vector field 'emb'"):
        check_source_unchanged(store.describe("docs"), moved, "docs")


def test_target_schema(store):
    fill_source(store, "docs", 10, DIM)
    schema = SourceSchema.of(store.describe("docs"))
    store.create_sparse_collection("full", like="docs")
    store.create_sparse_collection("lean", like="docs", keep_dense=False)
    check_target_schema(store.describe("full"), schema, True, "u")
    check_target_schema(store.describe("lean"), schema, False, "u")
    with pytest.raises(MigrationError, match="already exists in u with another schema: dense fields"):
        check_target_schema(store.describe("full"), schema, False, "u")
    with pytest.raises(MigrationError, match=f"no dense field '{schema.vector_field}' of dimension {DIM}"):
        check_target_schema(store.describe("lean"), schema, True, "u")
    store.create_dense_collection("dense", DIM, id_type="str")
    with pytest.raises(MigrationError, match="no sparse field 'csr'; id type str"):
        check_target_schema(store.describe("dense"), schema, True, "u")


def test_preflight_reads_each_collection_once(store):
    fill_source(store, "docs", 10, DIM)
    pre = Preflight.read(store, "docs", "docs_csr")
    assert pre.source.count == 10 and pre.target is None
    with pytest.raises(CollectionNotFoundError):
        Preflight.read(store, "nope", "docs")
