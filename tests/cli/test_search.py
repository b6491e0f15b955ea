"""`csr-vdb search` on a migrated Qdrant Edge collection: every mode, the old name of "codes", query input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from csr_vdb.adapters import open_store
from csr_vdb.cli.ops import load_encoder, migrate_collection
from csr_vdb.cli.search import RERANK, load_query_vectors
from csr_vdb.errors import DataError
from tests.cli.conftest import DIM, Cli, trained_source

KIND = "qdrant-edge"


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    uri, x, ids, _ = trained_source(root, KIND)
    store = open_store(KIND, uri)
    try:
        migrate_collection(store, dict(store_kind=KIND, uri=uri, source="docs", model_dir=str(root / "model")),
                           device="cpu", state_base=root / "state")
    finally:
        store.close()  # Qdrant Edge: one open store per directory; the CLI opens its own
    np.save(root / "q.npy", x[:3])
    return Cli(KIND, uri, root), str(root / "q.npy"), x, ids


def _ids(hits):
    return [[h["id"] for h in per_query] for per_query in hits]


def test_codes_mode_is_the_library_re_score_and_rescore_still_works(migrated):
    cli, q, x, ids = migrated
    args = ("search", "--collection", "docs_csr", "--vectors", q, "--top-k", "4")
    codes = cli.json(*args, "--mode", "codes")["results"]
    assert list(codes) == ["codes"]
    old = cli.run(*args, "--mode", "rescore", "--json")
    assert "DeprecationWarning: --mode rescore is deprecated; use --mode codes" in old.stderr
    rescore = json.loads(old.stdout)["results"]["rescore"]
    assert _ids(rescore) == _ids(codes["codes"])
    for a, b in zip(rescore, codes["codes"]):
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-6)
        assert [h["score"] for h in a] == sorted((h["score"] for h in a), reverse=True)

    # the same hits as the library's rerank="codes", which both names map to
    from csr_vdb.retriever import Retriever

    assert RERANK["codes"] == RERANK["rescore"] == "codes"
    store = cli.open()
    try:
        lib = Retriever(store, "docs_csr", load_encoder(cli.cwd / "model", "cpu"), device="cpu")
        hits = lib.search(x[:3], top_k=4, rerank="codes")
    finally:
        store.close()
    assert [[h.id for h in hs] for hs in hits] == _ids(codes["codes"])


def test_all_modes_side_by_side(migrated):
    cli, q, _, ids = migrated
    res = cli.json("search", "--collection", "docs_csr", "--vectors", q, "--mode", "all", "--top-k", "3")
    assert list(res["results"]) == ["dense", "sparse", "rerank", "codes"] and set(res["ms"]) == set(res["results"])
    assert res["queries"] == [f"{q}[{i}]" for i in range(3)]
    for qi in range(3):
        assert res["results"]["dense"][qi][0]["id"] == ids[qi]
        assert all(len(res["results"][m][qi]) == 3 for m in res["results"])
    human = cli.run("search", "--collection", "docs_csr", "--vectors", q, "--mode", "sparse", "--show", "text").stdout
    assert human.count("query: ") == 3 and "[sparse]" in human and "ms/query)" in human and "passage " in human


def test_query_input_is_checked(migrated, tmp_path):
    cli, q, _, _ = migrated
    both = cli.run("search", "text", "--collection", "docs_csr", "--vectors", q, code=2)
    assert "not both" in both.stderr
    cli.run("search", "--collection", "docs_csr", code=2)
    np.save(tmp_path / "ints.npy", np.ones((2, DIM), np.int64))
    assert "expected a float array" in cli.run("search", "--collection", "docs_csr", "--vectors",
                                               str(tmp_path / "ints.npy"), code=3).stderr
    cli.run("search", "--collection", "docs_csr", "--mode", "bogus", "--vectors", q, code=2)


def test_load_query_vectors(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(DIM, dtype=np.float64))
    one = load_query_vectors(tmp_path / "one.npy")
    assert one.shape == (1, DIM) and one.dtype == np.float32
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a numeric .npy file"):
        load_query_vectors(tmp_path / "junk.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DataError, match=r"expected a float array \[queries, dim\]"):
        load_query_vectors(tmp_path / "cube.npy")
