"""Training-seed sweep: the recipe at one k, trained once per seed, scored as bench/quality.py scores it.

Usage::

    python bench/seeds.py --data-dir ../shared/data --out bench/results/seeds.json [--seeds 0,1,2,3,4]
        [--k 32] [--hidden-dim H] [--epochs E | --steps S] [--quick] [--threads 2] [--model KEY=VALUE]
        [--train KEY=VALUE]

DIR holds a ``banking77/`` folder and/or BEIR folders, or is one such folder (as for quality.py).
For every data set and seed one model is trained on the database side with
`csr_vdb.recipes.default_configs` (``TrainConfig.seed`` = the seed, everything else the recipe's)
and scored with the same code as bench/quality.py (`quality.train_recipe`, `quality.score_recipe`):
``csr`` (search + exact re-score of 100 candidates from their codes, the recipe), ``csr_search``
(the search alone), ``csr_topk`` (TopK codes on both sides); plus ``csr_no_bias``: the same weights
without the bias latent in the document codes, search + re-score. The table gives each seed, the
mean and the range, with the mean as a percentage of dense.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from bench.common import percent_of  # noqa: E402
from bench.quality import (  # noqa: E402
    Overrides,
    dataset_scorer,
    overrides_from,
    recipe_parser,
    run_on_datasets,
    score_recipe,
    train_recipe,
    training_rows,
)

METHODS = {
    "csr": "search + re-score (recipe)",
    "csr_search": "search alone",
    "csr_no_bias": "no bias latent, + re-score",
    "csr_topk": "TopK codes both sides",
}


def run_dataset(kind: str, folder: Path, seeds: list[int], k: int, overrides: Overrides = Overrides()) -> dict:
    """One model per seed on one data set; every method's score per seed and its summary."""
    db, metric, score = dataset_scorer(kind, folder)
    train_x = training_rows(db, overrides.quick)
    out: dict = {"metric": metric, "dense": score(), "k": k, "seeds": seeds, "train_s": {}}
    for key in METHODS:
        out[key] = {}
    for seed in seeds:
        start = time.perf_counter()
        enc = train_recipe(train_x, k, overrides, seed=seed)
        out["train_s"][seed] = round(time.perf_counter() - start, 2)
        for key, value in score_recipe(score, enc).items():
            out[key][seed] = value
        plain = enc.with_config(bias_latent=False)
        out["csr_no_bias"][seed] = score(
            plain.encode, plain.encode_queries, "dot", lambda a: plain.encode_queries(a, signed=True),
            plain.config.search_candidates or 100,
        )
    out["summary"] = {
        key: {
            "mean": float(np.mean(list(out[key].values()))),
            "min": float(min(out[key].values())),
            "max": float(max(out[key].values())),
        }
        for key in METHODS
    }
    return out


def render(results: dict) -> str:
    """One block per data set: a line per method, a column per seed, then mean (% of dense) and range."""
    lines = []
    for name, res in results.items():
        seeds = res["seeds"]
        train = sum(res["train_s"].values())
        lines.append(f"{name} ({res['metric']}, k={res['k']}): dense {res['dense']:.4f}, train {train:.0f} s")
        lines.append(
            f"  {'method':<28}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>18}{'range':>18}"
        )
        for key, label in METHODS.items():
            summ = res["summary"][key]
            cells = "".join(f"{res[key][s]:>9.4f}" for s in seeds)
            mean = f"{summ['mean']:.4f} ({percent_of(summ['mean'], res['dense']):.1f}%)"
            lines.append(f"  {label:<28}{cells}{mean:>18}{summ['min']:>9.4f}-{summ['max']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds")
    parser.add_argument("--k", type=int, default=32, help="active latents per document code")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        print("error: no seeds given", file=sys.stderr)
        return 2
    overrides = overrides_from(args)
    return run_on_datasets(args, lambda kind, folder: run_dataset(kind, folder, seeds, args.k, overrides), render)


if __name__ == "__main__":
    sys.exit(main())
