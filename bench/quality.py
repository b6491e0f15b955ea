"""Quality benchmark: dense vs CSR codes vs PCA/truncation on Banking77 (1-NN) and BEIR folders (NDCG@10).

Usage::

    python bench/quality.py --data-dir ../shared/data --out bench/results/quality.json [--ks 8,16,32,64]
        [--hidden H] [--epochs E | --steps S] [--quick] [--threads 2]

DIR may hold a ``banking77/`` folder and/or BEIR folders (``corpus_emb.npy, queries_emb.npy,
corpus_ids.txt, query_ids.txt, qrels_test.tsv``); DIR itself may also be one such folder.
One CSR model is trained per k, on the database side only (Banking77 train split / BEIR corpus),
with `csr_vdb.recipes.default_configs`; test queries and labels are used only for scoring.
Codes are scored by dot products (what the databases compute), with the recipe's codes (pursuit
documents with the bias latent, decoder-projection queries; `csr_vdb.recipes`). ``csr`` is the
search a `csr_vdb.retriever.Retriever` runs on a collection that kept only its sparse codes: the
database's sparse search (non-negative query weights) returns 100 candidates, which are re-scored
exactly from their codes with the signed query (`csr_vdb.evaluation.rescored_search`); no dense
vector is used. ``csr_search`` is that first stage alone (the database's own ranking, no re-scoring);
``csr_topk`` scores the same model the paper's way, TopK codes on both sides. Every document code
has k non-zeros. PCA is fitted on the database side. ``pca``/``trunc``
use k dense dims (equal active dims), ``pca_bytes``/``trunc_bytes`` use 2k dims (equal bytes: a
k-sparse code costs 8 bytes per non-zero). ``dead_frac`` is the share of latents that fire for no
database row, for the model whose k is closest to 32; ``train_s`` sums the training of all models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from csr_vdb.evaluation import (
    PCA,
    bytes_matched_dims,
    dataset_kind,
    evaluate_banking77,
    evaluate_beir,
    load_banking77_dir,
    load_beir_dir,
    percent_of,
    truncate,
)
from csr_vdb.recipes import default_configs
from csr_vdb.training import ArraySource, train_encoder


def find_datasets(root: Path) -> dict[str, tuple[str, Path]]:
    """``{name: (kind, folder)}`` for DIR itself or its immediate sub-folders."""
    found: dict[str, tuple[str, Path]] = {}
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        kind = dataset_kind(folder)
        if kind is not None:
            found[folder.name] = (kind, folder)
    return found


def dead_fraction(codes) -> float:
    """Share of the ``dim`` latents that are non-zero in no row of ``codes``."""
    live = np.unique(codes.indices[codes.values != 0])
    return 1.0 - len(live) / codes.dim


def run_dataset(
    kind: str, folder: Path, ks: list[int], hidden: int | None, epochs: int | None, quick: bool, steps: int | None = None
) -> dict:
    """Train one model per k on the database side and score every method on one dataset."""
    if kind == "banking77":
        data = load_banking77_dir(folder)
        db = data.train_x
        metric = "1nn_accuracy"

        def score(f_doc=None, f_query=None, scorer="cosine", f_rescore=None):
            if f_doc is None:
                return evaluate_banking77(data, scorer=scorer)
            # 1-NN compares test rows (queries) to training rows (documents)
            return _one_nn(data, f_doc, f_query or f_doc, scorer, f_rescore)
    else:
        data = load_beir_dir(folder)
        db = data.corpus_x
        metric = "ndcg@10"

        def score(f_doc=None, f_query=None, scorer="dot", f_rescore=None):
            return evaluate_beir(data, f_doc, f_query, k=10, scorer=scorer, rescore_queries=f_rescore)["ndcg@10"]

    n, d = db.shape
    train_x = db
    if quick and n > 3000:
        train_x = db[np.random.default_rng(0).choice(n, 3000, replace=False)]
    out: dict = {"metric": metric, "dense": score()}
    out["csr"], out["pca"], out["trunc"], out["pca_bytes"], out["trunc_bytes"] = {}, {}, {}, {}, {}
    out["csr_search"], out["csr_topk"] = {}, {}
    train_s = 0.0
    dead_k = min(ks, key=lambda k: abs(k - 32))
    out["dead_frac"] = None
    for k in ks:
        model_cfg, train_cfg = default_configs(d, len(train_x), k=k)
        updates = {}
        if hidden is not None:
            updates["hidden_dim"] = hidden
        model_cfg = model_cfg.model_copy(update=updates)
        if epochs is not None:
            train_cfg = train_cfg.model_copy(update={"epochs": epochs})
        if steps is not None:
            # about ``steps`` optimisation steps whatever the collection size
            per_epoch = -(-len(train_x) // train_cfg.batch_size)
            train_cfg = train_cfg.model_copy(update={"epochs": max(1, -(-steps // per_epoch)), "max_steps": steps})
        if quick:
            train_cfg = train_cfg.model_copy(update={"epochs": min(train_cfg.epochs, 3)})
        start = time.perf_counter()
        enc = train_encoder(ArraySource(train_x), model_cfg, train_cfg).encoder
        train_s += time.perf_counter() - start
        # the database's sparse search, then the exact re-score of its 100 candidates (signed query)
        out["csr"][k] = score(enc.encode, enc.encode_queries, "dot", lambda a, e=enc: e.encode_queries(a, signed=True))
        out["csr_search"][k] = score(enc.encode, enc.encode_queries, "dot")
        # same weights, TopK codes for documents and queries (the paper's CSR)
        topk = enc.with_config(doc_codes="topk", bias_latent=False, query_projection="encoder")
        out["csr_topk"][k] = score(topk.encode, topk.encode_queries, "dot")
        if k == dead_k:
            out["dead_frac"] = dead_fraction(enc.encode(db))
        for key, m in (("pca", k), ("pca_bytes", bytes_matched_dims(k))):
            if m <= d:
                pca = PCA.fit(db, m)
                out[key][k] = score(pca.transform, None, "dot")
        for key, m in (("trunc", k), ("trunc_bytes", bytes_matched_dims(k))):
            if m <= d:
                out[key][k] = score(lambda a, m=m: truncate(a, m), None, "dot")
    out["train_s"] = round(train_s, 2)
    return out


def _one_nn(data, f_doc, f_query, scorer: str, f_rescore=None) -> float:
    from csr_vdb.evaluation import one_nn_accuracy, rescored_search

    if f_rescore is None:
        return one_nn_accuracy(f_doc(data.train_x), data.train_y, f_query(data.test_x), data.test_y, scorer=scorer)
    _, rows = rescored_search(f_query(data.test_x), f_rescore(data.test_x), f_doc(data.train_x), 1, candidates=100)
    return float((np.asarray(data.train_y)[rows[:, 0]] == np.asarray(data.test_y)).mean())


def render(results: dict) -> str:
    """A plain-text table: one line per dataset and method, values and % of dense per k."""
    lines = []
    for name, res in results.items():
        ks = list(res["csr"])
        dead = "n/a" if res["dead_frac"] is None else f"{res['dead_frac']:.1%}"
        lines.append(f"{name} ({res['metric']}): dense {res['dense']:.4f}, train {res['train_s']:.0f} s, dead latents {dead}")
        lines.append("  method          " + "".join(f"{'k=' + str(k):>18}" for k in ks))
        for key, label in (("csr", "CSR k (re-score)"), ("csr_search", "CSR k (search)"), ("csr_topk", "CSR k (TopK)"),
                           ("pca", "PCA k dims"), ("trunc", "trunc k dims"),
                           ("pca_bytes", "PCA 2k dims"), ("trunc_bytes", "trunc 2k dims")):
            cells = []
            for k in ks:
                v = res[key].get(k)
                cells.append(f"{'-':>18}" if v is None else f"{v:>9.4f} ({percent_of(v, res['dense']):5.1f}%)")
            lines.append(f"  {label:<16}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--ks", default="8,16,32,64", help="comma-separated k values")
    parser.add_argument("--hidden", type=int, default=None, help="latents h (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="train about this many steps per model (overrides epochs)")
    parser.add_argument("--quick", action="store_true", help="at most 3000 training rows and 3 epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    datasets = find_datasets(args.data_dir)
    if not datasets:
        print(f"error: no banking77 or BEIR folder under {args.data_dir}", file=sys.stderr)
        return 2
    results = {}
    for name, (kind, folder) in datasets.items():
        results[name] = run_dataset(kind, folder, ks, args.hidden, args.epochs, args.quick, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=False))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
