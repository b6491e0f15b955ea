"""Plans: shards, defaults, the one look at the store, state folders, and finding a saved plan again."""

from __future__ import annotations

import json

import pytest

from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.errors import CollectionNotFoundError, ConfigError, MigrationError
from csr_vdb.migrations import MigrationPlan, default_alias, default_target, find_plan, parse_shard, plan_migration
from csr_vdb.migrations import plans_for, run_migration, shard_of, state_dir
from tests.migrations.conftest import ProjectionEncoder, fill_source, store_uri

DIM = 16


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "x", "1/0", "-1/2", "1/2/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    with pytest.raises(ConfigError, match=r"^--shard 3/2: need"):
        parse_shard("3/2", what="--shard")


def test_shard_of_is_stable_and_splits_every_id_once():
    ids = list(range(500)) + [f"doc-{i}" for i in range(500)]
    assert [shard_of(i, 4) for i in ids] == [shard_of(i, 4) for i in ids]
    counts = [sum(shard_of(i, 4) == s for i in ids) for s in range(4)]
    assert sum(counts) == 1000 and min(counts) > 150


def test_defaults_and_the_preflight(store, store_kind, tmp_path, model_dir):
    fill_source(store, "docs", 60, DIM)
    uri = store_uri(store_kind, tmp_path)
    plan, pre = plan_migration(store, store_kind=store_kind, uri=uri, source="docs", model_dir=model_dir)
    assert plan.target == default_target("docs") == "docs_csr"
    assert plan.alias == default_alias("docs") == "docs_live"
    assert pre.target is None and pre.source.name == "docs" and pre.source.count == 60
    assert plan.source_schema.dim == DIM and plan.source_schema.vector_field == pre.source.vector_field
    again = MigrationPlan.create(store, store_kind=store_kind, uri=uri, source="docs", model_dir=model_dir)
    assert again.plan_id == plan.plan_id
    store.create_sparse_collection("docs_csr", like="docs")
    _, pre = plan_migration(store, store_kind=store_kind, uri=uri, source="docs", model_dir=model_dir)
    assert pre.target is not None and pre.target.sparse_field == "csr" and pre.target.count == 0


def test_names_checked_up_front(model_dir):
    store = MemoryStore()
    fill_source(store, "docs", 20, DIM)
    store.create_dense_collection("taken", DIM)
    kw = dict(store_kind="memory", uri="memory://", source="docs", model_dir=model_dir)
    with pytest.raises(ConfigError, match="alias 'taken' is the name of an existing collection"):
        plan_migration(store, alias="taken", **kw)
    with pytest.raises(ConfigError, match="alias 'docs_csr' must differ"):
        plan_migration(store, alias="docs_csr", **kw)
    with pytest.raises(ConfigError, match="batch size"):
        plan_migration(store, batch_size=0, **kw)
    assert store.list_collections() == ["docs", "taken"]


def test_shards_of_a_split(model_dir):
    store = MemoryStore()
    ids, _, _ = fill_source(store, "docs", 90, DIM)
    plan = MigrationPlan.create(store, store_kind="memory", uri="memory://", source="docs", model_dir=model_dir,
                                shard="1/3")
    shards = plan.shards()
    assert [p.shard for p in shards] == ["0/3", "1/3", "2/3"] and shards[1] is plan
    assert len({p.plan_id for p in shards}) == 3
    member = [[p.in_shard(ids)[n] for p in shards] for n in range(len(ids))]
    assert all(sum(m) == 1 for m in member)
    assert shards[2].for_shard(1) == plan


def test_state_dir_names_one_migration(tmp_path, model_dir, monkeypatch):
    store = MemoryStore()
    fill_source(store, "docs", 20, DIM)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    kw = dict(store_kind="memory", source="docs", model_dir=model_dir)
    rel = MigrationPlan.create(store, uri="db", **kw)
    absolute = MigrationPlan.create(store, uri=str(tmp_path / "db"), **kw)
    other = MigrationPlan.create(store, uri="db", target="lean", **kw)
    assert state_dir("s", rel) == state_dir("s", absolute)  # one store, one name
    assert state_dir("s", rel) != state_dir("s", other) and state_dir("s", rel).parent.name == "s"
    assert state_dir(None, rel).parent.name == ".csr-vdb"
    assert "docs__docs_csr__0of1__" in state_dir("s", rel).name


def test_find_plan_and_plans_for(tmp_path, model_dir):
    store = MemoryStore()
    fill_source(store, "docs", 50, DIM)
    base = tmp_path / "state"
    kw = dict(store_kind="memory", uri="memory://", source="docs", model_dir=model_dir)
    plan = MigrationPlan.create(store, **kw)
    lean = MigrationPlan.create(store, target="lean", keep_dense=False, **kw)
    with pytest.raises(MigrationError, match="no migration of 'docs' -> 'docs_csr'"):
        find_plan(base, "memory", "memory://", "docs")
    for p in (plan, lean):
        run_migration(store, p, ProjectionEncoder(DIM), state_base=base)
    assert find_plan(base, "memory", "memory://", "docs") == plan
    assert find_plan(base, "memory", "memory://", "docs", target="lean", store=store) == lean
    with pytest.raises(CollectionNotFoundError, match="nope"):
        find_plan(base, "memory", "memory://", "nope", store=store)

    # by source, target or alias; another store's plans are not this one's
    assert {p.target for p in plans_for(base, "memory", "memory://", "docs")} == {"docs_csr", "lean"}
    assert plans_for(base, "memory", "memory://", "docs_live", target="lean") == [lean]
    assert plans_for(base, "memory", "memory://", "lean") == [lean]
    assert plans_for(base, "milvus", "memory://", "docs") == [] and plans_for(base, "memory", "x.db", "docs") == []
    # a damaged plan file hides nothing else
    (base / "junk").mkdir()
    (base / "junk" / "plan.json").write_text(json.dumps(["not", "a", "plan"]))
    with pytest.raises(MigrationError, match="invalid migration plan"):
        MigrationPlan.load(base / "junk" / "plan.json")
    assert len(plans_for(base, "memory", "memory://", "docs")) == 2
