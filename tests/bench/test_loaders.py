"""bench/loaders.py: the Banking77 and BEIR readers, their errors, the evaluation drivers, the published dense figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.loaders import (
    dataset_kind,
    evaluate_banking77,
    evaluate_beir,
    find_datasets,
    load_banking77_dir,
    load_beir_dir,
    read_qrels,
)
from csr_vdb.errors import DataError
from tests.helpers import write_beir_folder

L2 = math.log2


# ------------------------------------------------------------------ readers
def _write_beir(path, x_docs, x_queries, qrels_rows):
    qrels: dict[str, dict[str, int]] = {}
    for q, d, s in qrels_rows:
        qrels.setdefault(q, {})[d] = s
    write_beir_folder(path, x_docs, x_queries, qrels, doc_prefix="d")


def test_load_beir_dir_keeps_judged_queries_and_evaluates(tmp_path):
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    _write_beir(tmp_path / "b", docs, queries, [("q0", "d0", 1), ("q2", "d3", 2)])
    data = load_beir_dir(tmp_path / "b")
    assert data.query_ids == ["q0", "q2"] and data.queries_x.shape == (2, 4)
    assert data.qrels == {"q0": {"d0": 1}, "q2": {"d3": 2}}
    assert dataset_kind(tmp_path / "b") == "beir"
    res = evaluate_beir(data, k=10, depth=2)
    # q0 finds d0 first (ndcg 1); q2 = e1 ties d0, d2, d3 at 0 after d1 -> d3 at rank 4 (> depth 2)
    assert res["ndcg@10"] == pytest.approx((1 + 1 / L2(5)) / 2)
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["n_queries"] == 2 and res["n_skipped"] == 0


def test_load_beir_dir_errors(tmp_path):
    _write_beir(tmp_path / "b", np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), [("q9", "d0", 1)])
    with pytest.raises(DataError, match="without an embedding"):
        load_beir_dir(tmp_path / "b")
    (tmp_path / "b" / "corpus_ids.txt").write_text("d0\n")
    with pytest.raises(DataError, match="ids"):
        load_beir_dir(tmp_path / "b")
    with pytest.raises(DataError, match="missing"):
        load_beir_dir(tmp_path / "nothing")
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataError, match="not a number"):
        read_qrels(tmp_path / "bad.tsv")


def test_load_banking77_dir_parses_quoted_csv(tmp_path):
    d = tmp_path / "banking77"
    d.mkdir()
    (d / "train.csv").write_text('text,category\n"Hi, where is my card?",card_arrival\nrate?,exchange_rate\n')
    (d / "test.csv").write_text('text,category\n"a ""quoted"", text",exchange_rate\n')
    (d / "categories.json").write_text(json.dumps(["exchange_rate", "card_arrival"]))
    np.save(d / "train_emb.npy", np.array([[1, 0], [0, 1]], np.float32))
    np.save(d / "test_emb.npy", np.array([[0.1, 1]], np.float32))
    data = load_banking77_dir(d)
    assert data.labels == ["exchange_rate", "card_arrival"]
    assert data.train_y.tolist() == [1, 0] and data.test_y.tolist() == [0]
    assert evaluate_banking77(data) == 1.0
    assert dataset_kind(d) == "banking77"
    np.save(d / "test_emb.npy", np.ones((2, 2), np.float32))
    with pytest.raises(DataError, match="labels"):
        load_banking77_dir(d)


# ------------------------------------------------------------------ the published dense figures
@pytest.mark.realdata
def test_dense_baselines_reproduce_published_figures(data_dir):
    b77 = load_banking77_dir(data_dir / "banking77")
    assert round(evaluate_banking77(b77), 4) == 0.9205
    sf = load_beir_dir(data_dir / "scifact")
    res = evaluate_beir(sf)
    assert round(res["ndcg@10"], 4) == 0.6451
    assert round(res["recall@10"], 4) == 0.7833 and round(res["recall@100"], 4) == 0.9250
    assert (res["n_queries"], res["n_skipped"]) == (300, 0)




def test_find_datasets_and_load_dataset(tmp_path):
    from bench.loaders import load_dataset
    from tests.helpers import clustered, write_banking77_folder

    x, y = clustered(60, 4, 3, seed=1)
    write_banking77_folder(tmp_path / "banking77", x, y, 40)
    write_beir_folder(tmp_path / "tiny", x[:20], x[:5])
    (tmp_path / "notes").mkdir()
    found = find_datasets(tmp_path)
    assert found == {"banking77": ("banking77", tmp_path / "banking77"), "tiny": ("beir", tmp_path / "tiny")}
    assert find_datasets(tmp_path / "tiny") == {"tiny": ("beir", tmp_path / "tiny")}
    assert len(load_dataset("banking77", tmp_path / "banking77").train_x) == 40
    assert load_dataset("beir", tmp_path / "tiny").query_ids == ["q0", "q1", "q2", "q3", "q4"]


def test_banking77_two_stage_search_re_scores_the_candidates(tmp_path):
    from tests.helpers import clustered, write_banking77_folder

    x, y = clustered(200, 8, 4, noise=0.4, seed=2)
    write_banking77_folder(tmp_path / "b", x, y, 150)
    data = load_banking77_dir(tmp_path / "b")
    exact = evaluate_banking77(data, scorer="dot")
    # a first stage that ranks backwards, re-scored over every training row: the exact answer again
    back = evaluate_banking77(data, encode_queries=lambda a: -a, rescore_queries=lambda a: a, candidates=150)
    assert back == pytest.approx(exact)
    # re-scoring only the few worst rows cannot find the nearest neighbours
    assert evaluate_banking77(data, encode_queries=lambda a: -a, rescore_queries=lambda a: a, candidates=1) < exact
