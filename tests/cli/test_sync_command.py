"""`csr-vdb sync`, the live workflow and blue/green generations on both embedded engines: counts,
dry run, nothing to do, verify after sync, cutover's final sync, status generations, rollback between
generations, the eval drift check, and bad input (one line, its exit code, nothing written)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import DIM, EMBEDDED, ROWS, TINY


def _bytes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _content(cli, name: str = "docs_csr") -> list:
    """Every row of a collection: id, payload, dense vector bytes, sparse code."""
    store = cli.open()
    try:
        ids = [i for page in store.iter_payloads(name, 500, fields=[]) for i in page.ids]
        return sorted((str(r.id), repr(r.payload), r.dense.tobytes(), repr(r.sparse))
                      for r in store.fetch(name, ids, with_dense=True, with_sparse=True))
    finally:
        store.close()


def _change(cli, ids, x, payloads) -> None:
    """Two inserts, one vector update, one payload update, one delete in the source."""
    store = cli.open()
    try:
        rng = np.random.default_rng(2)
        store.insert_dense("docs", [100_001, 100_004], rng.normal(size=(2, DIM)).astype(np.float32),
                           [{"text": "new a"}, {"text": "new b"}])
        store.insert_dense("docs", ids[3:4], rng.normal(size=(1, DIM)).astype(np.float32), payloads[3:4])
        store.insert_dense("docs", ids[5:6], x[5:6], [{**payloads[5], "text": "edited"}])
        store.delete("docs", ids[7:8])
    finally:
        store.close()


@pytest.mark.parametrize("kind", EMBEDDED)
def test_sync_then_verify_cutover_and_a_second_generation(cli_factory, kind):
    cli, (x, ids, payloads) = cli_factory(kind)
    cli.json("train", "--collection", "docs", "--model", "model", *TINY)
    cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "model", "--batch-size", "64")
    nothing = cli.run("sync", "--collection", "docs").stdout
    assert nothing.startswith("nothing to do: 'docs_csr' already matches 'docs'")

    _change(cli, ids, x, payloads)
    before = (_bytes(cli.cwd / "state"), _content(cli))
    dry = cli.json("sync", "--collection", "docs", "--dry-run")
    assert (dry["status"], dry["inserts"], dry["reencodes"], dry["payload_updates"], dry["deletes"]) == (
        "dry-run", 2, 1, 1, 1)
    # the state folder byte for byte; the target by content (the engines rewrite their files on open)
    assert (_bytes(cli.cwd / "state"), _content(cli)) == before
    human = cli.run("sync", "--collection", "docs", "--dry-run").stdout
    assert "dry run: nothing written" in human and "payload updates" in human

    done = cli.json("sync", "--collection", "docs")
    assert (done["status"], done["changes"], done["rows_scanned"]) == ("synced", 5, ROWS + 1)
    ver = cli.json("verify", "--collection", "docs", "--sample", "50")
    assert ver["ok"] is True and ver["target_rows"] == ROWS + 1

    cut = cli.json("cutover", "--collection", "docs")
    assert (cut["current"], cut["synced"]) == ("docs_csr", 0)

    # a second generation with a retrained model, blue/green
    cli.json("train", "--collection", "docs", "--model", "model2", *TINY, "--seed", "7")
    cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "model2", "--target", "docs_csr_v2")
    assert cli.json("verify", "--collection", "docs", "--target", "docs_csr_v2", "--sample", "50")["ok"] is True
    cut2 = cli.json("cutover", "--collection", "docs", "--target", "docs_csr_v2")
    assert (cut2["previous"], cut2["current"]) == ("docs_csr", "docs_csr_v2")
    st = cli.json("status", "--collection", "docs", "--target", "docs_csr_v2")
    gens = {g["target"]: g for g in st["generations"]}
    assert set(gens) == {"docs_csr", "docs_csr_v2"}
    assert gens["docs_csr_v2"]["live"] and not gens["docs_csr"]["live"]
    assert gens["docs_csr"]["model_sha256"] != gens["docs_csr_v2"]["model_sha256"]
    assert gens["docs_csr"]["rows"] == gens["docs_csr_v2"]["rows"] == ROWS + 1
    table = cli.run("status", "--collection", "docs").stdout
    assert "generations (* = the alias points here)" in table and "docs_csr_v2" in table

    # the drift check on the live alias: sampled source rows against the generation it points to
    ev = cli.json("eval", "--collection", "docs_live", "--sample", "30", "--candidates", "30", "--min-recall", "0")
    assert (ev["source"], ev["target"]) == ("docs", "docs_csr_v2")
    res = cli.run("eval", "--collection", "docs_live", "--sample", "30", "--candidates", "30",
                  "--min-recall", "1", code=8)
    assert "below --min-recall 1" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    rb = cli.json("rollback", "--collection", "docs", "--target", "docs_csr_v2")
    assert (rb["previous"], rb["current"]) == ("docs_csr_v2", "docs_csr")  # the previous generation
    rb = cli.json("rollback", "--collection", "docs")
    assert rb["current"] == "docs"  # the first generation returns to the source


@pytest.mark.parametrize("kind", EMBEDDED)
def test_sync_bad_input_one_line_and_nothing_written(cli_factory, kind):
    cli, (x, ids, payloads) = cli_factory(kind, rows=120)
    res = cli.run("sync", "--collection", "docs", code=7)
    assert "no migration of 'docs'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    cli.run("sync", "--collection", "nope", code=6)
    cli.json("train", "--collection", "docs", "--model", "model", *TINY)
    cli.json("migrate", "--to", "sparse", "--collection", "docs", "--model", "model")
    shutil.copytree(cli.cwd / "model", cli.cwd / "other")
    cli.json("train", "--collection", "docs", "--model", "other", *TINY, "--seed", "3")
    _change(cli, ids, x, payloads)
    before, target = _bytes(cli.cwd / "state"), _content(cli)

    res = cli.run("sync", "--collection", "docs", "--model", "other", code=7)
    assert "is not the one 'docs_csr' was made with" in res.stderr and "docs_csr_v2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    cli.run("sync", "--collection", "docs", "--model", "model", "--dry-run")  # its own model is fine

    store = cli.open()  # the source re-created with another dimension
    try:
        store.drop("docs")
        store.create_dense_collection("docs", DIM + 1)
        store.insert_dense("docs", ids[:2], np.ones((2, DIM + 1), np.float32))
    finally:
        store.close()
    res = cli.run("sync", "--collection", "docs", code=7)
    assert "changed schema" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert (_bytes(cli.cwd / "state"), _content(cli)) == (before, target)
