"""The CLI's operations on a real embedded store (Qdrant Edge): export, train, migrate, verify, evaluate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.cli.ops import (
    build_configs,
    evaluate,
    export_collection,
    load_encoder,
    migrate_collection,
    model_for,
    train_model,
    verification_queries,
    verify_collection,
)
from csr_vdb.errors import ConfigError, DataError
from tests.cli.conftest import DIM, trained_source

KIND = "qdrant-edge"
ROWS = 150
TINY = dict(hidden_dim=64, k=4, epochs=2, device="cpu")


@dataclass
class Setup:
    root: Path
    uri: str
    store: Any
    x: np.ndarray
    ids: list[int]
    summary: Any


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    uri, x, ids, summary = trained_source(root, KIND, ROWS)
    store = open_store(KIND, uri)
    yield Setup(root, uri, store, x, ids, summary)
    store.close()


def test_train_from_the_store_removes_its_export(setup):
    s = setup.summary
    assert (s.source, s.rows, s.input_dim, s.hidden_dim, s.k, s.epochs) == ("docs", ROWS, DIM, 64, 4, 2)
    assert s.export_seconds is not None and s.seconds > 0
    assert (setup.root / "model" / "model.safetensors").is_file()
    assert list((setup.root / "state" / "exports").iterdir()) == []


def test_train_from_npy_and_keep_export(setup, tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, setup.x)
    s = train_model(tmp_path / "m", from_npy=npy, **TINY)
    assert (s.source, s.rows, s.export_seconds) == (str(npy), ROWS, None)
    kept = train_model(tmp_path / "m2", store=setup.store, collection="docs", work_dir=tmp_path / "w",
                       keep_export=True, **TINY)
    files = sorted(p.name.split("-")[0] + p.suffix for p in (tmp_path / "w" / "exports").iterdir())
    assert kept.export_seconds is not None and files == ["docs.json", "docs.npy", "docs.txt"]
    with pytest.raises(ConfigError, match="either --collection or --from-npy"):
        train_model(tmp_path / "m3", store=setup.store, collection="docs", from_npy=npy)
    with pytest.raises(ConfigError, match="not found"):
        train_model(tmp_path / "m3", from_npy=tmp_path / "missing.npy")


def test_train_chooses_the_query_width_on_the_rows_or_takes_one(setup, tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, setup.x)
    auto = train_model(tmp_path / "auto", from_npy=npy, recall_floor=0.9, **TINY)
    rep = auto.query_width_report
    assert rep is not None and rep["recall_floor"] == 0.9 and auto.query_width == rep["width"] >= 16
    assert auto.search_candidates == rep["candidates"] == min(300, ROWS) and rep["rows"] == ROWS
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())["csr_config"]
    assert saved["k_query"] == rep["width"] and saved["query_width"]["recalls"] == {str(w): r for w, r in rep["recalls"].items()}
    fixed = train_model(tmp_path / "fixed", from_npy=npy, query_width="24", **TINY)
    assert (fixed.query_width, fixed.query_width_report) == (24, None)
    topk = train_model(tmp_path / "topk", from_npy=npy, query_projection="encoder", **TINY)
    assert (topk.query_width, topk.query_width_report) == (4, None)  # TopK queries: k non-zeros
    for bad, match in ((dict(query_width="wide"), "query-width"), (dict(query_width=0), "query-width"),
                       (dict(query_width=8, k_query=6), "disagree"), (dict(recall_floor=1.5), "recall-floor"),
                       (dict(query_width=8, query_projection="encoder"), "k-query")):
        with pytest.raises(ConfigError, match=match):
            train_model(tmp_path / "bad", from_npy=npy, **{**TINY, **bad})


def test_build_configs_applies_overrides_to_the_recipe():
    cfg, tcfg = build_configs(16, 300, hidden_dim=64, k=4, epochs=3, lr=0.01, seed=5, k_query=8)
    assert (cfg.input_dim, cfg.hidden_dim, cfg.k, cfg.k_query, cfg.normalize) == (16, 64, 4, 8, "l2")
    assert (tcfg.epochs, tcfg.lr, tcfg.seed) == (3, 0.01, 5)
    assert build_configs(16, 300, metric="ip")[0].normalize == "none"
    assert (build_configs(16, 300)[0].k_query, build_configs(16, 300)[0].search_candidates) == (16, 300)
    topk = build_configs(16, 300, query_projection="encoder")[0]
    assert (topk.k_query, topk.search_candidates, topk.bias_latent) == (None, None, False)
    assert build_configs(16, 300, k=100)[0].hidden_dim == 400  # k beyond 4 x dim: h follows k
    assert build_configs(16, 5, batch_size=512)[1].batch_size == 5  # never an epoch of zero steps
    assert build_configs(16, 300, k=4, hidden_dim=None)[0].hidden_dim == build_configs(16, 300)[0].hidden_dim
    with pytest.raises(ConfigError, match="unknown training setting.*: hidden"):
        build_configs(16, 300, hidden=64)
    with pytest.raises(ConfigError, match="k must be in 1..8"):
        build_configs(16, 300, hidden_dim=8, k=16)
    with pytest.raises(ConfigError, match="invalid training setting lr"):
        build_configs(16, 300, lr=-1.0)


def test_export_streams_every_row(setup, tmp_path):
    res = export_collection(setup.store, "docs", tmp_path / "e.npy", batch_size=40, dtype="float16")
    assert (res.rows, res.dim, res.dtype, res.id_type, res.metric) == (ROWS, DIM, "float16", "int", "cosine")
    got_ids = [int(i) for i in Path(res.ids_path).read_text().split()]
    order = [setup.ids.index(i) for i in got_ids]
    assert sorted(got_ids) == sorted(setup.ids)
    np.testing.assert_allclose(np.load(res.path).astype(np.float32), setup.x[order], atol=1e-3)
    meta = json.loads(Path(res.meta_path).read_text())
    assert meta == {"collection": "docs", "rows": ROWS, "dim": DIM, "dtype": "float16", "id_type": "int",
                    "metric": "cosine", "vector_field": setup.store.describe("docs").vector_field}
    with pytest.raises(ConfigError, match="float32 or float16"):
        export_collection(setup.store, "docs", tmp_path / "f.npy", dtype="int8")
    with pytest.raises(ConfigError, match="no vector field 'emb'"):
        export_collection(setup.store, "docs", tmp_path / "f.npy", vector_field="emb")


def test_export_failures_leave_no_file(tmp_path):
    store = MemoryStore()
    store.create_dense_collection("empty", 4)
    with pytest.raises(DataError, match="is empty"):
        export_collection(store, "empty", tmp_path / "a.npy")
    store.create_dense_collection("odd", 4, id_type="str")
    store.insert_dense("odd", ["ok", "line\nbreak"], np.ones((2, 4), np.float32))
    with pytest.raises(DataError, match="line break"):
        export_collection(store, "odd", tmp_path / "b.npy")
    assert list(tmp_path.iterdir()) == []


def test_migrate_verify_and_evaluate(setup):
    state = setup.root / "state-migrate"
    options = dict(store_kind=KIND, uri=setup.uri, source="docs", model_dir=str(setup.root / "model"), batch_size=64)
    plan, dry = migrate_collection(setup.store, options, device="cpu", state_base=state, dry_run=True)
    assert dry.dry_run and dry.rows_written == ROWS and plan.target == "docs_csr"
    assert not setup.store.has_collection("docs_csr") and not state.exists()
    plan, res = migrate_collection(setup.store, options, device="cpu", state_base=state)
    assert res.status == "complete" and res.rows_done == ROWS and res.plan_id == plan.plan_id
    rep = verify_collection(setup.store, plan, device="cpu", state_base=state, sample=30)
    assert rep.ok, rep.problems
    # verify's recall is the database's search alone: the full decoder query, whatever k_query says
    enc = load_encoder(plan.model_dir)
    full = enc.config.k_query_for("decoder", enc.config.k)
    assert verification_queries(enc)(setup.x[:3]).width == full
    assert rep.sample_size == 30 and rep.sparse_mismatches == 0  # the plan's encoder re-encodes what it wrote

    # the model of a collection is found from its migration: by source or target
    assert model_for(None, state, KIND, setup.uri, "docs_csr") == plan.model_dir
    assert model_for("given", state, KIND, setup.uri, "nope") == "given"
    with pytest.raises(ConfigError, match="--model is required: no migration of 'nope'"):
        model_for(None, state, KIND, setup.uri, "nope")
    ev = evaluate(setup.store, "docs", None, model_dir=None, state_dir=state, store_kind=KIND, uri=setup.uri,
                  device="cpu", sample=40, candidates=50)
    assert (ev.source, ev.target, ev.queries) == ("docs", "docs_csr", 40)
    assert 0.0 <= ev.recall_sparse <= ev.recall_rerank <= 1.0
    # the model's search width, and how training chose it, are part of the report and its table
    assert ev.query_width == setup.summary.query_width and ev.query_width_report == setup.summary.query_width_report
    from csr_vdb.cli.render import eval_table

    text = eval_table(ev)
    assert f"search query width {ev.query_width}, 50 candidates" in text and "recall by width" in text
    ev2 = evaluate(setup.store, "docs", None, model_dir=None, state_dir=state, store_kind=KIND, uri=setup.uri,
                   device="cpu", sample=20)
    assert ev2.candidates == setup.summary.search_candidates  # the model's own count
