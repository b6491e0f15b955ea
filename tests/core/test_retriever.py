"""Retriever: sparse search in the store + exact re-ranking, on the memory store and both embedded engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_vdb.adapters import open_store
from csr_vdb.adapters.base import Hit
from csr_vdb.config import CSRConfig
from csr_vdb.errors import ConfigError, DataError, StoreError
from csr_vdb.model import CSREncoder
from csr_vdb.retriever import Retriever
from csr_vdb.sparse import SparseVectors
from tests.helpers import clustered

N, D = 240, 16
KINDS = ["memory", "milvus", "qdrant-edge"]


@pytest.fixture(scope="module")
def encoder() -> CSREncoder:
    torch.manual_seed(0)
    return CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6), device="cpu")


@pytest.fixture(scope="module", params=KINDS)
def world(request, tmp_path_factory, encoder):
    """A dense source, a sparse target with dense kept, and a lean target (no dense)."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind.replace("-", "_"))
    uri = {"memory": None, "milvus": str(root / "r.db"), "qdrant-edge": str(root / "q")}[kind]
    store = open_store(kind, uri)
    x, labels = clustered(N, D, 6, seed=3)
    ids = [int(i) * 7 + 1 for i in range(N)]
    payloads = [{"label": int(lab), "text": f"row {i}"} for i, lab in enumerate(labels)]
    store.create_dense_collection("src", D, metric="cosine")
    store.insert_dense("src", ids, x, payloads)
    codes = encoder.encode(x)
    for name, keep in (("full", True), ("lean", False)):
        store.create_sparse_collection(name, like="src", keep_dense=keep)
        store.upsert(name, ids, codes, payloads, dense=x if keep else None)
        store.flush(name)
    yield store, x, ids, payloads, codes
    store.close()


def _exact_dense(x: np.ndarray, q: np.ndarray, ids: list[int], top_k: int) -> list[list[int]]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :top_k]
    return [[ids[j] for j in row] for row in order]


def test_rerank_over_all_rows_equals_exact_dense_search(world, encoder):
    store, x, ids, payloads, _ = world
    r = Retriever(store, "full", encoder, device="cpu")
    q = x[:12] + 0.05 * np.random.default_rng(1).normal(size=(12, D)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    hits = r.search(q, top_k=5, candidates=N, rerank=True)
    assert [[h.id for h in hs] for hs in hits] == _exact_dense(x, qn, ids, 5)
    by_id = dict(zip(ids, range(N)))
    for qi, hs in enumerate(hits):
        for h in hs:
            assert isinstance(h, Hit)
            assert h.payload == payloads[by_id[h.id]]
            assert h.score == pytest.approx(float(qn[qi] @ x[by_id[h.id]]), abs=1e-5)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)


def test_rerank_never_leaves_the_sparse_candidates(world, encoder):
    store, x, ids, _, _ = world
    r = Retriever(store, "full", encoder, device="cpu")
    cand = r.search(x[:8], top_k=20, rerank=False)
    rer = r.search(x[:8], top_k=5, candidates=20, rerank=True)
    for c, hs in zip(cand, rer):
        assert {h.id for h in hs} <= {h.id for h in c}
        assert len(hs) == 5


def test_sparse_only_scores_are_code_dot_products(world, encoder):
    store, x, ids, _, codes = world
    r = Retriever(store, "full", encoder, device="cpu")
    q = x[20:26]
    hits = r.search(q, top_k=4, rerank=False)
    qc = encoder.encode_queries(q).to_dense()
    dc = codes.to_dense()
    by_id = dict(zip(ids, range(N)))
    for qi, hs in enumerate(hits):
        assert len(hs) == 4
        for h in hs:
            assert h.score == pytest.approx(float(qc[qi] @ dc[by_id[h.id]]), rel=1e-4, abs=1e-5)


