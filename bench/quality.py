"""Quality benchmark: dense vs CSR codes vs PCA/truncation on Banking77 (1-NN) and BEIR folders (NDCG@10).

Usage::

    python bench/quality.py --data-dir ../shared/data --out bench/results/quality.json [--ks 8,16,32,64]
        [--hidden-dim H] [--epochs E | --steps S] [--quick] [--threads 2] [--model KEY=VALUE] [--train KEY=VALUE]

DIR may hold a ``banking77/`` folder and/or BEIR folders (``corpus_emb.npy, queries_emb.npy,
corpus_ids.txt, query_ids.txt, qrels_test.tsv``); DIR itself may also be one such folder.
One CSR model is trained per k, on the database side only (Banking77 train split / BEIR corpus),
with `csr_vdb.recipes.default_configs`; test queries and labels are used only for scoring.
Codes are scored by dot products (what the databases compute), with the recipe's codes (pursuit
documents with the bias latent, decoder-projection queries; `csr_vdb.recipes`). ``csr`` is the
search a `csr_vdb.retriever.Retriever` runs on a collection that kept only its sparse codes: the
database's sparse search (non-negative query weights) returns 100 candidates, which are re-scored
exactly from their codes with the signed query (`csr_vdb.metrics.rescored_search`); no dense
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from bench.baselines import PCA, bytes_matched_dims, truncate  # noqa: E402
from bench.common import emit, percent_of  # noqa: E402
from bench.loaders import evaluate_banking77, evaluate_beir, find_datasets, load_dataset  # noqa: E402
from csr_vdb.config import CSRConfig, TrainConfig  # noqa: E402
from csr_vdb.model import CSREncoder  # noqa: E402
from csr_vdb.recipes import default_configs, with_overrides  # noqa: E402
from csr_vdb.sources import ArraySource  # noqa: E402
from csr_vdb.training import train_encoder  # noqa: E402

Scorer = Callable[..., float]
"""``score(f_doc=None, f_query=None, scorer=..., f_rescore=None)``: the data set's metric for one method."""

QUICK_ROWS = 3000


def dataset_scorer(kind: str, folder: Path) -> tuple[np.ndarray, str, Scorer]:
    """``(database rows, metric name, score)`` for a Banking77 or BEIR folder.

    ``score()`` without encoders is the dense baseline; with them, documents are encoded by
    ``f_doc``, queries by ``f_query`` (default ``f_doc``) and, with ``f_rescore``, the ``candidates``
    best of that search are re-scored by ``f_rescore``'s codes (`csr_vdb.metrics.rescored_search`).
    """
    data = load_dataset(kind, folder)
    if kind == "banking77":

        def score(f_doc=None, f_query=None, scorer="cosine", f_rescore=None, candidates=100):
            # 1-NN compares test rows (queries) to training rows (documents)
            return evaluate_banking77(data, f_doc, scorer, encode_queries=f_query, rescore_queries=f_rescore,
                                      candidates=candidates)

        return data.train_x, "1nn_accuracy", score

    def score(f_doc=None, f_query=None, scorer="dot", f_rescore=None, candidates=100):
        return evaluate_beir(data, f_doc, f_query, k=10, scorer=scorer, rescore_queries=f_rescore,
                             candidates=candidates)["ndcg@10"]

    return data.corpus_x, "ndcg@10", score


def training_rows(db: np.ndarray, quick: bool) -> np.ndarray:
    """The database rows a model trains on (``--quick``: a fixed sample of `QUICK_ROWS`)."""
    if quick and len(db) > QUICK_ROWS:
        return db[np.random.default_rng(0).choice(len(db), QUICK_ROWS, replace=False)]
    return db


@dataclass(frozen=True)
class Overrides:
    """Changes to the recipe asked for on the command line (`add_recipe_arguments`).

    Attributes:
        hidden_dim: latents h (default: the recipe's 4d).
        epochs: training epochs (default: the recipe's, about 2000 steps).
        steps: train about this many steps (overrides ``epochs``).
        quick: at most `QUICK_ROWS` training rows and 3 epochs.
        model: `CSRConfig` fields to change (``--model KEY=VALUE``).
        train: `TrainConfig` fields to change (``--train KEY=VALUE``).
    """

    hidden_dim: int | None = None
    epochs: int | None = None
    steps: int | None = None
    quick: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON (``1e-3``, ``true``, ``null``), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by quality.py and seeds.py: how models are trained, and the CPU threads."""
    parser.add_argument("--hidden-dim", "--hidden", type=int, default=None, help="latents h (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="train about this many steps per model (overrides epochs)")
    parser.add_argument("--quick", action="store_true", help=f"at most {QUICK_ROWS} training rows and 3 epochs")
    parser.add_argument("--model", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="change a CSRConfig field of the recipe (repeatable)")
    parser.add_argument("--train", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="change a TrainConfig field of the recipe (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """The command line shared by quality.py and seeds.py: ``--data-dir``, ``--out`` and `add_recipe_arguments`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", required=True, type=Path, help="a banking77/BEIR folder, or a folder of them")
    parser.add_argument("--out", required=True, type=Path, help="write the results as JSON here")
    add_recipe_arguments(parser)
    return parser


