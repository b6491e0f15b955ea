"""`csr-vdb demo`: the whole workflow on a real corpus (stdlib docstrings) in an embedded database."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.errors import VerificationError
from csr_vdb.migrations import default_alias, default_target

logger = logging.getLogger(__name__)

COLLECTION = "docs"
ALIAS = default_alias(COLLECTION)
TARGET = default_target(COLLECTION)
DEMO_QUERIES = (
    "read a JSON document from a file",
    "compress data with gzip",
    "parse command line arguments",
    "send an email message",
    "format a date as a string",
)


def _embed_corpus(app: Any, texts: list[str], cache: Path, embedder: Any) -> np.ndarray:
    """Embeddings of the corpus, cached in ``cache`` (keyed by a hash of the texts)."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text())["sha256"] == key:
                x = np.load(cache)
                if x.shape[0] == len(texts):
                    app.info(f"  embeddings: cached ({cache})")
                    return x
        except (ValueError, KeyError, OSError) as exc:
            logger.debug("ignoring embedding cache: %s", exc)
    with app.progress("embed", "text") as bar:
        x = embedder.embed(texts, progress=bar)
    np.save(cache, x)
    meta.write_text(json.dumps({"sha256": key, "rows": len(texts), "model": embedder.name}) + "\n")
    return x


def _plot(curve: list[dict[str, float]], dense_bytes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ks, [r["recall"] for r in curve], "o-", label="CSR sparse")
    a.plot(ks, [r["recall_rescore"] for r in curve], "d-", label="CSR sparse + re-score top-100 from codes")
    a.plot(ks, [r["recall_rerank"] for r in curve], "s-", label="CSR sparse + dense re-rank top-100")
    a.plot(ks, [r["pca_recall"] for r in curve], "^--", label="PCA, same bytes (2k dims)")
    a.set_xscale("log", base=2)
    a.set_xlabel("k (non-zeros per vector)")
    a.set_ylabel("neighbour recall@10 vs dense")
    a.set_ylim(0, 1.02)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    bts = [r["bytes_per_vector"] for r in curve]
    b.plot(bts, [r["recall"] for r in curve], "o-", label="CSR sparse")
    b.plot(bts, [r["recall_rescore"] for r in curve], "d-", label="CSR + re-score (codes)")
    b.plot(bts, [r["recall_rerank"] for r in curve], "s-", label="CSR + dense re-rank")
    b.plot(bts, [r["pca_recall"] for r in curve], "^--", label="PCA")
    b.plot([dense_bytes], [1.0], "k*", markersize=12, label="dense float32")
    b.set_xscale("log", base=2)
    b.set_xlabel("bytes per vector")
    b.set_ylim(0, 1.02)
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle("csr-vdb demo: quality vs size (stdlib docstrings, MiniLM 384-d)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Steps:
    """Announces the demo's numbered steps on stderr and times each one."""

    def __init__(self, app: Any, total: int) -> None:
        self.app, self.total, self.done = app, total, 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, message: str) -> Iterator[None]:
        self.done += 1
        self.app.info(f"[{self.done}/{self.total}] {message}")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)


def _dense_collection(app: Any, store_kind: str, uri: str, passages: list[Any], x: np.ndarray) -> Any:
    """A new embedded store holding the corpus as the dense collection `COLLECTION`."""
    from csr_vdb.adapters import open_store

    store = open_store(store_kind, uri)
    app._stores.append(store)
    store.create_dense_collection(COLLECTION, x.shape[1], metric="cosine", id_type="int")
    ids = [p.id for p in passages]
    for s in range(0, len(ids), 500):
        store.insert_dense(COLLECTION, ids[s : s + 500], x[s : s + 500], [p.payload() for p in passages[s : s + 500]])
    store.flush(COLLECTION)
    return store


def _side_by_side(app: Any, store: Any, encoder: Any, qx: np.ndarray, queries: tuple[str, ...]) -> list[dict[str, Any]]:
    """The top 3 names of each query by dense search, sparse search and sparse + re-rank (through the alias)."""
    from csr_vdb.retriever import Retriever

    retriever = Retriever(store, ALIAS, encoder, device=app.device)
    side = {
        "dense": store.search_dense(COLLECTION, qx, limit=3, with_payload=True),
        "sparse": retriever.search(qx, top_k=3, rerank=False),
        "rerank": retriever.search(qx, top_k=3, candidates=100),
    }
    return [
        {"query": q, **{m: [h.payload.get("name") if h.payload else h.id for h in side[m][i]] for m in side}}
        for i, q in enumerate(queries)
    ]


