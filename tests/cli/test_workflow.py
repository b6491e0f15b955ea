"""The full CLI path on both embedded engines: export, train, migrate (dry run first), status,
verify, cutover, search, eval, rollback — every command's --json parsed and checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import DIM, EMBEDDED, ROWS, TINY


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("kind", EMBEDDED)
def test_full_workflow(cli_factory, kind):
    cli, (x, ids, payloads) = cli_factory(kind)
    state = cli.cwd / "state"

    # export: a .npy equal to the source, ids in order
    exp = cli.json("export", "--collection", "docs", "--out", "exp/docs.npy")
    assert exp["rows"] == ROWS and exp["dim"] == DIM
    arr = np.load(cli.cwd / "exp/docs.npy")
    got_ids = [int(s) for s in (cli.cwd / "exp/docs.ids.txt").read_text().split()]
    assert got_ids == sorted(ids)
    order = [ids.index(i) for i in got_ids]
    np.testing.assert_allclose(arr, x[order], atol=1e-6)

    # train from the store (streamed through a memmap export), tiny model
    tr = cli.json("train", "--collection", "docs", "--model", "model", *TINY)
    assert (tr["input_dim"], tr["hidden_dim"], tr["k"], tr["epochs"]) == (DIM, 64, 4, 2)
    assert (cli.cwd / "model/model.safetensors").is_file()
    assert not list((state / "exports").glob("*.npy")), "the temporary export must be removed"

    # dry run: prints the plan, writes nothing (no target, no state files)
    before = _tree(state)
    dry = cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "model", "--dry-run")
    assert dry["plan"]["target"] == "docs_csr" and dry["result"]["dry_run"] is True
    assert dry["result"]["rows_written"] == ROWS
    assert _tree(state) == before
    store = cli.open()
    assert not store.has_collection("docs_csr")
    store.close()

    mig = cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "model", "--batch-size", "64")
    assert mig["status"] == "complete" and mig["rows_done"] == ROWS and mig["target"] == "docs_csr"

    # status is read-only
    before = _tree(state)
    st = cli.json("status", "--collection", "docs")
    assert st["state"] == "complete" and st["rows_done"] == ROWS and st["target_rows"] == ROWS
    assert _tree(state) == before

    ver = cli.json("verify", "--collection", "docs", "--sample", "50")
    assert ver["ok"] is True and ver["target_rows"] == ROWS and ver["payload_mismatches"] == 0

    cut = cli.json("cutover", "--collection", "docs")
    assert cut["alias"] == "docs_live" and cut["current"] == "docs_csr"

    # ids, payloads and dense vectors intact in the target, reached through the alias
    store = cli.open()
    try:
        recs = store.fetch("docs_live", ids, with_dense=True, with_sparse=True)
        assert [r.id for r in recs] == ids
        assert [r.payload for r in recs] == payloads
        np.testing.assert_allclose(np.stack([r.dense for r in recs]), x, atol=1e-6)
        assert all(0 < len(r.sparse[0]) <= 4 for r in recs)
    finally:
        store.close()

    # search through the alias with query vectors: all three modes, model found from the plan
    np.save(cli.cwd / "q.npy", x[:3])
    res = cli.json("search", "--collection", "docs_live", "--vectors", "q.npy", "--mode", "all", "--top-k", "3")
    assert set(res["results"]) == {"dense", "sparse", "rerank", "codes"}
    for qi in range(3):
        assert res["results"]["dense"][qi][0]["id"] == ids[qi]
        assert res["results"]["rerank"][qi][0]["id"] == ids[qi]  # re-rank restores the exact top hit
        assert res["results"]["rerank"][qi][0]["payload"] == payloads[qi]
    human = cli.run("search", "--collection", "docs_live", "--vectors", "q.npy", "--top-k", "2").stdout
    assert "[rerank]" in human and "passage 0" in human

    ev = cli.json("eval", "--collection", "docs", "--sample", "40", "--candidates", "50")
    assert ev["queries"] == 40 and 0.0 <= ev["recall_sparse"] <= ev["recall_rerank"] <= 1.0
    assert ev["dense_bytes_per_vector"] == DIM * 4 and ev["sparse_bytes_per_vector"] <= 4 * 8
    assert set(ev["latency_ms"]) == {"dense", "sparse", "rerank", "rescore"} and 0.0 <= ev["recall_rescore"] <= 1.0
    # the recipe's model makes decoder-projection queries; TopK (encoder) queries give another
    # sparse ranking under the same rules
    ev_dec = cli.json("eval", "--collection", "docs", "--sample", "40", "--candidates", "50",
                      "--query-projection", "encoder")
    assert ev_dec["queries"] == 40 and 0.0 <= ev_dec["recall_sparse"] <= ev_dec["recall_rerank"] <= 1.0
    assert ev_dec["recall_sparse"] != ev["recall_sparse"] or ev_dec["recall_rerank"] != ev["recall_rerank"]

    rb = cli.json("rollback", "--collection", "docs")
    assert rb["current"] == "docs" and rb["previous"] == "docs_csr"
    store = cli.open()
    try:
        assert store.get_alias("docs_live") == "docs"
        assert store.count("docs") == ROWS
    finally:
        store.close()


@pytest.mark.parametrize("kind", EMBEDDED)
def test_resume_and_lean_target(cli_factory, kind):
    cli, (x, ids, _) = cli_factory(kind, rows=120)
    # this model makes its query codes with the decoder projection (non-negative, so Milvus takes them)
    # and its document codes by matching pursuit
    cli.run("train", "--from-npy", _save(cli.cwd, x), "--model", "m", *TINY, "--query-projection", "decoder",
            "--doc-codes", "pursuit")
    args = ("migrate", "--to", "sparse", "--collection", "docs", "--model", "m", "--target", "lean", "--drop-dense")
    cli.run(*args)
    again = cli.json(*args, "--resume")
    assert again["resumed"] is True and again["rows_written"] == 0 and again["rows_done"] == 120
    store = cli.open()
    try:
        info = store.describe("lean")
        assert info.sparse_field == "csr" and not info.vector_field
    finally:
        store.close()
    # search a lean collection: dense mode is skipped in "all", re-rank falls back to exact sparse
    np.save(cli.cwd / "q.npy", x[:2])
    res = cli.json("search", "--collection", "lean", "--vectors", "q.npy", "--mode", "all", "--model", "m")
    assert set(res["results"]) == {"sparse", "rerank"}
    for s, r in zip(res["results"]["sparse"], res["results"]["rerank"]):
        assert [h["score"] for h in r] == sorted((h["score"] for h in r), reverse=True)
    # the database scored the decoder-projection query codes at their full width (the sparse mode's
    # ranking is the answer, not a candidate list): its best score is their exact best
    from csr_vdb.model import CSREncoder

    enc = CSREncoder.load(cli.cwd / "m", device="cpu")
    assert enc.config.query_projection == "decoder" and enc.config.doc_codes == "pursuit"
    assert enc.config.bias_latent  # the recipe's
    codes = enc.encode(x).to_dense()
    alone = enc.encode_queries(x[:2], k=enc.config.k_query_alone())
    exact = alone.to_dense() @ codes.T
    assert alone.width > enc.config.k
    for qi, s in enumerate(res["results"]["sparse"]):
        assert s[0]["score"] == pytest.approx(float(exact[qi].max()), rel=1e-4)
    # the re-ranker scored the stored codes with the signed query: <x, reconstruction>, exactly
    signed = enc.encode_queries(x[:2], signed=True).to_dense().astype(np.float64) @ codes.T.astype(np.float64)
    row = {i: j for j, i in enumerate(ids)}
    for qi, r in enumerate(res["results"]["rerank"]):
        assert [h["score"] for h in r] == pytest.approx([signed[qi, row[h["id"]]] for h in r], abs=1e-5)
        assert r[0]["score"] == pytest.approx(float(signed[qi].max()), abs=1e-5)
    # --query-projection overrides the model's setting per search
    enc_q = cli.json("search", "--collection", "lean", "--vectors", "q.npy", "--mode", "sparse", "--model", "m",
                     "--query-projection", "encoder")
    exact_enc = enc.encode_queries(x[:2], projection="encoder").to_dense() @ enc.encode(x).to_dense().T
    for qi, s in enumerate(enc_q["results"]["sparse"]):
        assert s[0]["score"] == pytest.approx(float(exact_enc[qi].max()), rel=1e-4)


def _save(root: Path, x: np.ndarray) -> str:
    p = root / "train.npy"
    np.save(p, x.astype(np.float16))
    return str(p)


def test_sharded_migration_two_workers(cli_factory):
    cli, (x, ids, _) = cli_factory("qdrant-edge", rows=150)
    cli.run("train", "--from-npy", _save(cli.cwd, x), "--model", "m", *TINY)
    done = 0
    for shard in ("0/2", "1/2"):
        res = cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "m", "--shard", shard)
        assert 0 < res["rows_written"] < 150
        done += res["rows_written"]
    assert done == 150
    ver = cli.json("verify", "--collection", "docs", "--shard", "1/2", "--sample", "30")
    assert ver["ok"] is True and ver["shard_count"] == 2 and ver["target_rows"] == 150
    # verify covers every shard, so any shard's plan may cut over
    assert cli.json("cutover", "--collection", "docs", "--shard", "0/2")["current"] == "docs_csr"


def test_progress_bars_only_on_a_terminal(cli_factory, monkeypatch):
    from csr_vdb.cli import ui

    cli, _ = cli_factory("qdrant-edge", rows=120)
    quiet = cli.run("export", "--collection", "docs", "--out", "a.npy", "--batch-size", "50")
    assert "rows/s]" not in quiet.stderr  # CliRunner's stderr is not a TTY
    monkeypatch.setattr(ui.App, "bars", property(lambda self: not self.json))
    shown = cli.run("export", "--collection", "docs", "--out", "b.npy", "--batch-size", "50")
    assert "120/120" in shown.stderr and "rows/s]" in shown.stderr and "export" in shown.stderr
    js = cli.run("export", "--collection", "docs", "--out", "c.npy", "--batch-size", "50", "--json")
    assert js.stderr == ""


@pytest.mark.parametrize("kind", EMBEDDED)
def test_export_str_ids_float16(cli_factory, kind):
    import uuid

    from csr_vdb.adapters import open_store

    cli, _ = cli_factory(kind, rows=60)
    x = np.random.default_rng(0).normal(size=(70, DIM)).astype(np.float32)
    ids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(70)]
    store = open_store(kind, cli.uri)
    try:
        store.create_dense_collection("strs", DIM, metric="ip", id_type="str")
        store.insert_dense("strs", ids, x, [{"n": i} for i in range(70)])
        store.flush("strs")
    finally:
        store.close()
    res = cli.json("export", "--collection", "strs", "--out", "s.npy", "--dtype", "float16", "--batch-size", "16")
    assert (res["rows"], res["dtype"], res["id_type"], res["metric"]) == (70, "float16", "str", "ip")
    arr = np.load(cli.cwd / "s.npy", mmap_mode="r")
    assert arr.dtype == np.float16 and arr.shape == (70, DIM)
    got = (cli.cwd / "s.ids.txt").read_text().split("\n")[:-1]
    assert sorted(got) == sorted(ids) and len(got) == 70
    pos = {i: n for n, i in enumerate(ids)}
    np.testing.assert_allclose(arr.astype(np.float32), x[[pos[i] for i in got]], rtol=1e-3, atol=1e-3)
    assert not list(cli.cwd.glob("*.part"))