def test_search_alone_keeps_the_full_query_width_of_a_narrowed_model(world, encoder):
    # k_query narrows the search of a re-scored query path; the database's ranking alone (rerank=False)
    # is the answer, so its query keeps the full decoder width
    store, x, ids, _, codes = world
    narrowed = CSREncoder(encoder.config.model_copy(update={"k_query": 3}), device="cpu")
    narrowed.load_state_dict(encoder.state_dict())
    r = Retriever(store, "full", narrowed, device="cpu", query_projection="decoder")
    q = x[60:66]
    hits = r.search(q, top_k=4, rerank=False)
    full = encoder.encode_queries(q, projection="decoder")
    assert full.width == 64 and narrowed.encode_queries(q, projection="decoder").width == 3
    s = full.to_dense().astype(np.float64) @ codes.to_dense().T.astype(np.float64)
    for qi, hs in enumerate(hits):
        np.testing.assert_allclose([h.score for h in hs], np.sort(s[qi])[::-1][:4], rtol=1e-4, atol=1e-5)


def test_decoder_projection_queries_search_every_store(world, encoder):
    store, x, ids, _, codes = world
    q = x[60:66]
    r = Retriever(store, "full", encoder, device="cpu", query_projection="decoder")
    hits = r.search(q, top_k=4, rerank=False)
    qc = encoder.encode_queries(q, projection="decoder")
    assert qc.width == 64 and (qc.values >= 0).all()  # 16 k capped at h, non-negative (Milvus requires it)
    s = qc.to_dense().astype(np.float64) @ codes.to_dense().T.astype(np.float64)
    for qi, hs in enumerate(hits):
        np.testing.assert_allclose([h.score for h in hs], np.sort(s[qi])[::-1][:4], rtol=1e-4, atol=1e-5)
    # re-ranking all rows is still the exact dense order
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rer = r.search(q, top_k=5, candidates=N, rerank=True)
    assert [[h.id for h in hs] for hs in rer] == _exact_dense(x, qn, ids, 5)
    with pytest.raises(ConfigError, match="query_projection"):
        Retriever(store, "full", encoder, query_projection="sideways")


