"""Speed of exact top-k: dense matmul vs torch.sparse.mm vs SparseIndex; SciFact re-rank quality.

Speed mode (default) times, in ONE run on the same machine and the same N/Q:
  * dense fp32 matmul + top-k at dimension d (and bf16 on CUDA),
  * stock ``torch.sparse.mm`` (codes as CSR [N, h] times the dense queries) + top-k,
  * `csr_vdb.index.SparseIndex` (inverted lists): on CPU its native kernel when a C compiler is
    present, and then also its pure-torch path (``sparse_index_torch_ms``, the fallback).
Synthetic codes imitate real CSR codes: latent usage is Zipf-like (``p_i ~ 1/rank**zipf`` over a
random permutation of the latents, so a few latents fire often and many rarely), every row has k
distinct latents, values are positive (log-normal) and queries come from the same distribution.
The skew matters: a query's work is ``k * N * k * sum(p_i**2)``, i.e. ``h * sum(p_i**2)`` times the
uniform figure; the default ``--zipf`` is reported with that "work inflation" in the output.

Quality mode (``--scifact DIR``) trains a CSR encoder on the SciFact corpus embeddings and reports
NDCG@10 for dense, sparse-only and sparse top-``--candidates`` + exact dense re-rank, for both query
projections (TopK query codes, and the decoder projection: keys ending in ``_decoder``); for the
decoder projection also the candidates re-scored from their codes by the signed query
(``..._rescore_decoder``: sparse only, what `Retriever` does without dense vectors).

Examples:
    python bench/scoring.py --n 200000 --q 512 --h 8192 --k 32 --d 384 --out speed.json
    python bench/scoring.py --scifact ../shared/data/scifact --out rerank.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from csr_vdb.device import resolve_device
from csr_vdb.index import SparseIndex
from csr_vdb.rerank import Reranker
from csr_vdb.sparse import SparseVectors


def synthetic_codes(n: int, h: int, k: int, zipf: float, rng: np.random.Generator, perm: np.ndarray) -> SparseVectors:
    """``n`` CSR-like codes: k distinct latents per row drawn from a Zipf-like usage law.

    Args:
        n: rows.
        h: latents (``hidden_dim``).
        k: non-zeros per row.
        zipf: exponent of the usage law (0 = uniform).
        rng: random generator.
        perm: ``[h]`` permutation mapping popularity rank -> latent id (shared by docs and queries).
    """
    p = 1.0 / np.arange(1, h + 1) ** zipf
    cdf = np.cumsum(p / p.sum())
    idx = np.empty((n, k), np.int64)
    val = np.empty((n, k), np.float32)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        # Oversample with replacement, then keep the first k distinct latents of each row.
        draw = np.minimum(np.searchsorted(cdf, rng.random((m, 3 * k))), h - 1)
        srt = np.sort(draw, axis=1)
        dup = np.zeros_like(srt, bool)
        dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
        prio = np.where(dup, 2.0, rng.random(srt.shape))
        take = np.argsort(prio, axis=1)[:, :k]
        ok = ~np.take_along_axis(dup, take, axis=1)
        idx[s : s + m] = np.where(ok, perm[np.take_along_axis(srt, take, axis=1)], 0)
        v = rng.lognormal(0.0, 0.5, size=(m, k)).astype(np.float32)
        val[s : s + m] = np.where(ok, v, 0.0)
    return SparseVectors(idx, val, h)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(res: dict, key: str, fn, repeats: int, dev: torch.device) -> object:
    """Time ``repeats`` calls after one warm-up; store median and minimum ms under ``key``."""
    out = fn()  # warm-up (allocations, CUDA kernels)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append((time.perf_counter() - t) * 1000)
    res[f"{key}_ms"] = statistics.median(times)
    res[f"{key}_min_ms"] = min(times)
    return out


def run_speed(args: argparse.Namespace) -> dict:
    dev = resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(args.h)
    t0 = time.perf_counter()
    docs = synthetic_codes(args.n, args.h, args.k, args.zipf, rng, perm)
    queries = synthetic_codes(args.q, args.h, args.k, args.zipf, rng, perm)
    usage = np.bincount(docs.indices[docs.values != 0], minlength=args.h) / max(int((docs.values != 0).sum()), 1)
    inflation = float(args.h * (usage**2).sum())
    gen_s = time.perf_counter() - t0
    print(f"generated codes in {gen_s:.1f}s; work inflation h*sum(p^2) = {inflation:.2f}", file=sys.stderr)
    top_k = args.top_k
    res: dict = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "n": args.n, "q": args.q, "h": args.h, "k": args.k, "d": args.d, "top_k": top_k,
        "zipf": args.zipf, "work_inflation": round(inflation, 3), "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
    }
    qblock = args.dense_block

    # Dense baseline: fp32 matmul + top-k per query block (the [q, N] score matrix never whole).
    x = torch.randn(args.n, args.d, device=dev)
    y = torch.randn(args.q, args.d, device=dev)

    def dense(xm: torch.Tensor, ym: torch.Tensor):
        return [torch.topk(ym[s : s + qblock] @ xm.T, top_k, dim=1) for s in range(0, args.q, qblock)]

    _timed(res, "dense", lambda: dense(x, y), args.repeats, dev)
    if dev.type == "cuda":
        xb, yb = x.bfloat16(), y.bfloat16()
        _timed(res, "dense_bf16", lambda: dense(xb, yb), args.repeats, dev)
        del xb, yb
    del x, y

    # Stock torch.sparse.mm: codes CSR [N, h] @ dense queries [h, block] -> [N, block], then top-k.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        d_csr = docs.to_torch(device=str(dev))
    q_dense = torch.from_numpy(queries.to_dense()).to(dev)

    def torch_sparse():
        out = []
        for s in range(0, args.q, qblock):
            sc = torch.sparse.mm(d_csr, q_dense[s : s + qblock].T)
            out.append(torch.topk(sc.T, top_k, dim=1))
        return out

    ts_out = _timed(res, "torch_sparse", torch_sparse, args.repeats, dev)
    ts_scores = torch.cat([v for v, _ in ts_out]).cpu().numpy()
    del d_csr, q_dense, ts_out

    t = time.perf_counter()
    index = SparseIndex(docs, device=dev, threads=args.threads)
    index.search(queries[:1], top_k)  # builds the posting lists
    res["sparse_index_build_s"] = round(time.perf_counter() - t, 3)
    res["sparse_index_mb"] = round(index.nbytes / 2**20, 1)
    si_scores, _ = _timed(res, "sparse_index", lambda: index.search(queries, top_k), args.repeats, dev)
    res["sparse_index_method"] = index.method
    # Same top-k scores as the stock path (up to float32 summation order).
    res["max_score_diff_vs_torch_sparse"] = float(np.abs(si_scores - ts_scores).max())
    if index.method == "native":
        # The pure-torch CPU path (the fallback without a C compiler), same run, same answers.
        loop = SparseIndex(docs, device=dev, threads=args.threads, method="loop")
        loop.search(queries[:1], top_k)
        lp_scores, _ = _timed(res, "sparse_index_torch", lambda: loop.search(queries, top_k), args.repeats, dev)
        res["torch_path_identical"] = bool(np.array_equal(lp_scores, si_scores))
        res["speedup_torch_path_vs_torch_sparse"] = round(res["torch_sparse_ms"] / res["sparse_index_torch_ms"], 2)
        del loop

    res["speedup_vs_dense"] = round(res["dense_ms"] / res["sparse_index_ms"], 2)
    res["speedup_vs_torch_sparse"] = round(res["torch_sparse_ms"] / res["sparse_index_ms"], 2)
    if "dense_bf16_ms" in res:
        res["speedup_vs_dense_bf16"] = round(res["dense_bf16_ms"] / res["sparse_index_ms"], 2)
    res["speedup_vs_dense_min"] = round(res["dense_min_ms"] / res["sparse_index_min_ms"], 2)
    res["speedup_vs_torch_sparse_min"] = round(res["torch_sparse_min_ms"] / res["sparse_index_min_ms"], 2)
    for key in [k for k in res if k.endswith("_ms")]:
        res[key] = round(res[key], 2)
    return res


def print_speed(res: dict) -> None:
    print(f"device {res['device']}  N={res['n']} Q={res['q']} h={res['h']} k={res['k']} d={res['d']} "
          f"top_k={res['top_k']} zipf={res['zipf']} (work x{res['work_inflation']})  median of {res['repeats']}")
    print(f"{'method':<28}{'median ms':>12}{'min ms':>12}{'SparseIndex faster by (median)':>32}")
    rows = [("dense fp32 matmul+topk", "dense_ms"), ("dense bf16 matmul+topk", "dense_bf16_ms"),
            ("torch.sparse.mm+topk", "torch_sparse_ms"),
            (f"SparseIndex ({res.get('sparse_index_method', '')})", "sparse_index_ms"),
            ("SparseIndex (pure torch)", "sparse_index_torch_ms")]
    for name, key in rows:
        if key in res:
            ratio = res[key] / res["sparse_index_ms"]
            print(f"{name:<28}{res[key]:>12.1f}{res[key[:-3] + '_min_ms']:>12.1f}{ratio:>31.1f}x")


# ---------------------------------------------------------------------------------------- SciFact
def run_scifact(args: argparse.Namespace) -> dict:
    """Train an encoder on the SciFact corpus (project defaults) and score three rankings."""
    from bench.loaders import load_beir_dir
    from csr_vdb.metrics import ndcg_at_k, rankings
    from csr_vdb.recipes import default_configs
    from csr_vdb.training import train_encoder

    data = load_beir_dir(args.scifact, split="test")
    corpus, qx = data.corpus_x, data.queries_x
    dev = resolve_device(args.device)
    model_cfg, train_cfg = default_configs(corpus.shape[1], len(corpus), k=args.k, hidden_dim=args.scifact_h)
    updates = json.loads(args.train_config) if args.train_config else {}
    train_cfg = train_cfg.model_copy(update={"threads": args.threads, **updates})
    t = time.perf_counter()
    enc = train_encoder(corpus, model_cfg, train_cfg).encoder
    train_s = time.perf_counter() - t
    doc_codes = enc.encode(corpus)

    dense_rows = np.argsort(-(qx @ corpus.T), axis=1, kind="stable")[:, :10]
    index = SparseIndex(doc_codes, device=dev, threads=args.threads)
    counts = sorted({int(c) for c in str(args.candidates).split(",")})
    reranker = Reranker(device=dev)

    def ndcg(rows: np.ndarray) -> float:
        return ndcg_at_k(rankings(rows, data.query_ids, data.corpus_ids), data.qrels, 10).value

    res = {
        "device": str(dev), "queries": len(qx), "docs": len(corpus),
        "hidden_dim": model_cfg.hidden_dim, "k": model_cfg.k, "candidates": counts,
        "train_steps_max": train_cfg.epochs * -(-len(corpus) // train_cfg.batch_size),
        "train_s": round(train_s, 1),
        "ndcg10_dense": ndcg(dense_rows),
    }
    # Same documents, two query projections: the TopK code (keys without suffix) and the decoder
    # projection (keys ending in "_decoder"; its query width in "query_k_decoder"), each at its full
    # width (k for TopK codes, 16 k for the decoder), whatever narrower k_query the recipe sets for
    # a search that is re-scored.
    for proj, sfx in (("encoder", ""), ("decoder", "_decoder")):
        width = enc.config.k_query_for(proj, enc.config.k)
        q_codes = enc.encode_queries(qx, projection=proj, k=width)
        res[f"query_k{sfx or '_encoder'}"] = q_codes.width
        _, sparse_rows = index.search(q_codes, max(counts + [10]))
        res[f"ndcg10_sparse{sfx}"] = ndcg(sparse_rows[:, :10])
        res[f"sparse_vs_dense{sfx}"] = res[f"ndcg10_sparse{sfx}"] / res["ndcg10_dense"]
        signed = enc.encode_queries(qx, projection="decoder", signed=True) if proj == "decoder" else None
        for c in counts:
            candidates = [r[:c].tolist() for r in sparse_rows]
            reranked = reranker.rerank_dense(qx, candidates, lambda ids: corpus[np.asarray(ids)], top_k=10)
            rows = np.array([ids for ids, _ in reranked], dtype=np.int64)
            res[f"ndcg10_sparse_top{c}_rerank{sfx}"] = ndcg(rows)
            res[f"rerank_top{c}_vs_dense{sfx}"] = res[f"ndcg10_sparse_top{c}_rerank{sfx}"] / res["ndcg10_dense"]
            if signed is not None:
                # sparse only: the candidates re-scored from their codes by the signed query (Retriever
                # on a collection without dense vectors)
                rescored = reranker.rerank_sparse(signed, candidates, lambda ids: doc_codes[np.asarray(ids)], top_k=10)
                rows = np.array([ids for ids, _ in rescored], dtype=np.int64)
                res[f"ndcg10_sparse_top{c}_rescore{sfx}"] = ndcg(rows)
                res[f"rescore_top{c}_vs_dense{sfx}"] = res[f"ndcg10_sparse_top{c}_rescore{sfx}"] / res["ndcg10_dense"]
    # Latent usage of the real codes: calibrates --zipf of the speed benchmark, whose synthetic codes
    # have no bias latent (in every code), so it is left out here.
    h = enc.config.hidden_dim
    live = (doc_codes.values != 0) & (doc_codes.indices < h)
    usage = np.bincount(doc_codes.indices[live], minlength=h) / live.sum()
    res["work_inflation"] = float(h * (usage**2).sum())
    res["dead_latents"] = int((usage == 0).sum())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="document codes")
    ap.add_argument("--q", type=int, default=512, help="queries")
    ap.add_argument("--h", type=int, default=8192, help="latents (hidden_dim)")
    ap.add_argument("--k", type=int, default=32, help="non-zeros per code")
    ap.add_argument("--d", type=int, default=384, help="dense dimension of the baseline")
    ap.add_argument("--top-k", type=int, default=10, help="results per query")
    ap.add_argument("--zipf", type=float, default=0.5, help="latent usage skew (0 = uniform)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=2, help="torch and SparseIndex CPU threads (max 2 here)")
    ap.add_argument("--dense-block", type=int, default=64, help="queries per dense/torch.sparse block")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scifact", default=None, help="SciFact data dir: run the re-rank quality benchmark")
    ap.add_argument("--scifact-h", type=int, default=None, help="hidden_dim of the SciFact encoder (default 4d)")
    ap.add_argument("--candidates", default="50,100,200,300", help="sparse candidate counts to re-rank (comma list)")
    ap.add_argument("--train-config", default=None, help="TrainConfig fields as JSON for --scifact")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.scifact:
        res = run_scifact(args)
        for key, val in res.items():
            print(f"{key:<42}{val:.4f}" if isinstance(val, float) else f"{key:<42}{val}")
    else:
        res = run_speed(args)
        print_speed(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