def run_on_datasets(
    args: argparse.Namespace, run: Callable[[str, Path], dict], render: Callable[[dict], str]
) -> int:
    """``run(kind, folder)`` on every data set under ``--data-dir``; print ``render(results)``, write ``--out``.

    Returns:
        The exit code: 2 when ``--data-dir`` holds no data set, else 0.
    """
    torch.set_num_threads(args.threads)
    datasets = find_datasets(args.data_dir)
    if not datasets:
        print(f"error: no banking77 or BEIR folder under {args.data_dir}", file=sys.stderr)
        return 2
    results = {name: run(kind, folder) for name, (kind, folder) in datasets.items()}
    emit(results, render(results), args.out)
    return 0


def overrides_from(args: argparse.Namespace) -> Overrides:
    """The `Overrides` of parsed `add_recipe_arguments` options."""
    return Overrides(args.hidden_dim, args.epochs, args.steps, args.quick, dict(args.model), dict(args.train))


def train_recipe(train_x: np.ndarray, k: int, overrides: Overrides = Overrides(), seed: int = 0) -> CSREncoder:
    """Train the recipe (`csr_vdb.recipes.default_configs`) at ``k`` on ``train_x``, with ``overrides``."""
    model_cfg, train_cfg = default_configs(train_x.shape[1], len(train_x), k=k)
    model_updates = dict(overrides.model)
    if overrides.hidden_dim is not None:
        model_updates["hidden_dim"] = overrides.hidden_dim
    train_updates: dict[str, Any] = {"seed": seed, **overrides.train}
    if overrides.epochs is not None:
        train_updates["epochs"] = overrides.epochs
    if overrides.steps is not None:
        # about ``steps`` optimisation steps whatever the collection size
        per_epoch = -(-len(train_x) // train_cfg.batch_size)
        train_updates.update(epochs=max(1, -(-overrides.steps // per_epoch)), max_steps=overrides.steps)
    if overrides.quick:
        train_updates["epochs"] = min(train_updates.get("epochs", train_cfg.epochs), 3)
    model_cfg = with_overrides(model_cfg, **model_updates)
    train_cfg = TrainConfig(**{**train_cfg.model_dump(), **train_updates})
    return train_encoder(ArraySource(train_x), model_cfg, train_cfg).encoder


def score_recipe(score: Scorer, enc: CSREncoder) -> dict[str, float]:
    """The ways of searching with one trained model, scored by the data set's metric.

    ``csr``: the database's sparse search with the model's search query (``k_query`` entries),
    then the exact re-score of its ``search_candidates`` candidates (100 when unset) with the signed
    query, as `csr_vdb.retriever.Retriever` does; ``csr_search``: the search alone; ``csr_topk``:
    the same weights with TopK codes on both sides (the paper's CSR).
    """
    topk = enc.with_config(doc_codes="topk", bias_latent=False, query_projection="encoder", k_query=None,
                           search_candidates=None)
    candidates = enc.config.search_candidates or 100
    return {
        "csr": score(enc.encode, enc.encode_queries, "dot", lambda a: enc.encode_queries(a, signed=True), candidates),
        "csr_search": score(enc.encode, enc.encode_queries, "dot"),
        "csr_topk": score(topk.encode, topk.encode_queries, "dot"),
    }


def dead_fraction(codes) -> float:
    """Share of the ``dim`` latents that are non-zero in no row of ``codes``."""
    live = np.unique(codes.indices[codes.values != 0])
    return 1.0 - len(live) / codes.dim


def run_dataset(kind: str, folder: Path, ks: list[int], overrides: Overrides = Overrides()) -> dict:
    """Train one model per k on the database side and score every method on one dataset."""
    db, metric, score = dataset_scorer(kind, folder)
    d = db.shape[1]
    train_x = training_rows(db, overrides.quick)
    out: dict = {"metric": metric, "dense": score()}
    for key in ("csr", "csr_search", "csr_topk", "pca", "trunc", "pca_bytes", "trunc_bytes"):
        out[key] = {}
    train_s = 0.0
    dead_k = min(ks, key=lambda k: abs(k - 32))
    out["dead_frac"] = None
    for k in ks:
        start = time.perf_counter()
        enc = train_recipe(train_x, k, overrides)
        train_s += time.perf_counter() - start
        for key, value in score_recipe(score, enc).items():
            out[key][k] = value
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
    parser = recipe_parser(__doc__.splitlines()[0])
    parser.add_argument("--ks", default="8,16,32,64", help="comma-separated k values")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    overrides = overrides_from(args)
    return run_on_datasets(args, lambda kind, folder: run_dataset(kind, folder, ks, overrides), render)


if __name__ == "__main__":
    sys.exit(main())