def test_lean_collection_reranks_by_exact_sparse_dot(world, encoder):
    store, x, ids, _, codes = world
    r = Retriever(store, "lean", encoder, device="cpu")
    assert not r.has_dense
    q = x[40:46]
    hits = r.search(q, top_k=5, candidates=N)
    s = encoder.encode_queries(q).to_dense().astype(np.float64) @ codes.to_dense().T.astype(np.float64)
    for qi, hs in enumerate(hits):
        got = [h.score for h in hs]
        want = np.sort(s[qi])[::-1][:5]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_lean_collection_with_bias_latent_reranks_by_the_exact_reconstruction_cosine(world):
    """Pursuit codes with the bias latent: the store searches with the positive query, the re-ranker
    scores the signed one, which is the query's exact cosine with each document's reconstruction."""
    store, x, ids, _, _ = world
    torch.manual_seed(1)
    enc = CSREncoder(
        CSRConfig(input_dim=D, hidden_dim=64, k=6, normalize_codes=True, query_projection="decoder",
                  doc_codes="pursuit", bias_latent=True),
        device="cpu",
    )
    with torch.no_grad():
        enc.b_pre.copy_(torch.from_numpy(x.mean(axis=0)))
    codes = enc.encode(x)
    if not store.has_collection("lean_bias"):
        store.create_sparse_collection("lean_bias", like="src", keep_dense=False)
        store.upsert("lean_bias", ids, codes, None)
        store.flush("lean_bias")
    r = Retriever(store, "lean_bias", enc, device="cpu")
    q = x[100:108] + 0.2 * np.random.default_rng(4).normal(size=(8, D)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = qn.astype(np.float64) @ enc.decode(codes).T.astype(np.float64)
    pos = enc.encode_queries(q).to_dense().astype(np.float64) @ codes.to_dense().T.astype(np.float64)
    assert not all(np.argmax(exact, axis=1) == np.argmax(pos, axis=1))  # the two orders differ somewhere
    hits = r.search(q, top_k=5, candidates=N)
    first = r.search(q, top_k=5, rerank=False)
    by_id = dict(zip(ids, range(N)))
    for qi in range(len(q)):
        assert [by_id[h.id] for h in hits[qi]] == list(np.argsort(-exact[qi], kind="stable")[:5])
        np.testing.assert_allclose([h.score for h in hits[qi]], np.sort(exact[qi])[::-1][:5], atol=1e-5)
        np.testing.assert_allclose([h.score for h in first[qi]], np.sort(pos[qi])[::-1][:5], rtol=1e-4, atol=1e-5)


def test_text_queries_go_through_the_text_model(world, encoder):
    store, x, ids, _, _ = world
    texts = {"alpha": x[5], "beta": x[9]}
    seen: list[list[str]] = []

    def embed(batch: list[str]) -> np.ndarray:
        seen.append(list(batch))
        return np.stack([texts[t] for t in batch])

    r = Retriever(store, "full", encoder, text_model=embed, device="cpu")
    hits = r.search(["alpha", "beta"], top_k=1, candidates=N)
    assert seen == [["alpha", "beta"]]
    assert [hs[0].id for hs in hits] == [ids[5], ids[9]]
    assert r.search("alpha", top_k=1, candidates=N)[0][0].id == ids[5]


def test_errors(world, encoder):
    store, x, _, _, _ = world
    with pytest.raises(StoreError, match="no sparse field"):
        Retriever(store, "src", encoder)
    r = Retriever(store, "full", encoder, device="cpu")
    bad = x[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError):
        r.search(bad)
    with pytest.raises(DataError):
        r.search(np.ones((2, D + 1), np.float32))
    with pytest.raises(ConfigError, match="text model"):
        r.search("a question")
    with pytest.raises(ConfigError):
        r.search(x[:1], top_k=0)
    with pytest.raises(ConfigError, match="rerank must be"):
        r.search(x[:1], rerank="sideways")
    with pytest.raises(ConfigError, match="kept no dense vectors"):
        Retriever(store, "lean", encoder).search(x[:1], rerank="dense")
    other = CSREncoder(CSRConfig(input_dim=D * 2, hidden_dim=64, k=4), device="cpu")
    with pytest.raises(ConfigError, match="input_dim"):
        Retriever(store, "full", other)


def test_package_exports_are_lazy():
    import subprocess
    import sys

    code = (
        "import sys, csr_vdb; "
        "heavy = [m for m in ('torch', 'pymilvus', 'qdrant_client', 'qdrant_edge', 'sentence_transformers', 'click') "
        "if m in sys.modules]; "
        "assert not heavy, heavy; "
        "assert csr_vdb.Retriever.__name__ == 'Retriever'; "
        "assert csr_vdb.CSREncoder.__name__ == 'CSREncoder' and 'torch' in sys.modules; "
        "assert 'sentence_transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _Counting:
    """A proxy that counts the calls of each method of the object it wraps."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return call


@pytest.mark.parametrize("rerank", ["codes", "dense", False])
def test_one_query_is_encoded_once_and_sent_to_the_store_once(world, rerank):
    store, x, ids, payloads, _ = world
    torch.manual_seed(2)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6, query_projection="decoder"), device="cpu")
    counting_store, counting_enc = _Counting(store), _Counting(enc)
    r = Retriever(counting_store, "full", counting_enc, device="cpu")
    counting_store.calls.clear()
    hits = r.search(x[:3], top_k=4, candidates=30, rerank=rerank)
    assert counting_enc.calls == {"encode_queries": 1}
    asked = {"codes": "search_candidates", "dense": "search_candidates", False: "search_sparse"}[rerank]
    assert counting_store.calls == {asked: 1}  # no second fetch of the candidates' vectors
    by_id = dict(zip(ids, range(N)))
    assert all(h.payload == payloads[by_id[h.id]] for hs in hits for h in hs)


def test_decoder_queries_are_the_encoders_own_queries(world):
    """The search query derived from the one signed projection is the encoder's decoder query."""
    from csr_vdb.retriever import decoder_queries

    _, x, _, _, _ = world
    torch.manual_seed(3)
    for cfg in (
        dict(normalize_codes=False, bias_latent=False),
        dict(normalize_codes=True, bias_latent=True, doc_codes="pursuit"),
    ):
        enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6, k_query=9, query_projection="decoder", **cfg))
        search, signed = decoder_queries(enc, x[:20])
        want = enc.encode_queries(x[:20])
        np.testing.assert_array_equal(search.indices, want.indices)
        np.testing.assert_allclose(search.values, want.values, rtol=1e-6, atol=1e-7)
        assert search.dim == want.dim == enc.config.code_dim
        want_signed = enc.encode_queries(x[:20], signed=True)
        np.testing.assert_allclose(signed.to_dense(), want_signed.to_dense(), rtol=1e-6, atol=1e-7)


def test_retrieved_hit_is_the_contracts_hit():
    from csr_vdb.retriever import RetrievedHit

    assert RetrievedHit is Hit


