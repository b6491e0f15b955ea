"""Per-query latency of a `Retriever`'s search modes next to the database search alone, side by side.

    python bench/rescore.py --beir ../shared/data/scifact --store qdrant-edge \\
        --out bench/results/rescore_qdrant_edge.json
    python bench/rescore.py --beir ../shared/data/scifact --store milvus --model MODEL_DIR

A CSR encoder is trained with the recipe on the BEIR folder's corpus (or loaded with ``--model``);
the corpus codes are written ``--copies`` times (distinct ids) into two collections of one store:
``lean`` (codes only) and ``full`` (codes + dense vectors). Then, one query at a time and the modes
interleaved per query in a shuffled order (so that machine noise hits them alike), p50 and p95
milliseconds of:

- ``encode``: the query through the encoder once (`Retriever.query_codes`, with the signed query);
- ``raw_search`` / ``raw_search_full``: the store's `search_sparse` alone, 100 hits, on ``lean`` /
  ``full`` (what the whole query path is compared with);
- ``search``: `Retriever.search(rerank=False)`, top 10;
- ``rescore``: `Retriever.search(rerank="codes")`: 100 candidates re-scored from their stored
  codes with the signed query (on ``lean``);
- ``rerank_dense``: `Retriever.search(rerank="dense")`: 100 candidates re-ranked by their dense
  vectors (on ``full``);
- ``raw_search_bias``: ``raw_search`` with the bias latent's entry ``<x, b_pre>`` added to the
  search query where it is positive (its posting list holds every document).

Ratios: ``rescore`` over ``raw_search``, ``rerank_dense`` over ``raw_search_full``, and
``raw_search_bias`` over ``raw_search``. Without ``--beir`` the data is synthetic (clustered unit
vectors), which exercises the code paths but not the real distribution of codes.

``--baseline REV`` adds the modes ``baseline_search`` / ``baseline_rescore`` /
``baseline_rerank_dense``: the same calls through the `Retriever` of an older commit (its
``csr_vdb/`` core, imported beside this one as ``csr_vdb_baseline``) on the same store and model,
interleaved with the others, so that a change of the query path is measured before/after in one
run. (The store object is this commit's adapter: the database work is the same, the query path
around it is the old one.)
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from csr_vdb.adapters import open_store  # noqa: E402
from bench.loaders import load_beir_dir  # noqa: E402
from csr_vdb.fileutil import atomic_write_json  # noqa: E402
from csr_vdb.model import CSREncoder  # noqa: E402
from csr_vdb.recipes import default_configs  # noqa: E402
from csr_vdb.retriever import Retriever  # noqa: E402
from csr_vdb.sparse import SparseVectors  # noqa: E402
from csr_vdb.training import train_encoder  # noqa: E402

CANDIDATES = 100
TOP_K = 10
# each ratio's denominator: the database search that the mode's whole path contains
RATIO_BASE = {
    "rescore": "raw_search",
    "rerank_dense": "raw_search_full",
    "raw_search_bias": "raw_search",
    "baseline_rescore": "raw_search",
    "baseline_rerank_dense": "raw_search_full",
}


def load_baseline(rev: str) -> type:
    """The `Retriever` class of commit ``rev``: its ``csr_vdb/`` exported from git into a temporary
    folder as the package ``csr_vdb_baseline`` (imports rewritten), importable beside this one."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "csr_vdb"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: cannot export csr_vdb/ of {rev!r} from git: {exc}") from None
    root = Path(tempfile.mkdtemp(prefix="csr_baseline_"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    pkg = root / "csr_vdb_baseline"
    (root / "csr_vdb").rename(pkg)
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\bcsr_vdb\b(?=[.\s])", "csr_vdb_baseline", f.read_text()))
    sys.path.insert(0, str(root))
    return importlib.import_module("csr_vdb_baseline.retriever").Retriever


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """``(corpus [n, d], queries [q, d])`` float32."""
    if args.beir:
        data = load_beir_dir(args.beir, split="test")
        return data.corpus_x.astype(np.float32), data.queries_x.astype(np.float32)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 384))
    x = centres[rng.integers(0, 64, args.synthetic_rows)] + 0.8 * rng.normal(size=(args.synthetic_rows, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, x[rng.choice(len(x), 300, replace=False)] + 0.05


def with_entry(codes: SparseVectors, index: int, values: np.ndarray) -> SparseVectors:
    """``codes`` with ``(index, values[i])`` added to row i where ``values[i] > 0``."""
    rows = []
    for i in range(len(codes)):
        live = codes.values[i] > 0
        ind, val = codes.indices[i][live].tolist(), codes.values[i][live].tolist()
        if values[i] > 0:
            ind, val = ind + [index], val + [float(values[i])]
        rows.append((ind, val))
    return SparseVectors.from_qdrant(rows, codes.dim)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    corpus, queries = load_data(args)
    queries = queries[: args.queries]
    t0 = time.perf_counter()
    if args.model:
        enc = CSREncoder.load(args.model, device="cpu")
    else:
        model_cfg, train_cfg = default_configs(corpus.shape[1], len(corpus))
        enc = train_encoder(corpus, model_cfg, train_cfg.model_copy(update={"threads": args.threads})).encoder
        if args.save_model:
            enc.save(args.save_model)
    train_s = time.perf_counter() - t0
    codes = enc.encode(corpus)
    n = len(corpus)
    tmp = tempfile.mkdtemp(prefix="csr_rescore_")
    uri = args.uri or (os.path.join(tmp, "bench.db") if args.store == "milvus" else os.path.join(tmp, "qdrant"))
    store = open_store(args.store, uri)
    try:
        store.create_dense_collection("src", corpus.shape[1], metric="cosine")
        store.insert_dense("src", [0], corpus[:1], None)
        t0 = time.perf_counter()
        for name, keep in (("lean", False), ("full", True)):
            store.create_sparse_collection(name, like="src", keep_dense=keep)
            for c in range(args.copies):
                ids = list(range(c * n, (c + 1) * n))
                store.upsert(name, ids, codes, None, dense=corpus if keep else None)
            store.flush(name)
        insert_s = time.perf_counter() - t0
        lean = Retriever(store, "lean", enc, device="cpu")
        full = Retriever(store, "full", enc, device="cpu")
        search_q = enc.encode_queries(queries)
        h = enc.config.hidden_dim
        bias = np.zeros(len(queries))
        if enc.config.bias_latent:
            bias = enc.encode_queries(queries, signed=True).to_dense()[:, h]
        with_bias = with_entry(search_q, h, bias)
        one = [queries[i : i + 1] for i in range(len(queries))]
        modes: dict[str, object] = {
            "encode": lambda i: encode_once(lean, one[i]),
            "raw_search": lambda i: store.search_sparse("lean", search_q[i : i + 1], limit=CANDIDATES),
            "raw_search_full": lambda i: store.search_sparse("full", search_q[i : i + 1], limit=CANDIDATES),
            "search": lambda i: lean.search(one[i], top_k=TOP_K, rerank=False),
            "rescore": lambda i: lean.search(one[i], top_k=TOP_K, candidates=CANDIDATES, rerank="codes"),
            "rerank_dense": lambda i: full.search(one[i], top_k=TOP_K, candidates=CANDIDATES, rerank="dense"),
            "raw_search_bias": lambda i: store.search_sparse("lean", with_bias[i : i + 1], limit=CANDIDATES),
        }
        if args.baseline:
            old = load_baseline(args.baseline)
            old_lean, old_full = old(store, "lean", enc, device="cpu"), old(store, "full", enc, device="cpu")
            modes["baseline_search"] = lambda i: old_lean.search(one[i], top_k=TOP_K, rerank=False)
            modes["baseline_rescore"] = lambda i: old_lean.search(
                one[i], top_k=TOP_K, candidates=CANDIDATES, rerank="codes"
            )
            modes["baseline_rerank_dense"] = lambda i: old_full.search(
                one[i], top_k=TOP_K, candidates=CANDIDATES, rerank="dense"
            )
        for f in modes.values():  # warm-up
            f(0)
        times: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        rng = np.random.default_rng(0)
        for i in range(len(queries)):
            # a fresh order per query: a mode's cost must not depend on what ran just before it
            # (torch's worker threads keep spinning for a while after an encoding, for instance)
            for m in rng.permutation(names):
                t = time.perf_counter()
                modes[m](i)  # type: ignore[operator]
                times[m].append((time.perf_counter() - t) * 1000.0)
        p50 = {m: float(np.percentile(v, 50)) for m, v in times.items()}
        p95 = {m: float(np.percentile(v, 95)) for m, v in times.items()}
        n_bias = int((bias > 0).sum())
        return {
            "store": args.store,
            "rows": n * args.copies,
            "queries": len(queries),
            "hidden_dim": h,
            "k": enc.config.k,
            "bias_latent": enc.config.bias_latent,
            "query_nnz_mean": float(search_q.nnz().mean()),
            "queries_with_bias_entry": n_bias,
            "train_s": round(train_s, 1),
            "insert_s": round(insert_s, 1),
            "median_ms": {m: round(v, 3) for m, v in p50.items()},
            "p95_ms": {m: round(v, 3) for m, v in p95.items()},
            "baseline": args.baseline,
            "ratio_vs_search": {m: round(p50[m] / p50[base], 3) for m, base in RATIO_BASE.items() if m in p50},
            "load_avg_1m_end": os.getloadavg()[0],
        }
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def encode_once(retriever: Retriever, x: np.ndarray) -> object:
    """The query codes `Retriever.search(rerank="codes")` makes (older code: its two encodings)."""
    if hasattr(retriever, "query_codes"):
        return retriever.query_codes(x, signed=True)
    enc = retriever.encoder
    codes = enc.encode_queries(x)
    if enc.config.query_projection == "decoder":
        return codes, enc.encode_queries(x, projection="decoder", signed=True)
    return codes, codes


def table(res: dict) -> str:
    lines = [f"{res['store']}, {res['rows']:,} rows, {res['queries']} queries one at a time (ms)",
             "| mode | p50 | p95 | p50 ratio |", "|---|---|---|---|"]
    for m in res["median_ms"]:
        base = RATIO_BASE.get(m)
        ratio = f"{res['ratio_vs_search'][m]:.2f}x {base}" if base else ""
        lines.append(f"| {m} | {res['median_ms'][m]:.2f} | {res['p95_ms'][m]:.2f} | {ratio} |")
    lines.append(f"(bias entry in {res['queries_with_bias_entry']} of {res['queries']} queries)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="qdrant-edge", choices=["milvus", "qdrant-edge", "qdrant", "memory"])
    p.add_argument("--uri", help="store location (default: a temporary file/folder, removed afterwards)")
    p.add_argument("--beir", help="a BEIR-layout folder (corpus_emb.npy, queries_emb.npy, ...); else synthetic")
    p.add_argument("--synthetic-rows", type=int, default=5000)
    p.add_argument("--model", help="an encoder folder (default: train the recipe on the corpus)")
    p.add_argument("--copies", type=int, default=1, help="write the corpus this many times (distinct ids)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", metavar="REV", help="also time the Retriever of this git commit (see above)")
    p.add_argument("--save-model", metavar="DIR", help="save the trained encoder here (reuse with --model)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.copies < 1 or args.queries < 1:
        print("error: --copies and --queries must be >= 1", file=sys.stderr)
        return 2
    res = run(args)
    print(table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