def run_demo(
    app: Any,
    *,
    store_kind: str,
    uri: str | None,
    out: Path,
    limit: int = 2000,
    epochs: int | None = None,
    k: int | None = None,
    hidden_dim: int | None = None,
    fresh: bool = False,
    queries: tuple[str, ...] = DEMO_QUERIES,
) -> dict[str, Any]:
    """Run the demo end to end and return its report (also written to ``out/report.json``).

    Steps: corpus -> embeddings (cached in ``out``) -> dense collection ``docs`` -> train ->
    migrate -> verify -> cutover (alias ``docs_live``) -> side-by-side searches -> quality/size
    table (`csr_vdb.collection_eval`) -> ``out/quality.png``.
    The database, model and state are rebuilt on every run; ``fresh`` also drops the cache.

    Raises:
        VerificationError: the migrated collection did not verify.
    """
    from csr_vdb.cli.ops import load_encoder, remove_tree, train_model, verification_queries
    from csr_vdb.collection_eval import evaluate_collection, quality_vs_k
    from csr_vdb.corpus import stdlib_passages
    from csr_vdb.migrations import cutover, plan_migration, run_migration, verify_migration
    from csr_vdb.text import load_text_model

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    uri = uri or str(out / ("demo.db" if store_kind == "milvus" else "qdrant"))
    state, model_dir, cache = out / "state", out / "model", out / "embeddings.npy"
    for p in (Path(uri), state, model_dir):
        remove_tree(p)
    if fresh:
        for p in (cache, cache.with_suffix(".json")):
            p.unlink(missing_ok=True)
    app.flags.update({"store": store_kind, "uri": uri, "state_dir": str(state)})
    steps = _Steps(app, 8)

    with steps("corpus", f"corpus: docstrings of the Python standard library (up to {limit})"):
        passages = stdlib_passages(limit)
    with steps("embed", f"embedding {len(passages)} passages with all-MiniLM-L6-v2 (offline)"):
        embedder = load_text_model(device=app.device)
        x = _embed_corpus(app, [p.text for p in passages], cache, embedder)
    with steps("load", f"dense collection '{COLLECTION}' in {store_kind} at {uri}"):
        store = _dense_collection(app, store_kind, uri, passages, x)
    with steps("train", "training the CSR encoder on the collection's vectors"):
        with app.progress("export") as ebar, app.progress("train", "step") as tbar:
            trained = train_model(model_dir, store=store, collection=COLLECTION, work_dir=state, export_progress=ebar,
                                  train_progress=tbar, epochs=epochs, k=k, hidden_dim=hidden_dim, device=app.device)
        encoder = load_encoder(model_dir, app.device)
    with steps("migrate", f"migrate --to sparse: '{COLLECTION}' -> '{TARGET}'"), app.progress("migrate") as bar:
        plan, pre = plan_migration(store, store_kind=store_kind, uri=uri, source=COLLECTION, batch_size=500,
                                   model_dir=model_dir.resolve(), alias=ALIAS, model_dim=encoder.config.input_dim)
        mig = run_migration(store, plan, encoder.encode, state_base=state, progress=bar, preflight=pre)
    with steps("verify_cutover", "verify + cutover"):
        with app.progress("verify") as bar:
            ver = verify_migration(store, plan, encoder.encode, verification_queries(encoder), state_base=state,
                                   sample=200, progress=bar)
        if not ver.ok:
            raise VerificationError("demo migration did not verify: " + "; ".join(ver.problems[:3]))
        alias = cutover(store, plan, state_base=state)
    with steps("search", "searches: dense vs sparse vs sparse+rerank"):
        searches = _side_by_side(app, store, encoder, embedder.embed(list(queries)), queries)
    with steps("eval", "quality / size / latency"):
        rep = evaluate_collection(store, COLLECTION, TARGET, encoder, sample=200, device=app.device)
        ks = sorted({kk for kk in (4, 8, 16, 32, 64, encoder.config.k) if kk <= encoder.config.hidden_dim})
        curve = quality_vs_k(x, encoder, ks, queries=200)
        plot = out / "quality.png"
        _plot(curve, rep.dense_bytes_per_vector, plot)

    report = {
        "store": store_kind, "uri": uri, "rows": len(passages), "dim": int(x.shape[1]),
        "model": {"dir": str(model_dir), "hidden_dim": trained.hidden_dim, "k": trained.k,
                  "epochs": trained.epochs, "train_s": round(trained.seconds, 2)},
        "migration": {"rows_written": mig.rows_written, "rows_per_s": round(mig.rows_per_s, 1)},
        "verify": {"ok": ver.ok, "recall_at_10": ver.recall_at_10},
        "alias": {"name": alias.alias, "points_to": alias.current},
        "searches": searches,
        "eval": rep.model_dump(),
        "quality_vs_k": curve,
        "plot": str(plot),
        "timings_s": steps.timings,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