def test_candidates_default_to_the_models_search_candidates(world):
    """``search()`` without ``candidates`` asks the store for the encoder's ``search_candidates``."""
    store, x, ids, _, _ = world
    torch.manual_seed(5)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6, query_projection="decoder", search_candidates=37),
                     device="cpu")
    asked = []
    real = store.search_candidates

    class Spy:
        def __getattr__(self, name):
            return getattr(store, name)

        def search_candidates(self, *args, **kwargs):
            asked.append(kwargs["limit"])
            return real(*args, **kwargs)

    r = Retriever(Spy(), "lean", enc, device="cpu")
    r.search(x[:2], top_k=5)
    r.search(x[:2], top_k=5, candidates=12)
    plain = Retriever(Spy(), "lean", enc.with_config(search_candidates=None), device="cpu")
    plain.search(x[:2], top_k=5)
    assert asked == [37, 12, 100]
    with pytest.raises(ConfigError, match="candidates"):
        r.search(x[:1], candidates=0)


def test_signed_queries_of_a_few_rows_are_projected_in_numpy_like_the_torch_path(encoder):
    """Small batches take a numpy product; the result is the torch path's to float32 rounding."""
    torch.manual_seed(6)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6, normalize_codes=True, query_projection="decoder",
                               doc_codes="pursuit", bias_latent=True), device="cpu")
    with torch.no_grad():
        enc.b_pre.copy_(torch.randn(D))
    x = np.random.default_rng(7).normal(size=(80, D)).astype(np.float32)
    many = enc.encode_queries(x, signed=True)  # 80 rows: torch
    few = SparseVectors.concat([enc.encode_queries(x[i : i + 10], signed=True) for i in range(0, 80, 10)])
    assert many.dim == few.dim == 65 and few.width == 65
    np.testing.assert_allclose(few.to_dense(), many.to_dense(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode_queries(torch.from_numpy(x[:3]), signed=True).to_dense(),
                               many.to_dense()[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError):
        enc.encode_queries(np.full((2, D), np.nan, np.float32), signed=True)


@pytest.mark.parametrize("rerank", ["codes", "dense", False])
@pytest.mark.parametrize("projection", ["decoder", "encoder"])
def test_query_vectors_are_checked_once(world, monkeypatch, rerank, projection):
    """One check per query vector on the whole search path: the encoder's. A second check of the
    same vectors (in `Retriever.embed`, or the re-ranker's of the queries or of the codes made of
    them) would show up here."""
    import csr_vdb.rerank as rerank_mod
    import csr_vdb.validation as validation
    from csr_vdb.rerank import Reranker

    store, x, _, _, _ = world
    torch.manual_seed(7)
    enc = CSREncoder(CSRConfig(input_dim=D, hidden_dim=64, k=6, query_projection=projection), device="cpu")
    r = Retriever(store, "full", enc, device="cpu")
    checks: list[object] = []
    dense_rows, codes_check, dense_queries = validation.invalid_dense_rows, rerank_mod.check_codes, Reranker._dense_queries

    def count_dense(a):
        checks.append(("dense", len(a)))
        return dense_rows(a)

    def count_codes(codes, what="codes"):
        if what == "query codes":
            checks.append(("query codes", len(codes)))
        return codes_check(codes, what)

    def count_queries(queries, n_lists, check_values=True):
        if check_values:
            checks.append(("reranker queries", n_lists))
        return dense_queries(queries, n_lists, check_values)

    monkeypatch.setattr(validation, "invalid_dense_rows", count_dense)  # every check_dense call
    monkeypatch.setattr(rerank_mod, "check_codes", count_codes)
    monkeypatch.setattr(Reranker, "_dense_queries", staticmethod(count_queries))
    hits = r.search(x[:3], top_k=4, candidates=30, rerank=rerank)
    assert checks == [("dense", 3)]
    assert [len(h) for h in hits] == [4, 4, 4]
    # the one check still refuses bad vectors, from texts too
    bad = x[:2].copy()
    bad[1, 3] = np.inf
    with pytest.raises(DataError, match="rows 1"):
        r.search(bad, rerank=rerank)
    with pytest.raises(DataError, match="NaN or inf"):
        Retriever(store, "full", enc, text_model=lambda t: bad[: len(t)], device="cpu").search(["a", "b"], rerank=rerank)
