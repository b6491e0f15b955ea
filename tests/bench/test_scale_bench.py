"""bench/scale.py: a tiny run on each embedded engine writes the JSON schema the scale figures are read from."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO, shared_data_dir


def _load_bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, store: str, extra: list[str], data: list[str] | None = None) -> dict:
    bench = _load_bench()
    out = tmp_path / "scale.json"
    argv = ["--store", store, "--n", "1500", "--queries", "8", "--self-queries", "6", "--steps", "4",
            "--train-rows", "1500", "--warmup", "2", "--throughput-seconds", "0.2", "--depth", "30",
            "--workdir", str(tmp_path / "work"), "--threads", "1", "--out", str(out),
            *(data if data is not None else ["--synthetic"]), *extra]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def _check_mode(m: dict, timed: int) -> None:
    lat = m["latency_ms"]
    assert lat["n"] == timed and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    for part in ("test", "self", "all"):
        assert 0.0 <= m["recall_at_10"][part] <= 1.0


@pytest.mark.slow
def test_scale_on_qdrant_edge_with_variants_and_engine_settings(tmp_path, capsys):
    res = _run(tmp_path, "qdrant-edge", ["--fast", "--variant", "m16=width:16,candidates:40",
                                         "--variant", "c16=width:16,select:cost,alpha:0.5,candidates:40",
                                         "--sparse-config", "f16=datatype:float16,memory:cold"])
    assert res["schema"] == 1 and res["n"] == 1500 and res["queries"] == {"test": 8, "self": 6}
    assert res["data"]["copies"] == 0  # 1500 synthetic base rows need no copies
    want = {"dense", "dense_ef", "search:default", "retriever:default", "search:m16", "retriever:m16",
            "search:c16", "search:f16", "retriever:f16", "fast:default", "fast:m16", "fast:f16"}
    assert set(res["modes"]) == want  # the cost-selected variant: the database search only
    # the one-pass prototype ranks as Retriever.search does (ties aside)
    for v in ("default", "m16", "f16"):
        assert abs(res["modes"][f"fast:{v}"]["recall_at_10"]["all"] - res["modes"][f"retriever:{v}"]["recall_at_10"]["all"]) <= 0.05
    for m in res["modes"].values():
        _check_mode(m, 14)
    # the exact dense top-10 is what the recall is measured against: a tiny HNSW finds it all
    assert res["modes"]["dense"]["recall_at_10"]["all"] > 0.9
    # the default variant is the model's own search width and candidate count (the recipe's 16 and 300)
    assert res["variants"]["default"] == {"width": 16, "candidates": 300}
    assert res["modes"]["search:m16"]["query_nnz_mean"] <= 16 and res["modes"]["search:default"]["query_nnz_mean"] <= 16
    assert res["modes"]["search:c16"]["postings_per_query"] <= res["modes"]["search:m16"]["postings_per_query"]
    assert set(res["modes"]["dense"]["qps"]) == {"1", "2"} and res["modes"]["retriever:default"]["qps"]["1"] > 0
    assert res["dense_ef"]["ef"] in res["dense_ef"]["calibration"] or str(res["dense_ef"]["ef"]) in \
        res["dense_ef"]["calibration"]
    for name in ("dense", "sparse", "f16"):
        c = res["collections"][name]
        assert c["count"] == 1500 and c["disk_bytes"] > 0 and c["build_s"] >= 0
        assert c["memory_mb"]["loaded"]["rss"] > 0 and "rss_after_run" in c["memory_mb"]
        assert "engine_rss_after_run" in c["memory_mb"]
    # the sparse worker loads torch and the encoder after the engine: that memory is kept apart
    mem = res["collections"]["sparse"]["memory_mb"]
    assert mem["encoder_rss"] > 0 and "encoder_rss" not in res["collections"]["dense"]["memory_mb"]
    assert mem["engine_rss_after_run"] < mem["rss_after_run"]["rss"] - mem["encoder_rss"]
    assert res["collections"]["f16"]["engine"] == {"datatype": "float16", "memory": "cold"}
    assert res["collections"]["sparse"]["engine"] == {"datatype": "uint8"}  # the adapter's default index
    model = next(iter(res["models"].values()))
    assert model["trained"] and model["hidden_dim"] == 1536 and 0 <= model["dead_frac"] <= 1
    assert res["blas_threads"] == 1 and res["profiles"]["retriever:default"][0]["cum_ms"] > 0
    printed = capsys.readouterr().out
    assert "retriever:m16" in printed and "| dense |" in printed

    # a second run reuses the collections, the model and the codes kept in --workdir
    res2 = _run(tmp_path, "qdrant-edge", [])
    assert res2["collections"]["dense"]["reused"] and res2["collections"]["sparse"]["reused"]


@pytest.mark.slow
def test_scale_on_milvus_lite_records_refused_index_settings(tmp_path):
    res = _run(tmp_path, "milvus", ["--sparse-config", "wand=inverted_index_algo:DAAT_WAND"])
    assert set(res["modes"]) == {"dense", "search:default", "retriever:default", "search:wand", "retriever:wand"}
    for m in res["modes"].values():
        _check_mode(m, 14)
    assert "ef" not in res["dense_ef"]  # Milvus Lite's AUTOINDEX: no HNSW ef to tune here
    assert res["collections"]["sparse"]["count"] == 1500 and res["collections"]["sparse"]["disk_bytes"] > 0
    # what the engine kept of the requested index settings, and its answer to search-time pruning
    wand = res["collections"]["wand"]
    assert wand["engine"] == {"inverted_index_algo": "DAAT_WAND"} and wand["index"]["index_type"] == "SPARSE_INVERTED_INDEX"
    assert wand["drop_ratio_search_0.2"] == "accepted" or "drop_ratio_search" in wand["drop_ratio_search_0.2"]


@pytest.mark.slow
@pytest.mark.realdata
def test_scale_on_scifact_rows_scores_ndcg_without_the_copies(tmp_path):
    data = shared_data_dir()
    if data is None or not (data / "scifact").is_dir():
        pytest.skip("real data not found: ../shared/data/scifact")
    bench = _load_bench()
    res = _run(tmp_path, "qdrant-edge", ["--n", "6000", "--throughput-seconds", "0"], data=["--data-dir", str(data)])
    assert res["data"]["base_rows"] == 5183 and res["data"]["copies"] == 6000 - 5183
    assert 0.0 < res["reference"]["dense_exact_ndcg_at_10"] <= 1.0
    for m in res["modes"].values():
        assert 0.0 <= m["ndcg_at_10"] <= 1.0 and m["ndcg_pct_of_dense"] is not None
    assert bench.COPY_ID_BASE > 198309074  # above every SciFact doc id


def test_parse_kv_and_bad_options():
    bench = _load_bench()
    assert bench.parse_kv("m64=width:64,select:cost,alpha:0.5") == ("m64", {"width": 64, "select": "cost", "alpha": 0.5})
    with pytest.raises(ValueError):
        bench.parse_kv("m64=width")
    with pytest.raises(SystemExit):
        bench.parse_args(["--variant", "x=depth:3"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--variant", "x=collection:nope"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sparse-config", "dense=datatype:uint8"])
