"""Sync cost vs a full migration: `sync_migration` after 1% of the rows changed, same store, same run.

    python bench/sync.py --store qdrant-edge --rows 100000 --out bench/results/sync_qdrant_edge.json
    python bench/sync.py --store milvus --rows 100000 --out bench/results/sync_milvus.json

The source is a dense collection of ``--rows`` 384-d clustered unit vectors with small payloads
carrying an ``updated_at`` stamp. The run, timed step by step:

1. migrate the source (read, encode, upsert, journal, final flush);
2. a first ``--changed-field updated_at`` sync (nothing changed: it reads every row once and sets
   the watermark);
3. change ``--change`` of the rows (a third inserts, a third deletes, a third updates: half of
   them the vector, a quarter the payload alone, a quarter both; every write bumps
   ``updated_at``) and sync with ``--changed-field updated_at`` (ids and the stamp scanned, only
   the rows at or above the watermark read);
4. change as many rows again and run a full sync (the whole source paged and compared with the
   journal's manifest);
5. a sync with nothing to do.

Ratio = sync seconds / migration seconds (target <= 0.10). ``--encode model`` encodes with a CSR
encoder of the recipe's shape (h = 4 x 384, k = 32, matching-pursuit documents; untrained weights
encode as fast as trained ones); ``--encode projection`` with a numpy projection + top-k, far cheaper,
which makes the migration shorter and the ratio a worse case.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from bench.common import ProjectionEncoder, bench_main, placeholder_model, store_arguments, text_table  # noqa: E402
from bench.migrate import default_uri  # noqa: E402
from bench.store_io import make_dense  # noqa: E402
from csr_vdb.adapters import open_store  # noqa: E402
from csr_vdb.migrations import MigrationPlan, run_migration, sync_migration  # noqa: E402

DIM = 384
FIELD = "updated_at"


def make_encoder(kind: str, rows: int, model_dir: Path) -> tuple[Any, Path]:
    """The document encoder and the model folder its plan checksums."""
    if kind == "projection":
        return ProjectionEncoder(DIM, 4 * DIM, 32, seed=0), placeholder_model(model_dir)
    import torch

    from csr_vdb.model import CSREncoder
    from csr_vdb.recipes import default_configs

    torch.manual_seed(0)
    enc = CSREncoder(default_configs(DIM, rows)[0], device="cpu")
    enc.save(model_dir)
    return enc.encode, model_dir


class Changes:
    """Changes a fraction of the source's rows per round (inserts, updates of each kind, deletes)."""

    def __init__(self, store: Any, name: str, ids: list[int], seed: int = 3) -> None:
        self.store, self.name, self.ids = store, name, list(ids)
        self.rng = np.random.default_rng(seed)
        self.next_id = max(ids) + 1
        self.stamp = 1_000_000

    def round(self, n: int) -> dict[str, int]:
        """Change ``n`` rows; returns how many of each kind."""
        self.stamp += 1
        third = n // 3
        pick = self.rng.choice(len(self.ids), size=2 * third, replace=False)
        upd, gone = [self.ids[j] for j in pick[:third]], [self.ids[j] for j in pick[third:]]
        vec, pay, both = upd[: third // 2], upd[third // 2 : 3 * third // 4], upd[3 * third // 4 :]
        new = list(range(self.next_id, self.next_id + n - 2 * third))
        self.next_id += len(new)
        stamp = {FIELD: self.stamp}
        self.store.insert_dense(self.name, new, make_dense(len(new), DIM, seed=self.stamp),
                                [{"doc": i, "title": f"new {i}", **stamp} for i in new])
        old = {r.id: r for r in self.store.fetch(self.name, upd, with_dense=True)}
        fresh = make_dense(len(vec) + len(both), DIM, seed=self.stamp + 7)
        self.store.insert_dense(self.name, vec + both, fresh,
                                [{**old[i].payload, **stamp, **({"edited": True} if i in both else {})}
                                 for i in vec + both])
        self.store.insert_dense(self.name, pay, np.stack([old[i].dense for i in pay]),
                                [{**old[i].payload, "title": f"retitled {i}", **stamp} for i in pay])
        self.store.delete(self.name, gone)
        dropped = set(gone)
        self.ids = [i for i in self.ids if i not in dropped] + new
        return {"inserts": len(new), "vector": len(vec), "payload": len(pay), "both": len(both), "deletes": len(gone)}


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(args: argparse.Namespace) -> dict:
    n = args.rows
    tmp = tempfile.mkdtemp(prefix="csr-vdb-sync-")
    uri = args.uri or default_uri(args.store, tmp)
    store = open_store(args.store, uri)
    src = f"{args.prefix}_src"
    base = Path(tmp) / "state"
    try:
        for name in (src, f"{src}_csr"):
            store.drop(name)
        ids = list(range(n))
        x = make_dense(n, DIM, seed=1)
        payloads = [{"doc": i, "title": f"document {i}", FIELD: i} for i in ids]  # as if written one by one
        store.create_dense_collection(src, DIM, metric="cosine")
        for s in range(0, n, 5000):
            store.insert_dense(src, ids[s : s + 5000], x[s : s + 5000], payloads[s : s + 5000])
        store.flush(src)
        encode, model = make_encoder(args.encode, n, Path(tmp) / "model")
        plan = MigrationPlan.create(store, store_kind=args.store, uri=uri, source=src, model_dir=model,
                                    batch_size=args.batch_size)
        mig, mig_s = _timed(lambda: run_migration(store, plan, encode, state_base=base))

        def sync(**kw: Any) -> tuple[Any, float]:
            return _timed(lambda: sync_migration(store, plan, encode, state_base=base, **kw))

        first, first_s = sync(changed_field=FIELD)
        changes = Changes(store, src, ids)
        k = max(3, round(n * args.change))
        made_cf = changes.round(k)
        cf, cf_s = sync(changed_field=FIELD)
        made_full = changes.round(k)
        full, full_s = sync()
        noop, noop_s = sync()
        if noop.changes or store.count(plan.target) != store.count(src):
            raise RuntimeError(f"sync left differences: {noop.changes} changes on a second sync")
        if not args.keep:
            for name in (src, plan.target):
                store.drop(name)
    finally:
        store.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    def counts(r: Any) -> dict[str, int]:
        return {"inserts": r.inserts, "reencodes": r.reencodes, "payload_updates": r.payload_updates,
                "deletes": r.deletes, "rows_read": r.rows_read}

    return {
        "store": args.store,
        "rows": n,
        "batch_size": args.batch_size,
        "encode": args.encode,
        "changed_rows": k,
        "migrate_s": round(mig_s, 2),
        "migrate_flush_s": mig.flush_s,
        "first_changed_field_sync_s": round(first_s, 2),
        "sync_changed_field_s": round(cf_s, 2),
        "sync_full_s": round(full_s, 2),
        "sync_nothing_to_do_s": round(noop_s, 2),
        "ratio_changed_field": round(cf_s / mig_s, 4),
        "ratio_full": round(full_s / mig_s, 4),
        "changes_made": {"changed_field": made_cf, "full": made_full},
        "sync_changed_field": counts(cf),
        "sync_full": counts(full),
        "first_sync_rows_read": first.rows_read,
        "machine": f"{platform.machine()} {platform.system()}, {platform.python_version()}",
    }


def table(rows: list[dict]) -> str:
    return text_table(rows, [
        ("store", "store", "<12"), ("rows", "rows", ">8"), ("encode", "encode", ">10"),
        ("changed", "changed_rows", ">8"), ("migrate s", "migrate_s", ">10.1f"),
        ("sync s (field)", "sync_changed_field_s", ">15.2f"), ("ratio", "ratio_changed_field", ">7.3f"),
        ("sync s (full)", "sync_full_s", ">14.2f"), ("ratio", "ratio_full", ">7.3f"),
        ("no-op s", "sync_nothing_to_do_s", ">8.2f"),
    ])


def main(argv: list[str] | None = None) -> int:
    p = store_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "bench_sync")
    p.add_argument("--change", type=float, default=0.01, help="fraction of the rows changed per round")
    p.add_argument("--encode", choices=["model", "projection"], default="model")
    return bench_main(p, argv, run, table)


if __name__ == "__main__":
    sys.exit(main())
