"""Quality of narrowed search queries + exact re-score, in memory: SciFact NDCG@10 and Banking77 1-NN per width and candidates.

    python bench/query_width.py --data-dir ../shared/data --out bench/results/query_width.json
    python bench/query_width.py --data-dir ../shared/data --scifact-model M1 --banking77-model M2 \\
        --widths 512,64,32,16,12,8 --candidates 100,300 --select magnitude,cost

For each dataset a CSR encoder is trained with the recipe on the database side (SciFact corpus,
Banking77 train split) or loaded (``--scifact-model`` / ``--banking77-model``). Each search query
keeps ``width`` entries (`csr_vdb.query_width.narrow_queries`: by magnitude, or by magnitude per
posting cost with ``--alpha``); the top ``candidates`` rows by its dot product (what the
database's exact inverted-index search returns) are re-scored with the signed query
(`csr_vdb.metrics.rescored_search`, what `Retriever` does). Reported per cell: the metric,
its share of dense, and the postings the database walks per query as a multiple of the rows.
Then `choose_query_width` on 300 self-queries of the database rows (exact dense neighbours,
floors 0.99 / 0.98 of the full width's recall@10) shows the width it would pick per candidates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit  # noqa: E402
from bench.loaders import evaluate_banking77, evaluate_beir, load_banking77_dir, load_beir_dir  # noqa: E402
from csr_vdb.metrics import ndcg_at_k, rankings, rescored_search  # noqa: E402
from csr_vdb.model import CSREncoder  # noqa: E402
from csr_vdb.query_width import choose_query_width, narrow_queries, posting_lengths, self_query_sample  # noqa: E402
from csr_vdb.recipes import default_configs  # noqa: E402
from csr_vdb.sources import ArraySource  # noqa: E402
from csr_vdb.training import train_encoder  # noqa: E402


def encoder_for(x: np.ndarray, model: Path | None, args: argparse.Namespace) -> tuple[CSREncoder, float]:
    """The ``--*-model`` encoder, or the recipe trained on ``x`` (at ``--hidden-dim``, ``--steps``)."""
    if model is not None:
        return CSREncoder.load(model, device="cpu"), 0.0
    model_cfg, train_cfg = default_configs(x.shape[1], len(x), hidden_dim=args.hidden_dim)
    update: dict = {"threads": args.threads}
    if args.steps:
        per_epoch = -(-len(x) // train_cfg.batch_size)
        update.update(epochs=max(1, -(-args.steps // per_epoch)), max_steps=args.steps)
    t = time.perf_counter()
    enc = train_encoder(ArraySource(x), model_cfg, train_cfg.model_copy(update=update)).encoder
    return enc, time.perf_counter() - t


def run_dataset(name: str, folder: Path, args: argparse.Namespace) -> dict:
    if name == "banking77":
        data = load_banking77_dir(folder)
        db, qx = data.train_x, data.test_x
        dense = evaluate_banking77(data, scorer="cosine")
        train_y, test_y = np.asarray(data.train_y), np.asarray(data.test_y)

        def metric(rows: np.ndarray) -> float:
            return float((train_y[rows[:, 0]] == test_y).mean())

        top = 1
        model = args.banking77_model
    else:
        data = load_beir_dir(folder)
        db, qx = data.corpus_x, data.queries_x
        dense = evaluate_beir(data, None, None, k=10, scorer="dot")["ndcg@10"]

        def metric(rows: np.ndarray) -> float:
            return ndcg_at_k(rankings(rows, data.query_ids, data.corpus_ids), data.qrels).value

        top = 10
        model = args.scifact_model
    enc, train_s = encoder_for(db, model, args)
    docs = enc.encode(db)
    post = posting_lengths(docs)
    h = enc.config.hidden_dim
    full = enc.config.k_query_alone("decoder")  # the whole decoder query, whatever k_query says
    search = enc.encode_queries(qx, k=full)
    signed = enc.encode_queries(qx, signed=True)
    out: dict = {"metric": "1nn_accuracy" if name == "banking77" else "ndcg@10", "dense": float(dense),
                 "train_s": round(train_s, 1), "hidden_dim": h, "dead_frac": float((post[:h] == 0).mean()),
                 "cells": []}
    for select in args.select:
        for w in args.widths:
            q = narrow_queries(search, w, select, post, args.alpha)
            walked = float(post[q.indices][q.values != 0].sum() / len(q) / len(db))
            for c in args.candidates:
                _, rows = rescored_search(q, signed, docs, top, candidates=c)
                v = metric(rows)
                out["cells"].append({"select": select, "width": w, "candidates": c, "value": round(v, 4),
                                     "pct_of_dense": round(100 * v / dense, 1), "postings_per_row": round(walked, 3)})
    rows_q, truth = self_query_sample(db, 300, top_k=10, seed=0)
    s_q, e_q = enc.encode_queries(db[rows_q], k=full), enc.encode_queries(db[rows_q], signed=True)
    out["chosen"] = []
    for c in args.candidates:
        for floor in (0.99, 0.98):
            ch = choose_query_width(s_q, e_q, docs, truth, floor=floor, candidates=c, self_rows=rows_q,
                                    widths=sorted(set(args.widths) | {4, 8, 12, 16, 24, 32, 64, 128}))
            out["chosen"].append({"candidates": c, "floor": floor, "width": ch.width, "recall": round(ch.recall, 4),
                                  "full_recall": round(ch.full_recall, 4)})
    return out


def table(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines.append(f"{name} ({r['metric']}): dense {r['dense']:.4f}, h={r['hidden_dim']}, dead {r['dead_frac']:.1%}")
        lines.append("| select | width | postings/query (x rows) | " + " | ".join(
            f"C={c}" for c in sorted({c['candidates'] for c in r["cells"]})) + " |")
        cs = sorted({c["candidates"] for c in r["cells"]})
        lines.append("|---|---|---|" + "---|" * len(cs))
        keys = list(dict.fromkeys((c["select"], c["width"]) for c in r["cells"]))
        for sel, w in keys:
            cells = {c["candidates"]: c for c in r["cells"] if c["select"] == sel and c["width"] == w}
            first = next(iter(cells.values()))
            lines.append(f"| {sel} | {w} | {first['postings_per_row']} | " + " | ".join(
                f"{cells[c]['value']:.4f} ({cells[c]['pct_of_dense']}%)" for c in cs) + " |")
        lines.append("chosen widths (self-queries, recall@10 floor x full width): " + "; ".join(
            f"C={c['candidates']} floor {c['floor']}: {c['width']} ({c['recall']} of {c['full_recall']})"
            for c in r["chosen"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding scifact/ and/or banking77/")
    p.add_argument("--scifact-model", type=Path)
    p.add_argument("--banking77-model", type=Path)
    p.add_argument("--widths", default="512,128,64,32,16,12,8,4")
    p.add_argument("--candidates", default="100,200,300,500")
    p.add_argument("--select", default="magnitude", help="magnitude and/or cost, comma-separated")
    p.add_argument("--alpha", type=float, default=0.5, help="posting-length exponent of select=cost")
    p.add_argument("--hidden-dim", type=int, help="latents h of the trained encoders (default: the recipe's 4d)")
    p.add_argument("--steps", type=int, help="cap on the training steps (default: the recipe's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.widths = [int(w) for w in args.widths.split(",") if w.strip()]
    args.candidates = [int(c) for c in args.candidates.split(",") if c.strip()]
    args.select = [s.strip() for s in args.select.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    found = {n: args.data_dir / n for n in ("scifact", "banking77") if (args.data_dir / n).is_dir()}
    if not found:
        print(f"error: neither scifact/ nor banking77/ under {args.data_dir}", file=sys.stderr)
        return 2
    results = {n: run_dataset(n, f, args) for n, f in found.items()}
    emit(results, table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
