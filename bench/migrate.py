"""Migration throughput: `run_migration` end to end vs a raw sparse insert of the same vectors, same store, same run.

    python bench/migrate.py --store milvus --rows 20000 --out bench/results/migrate_milvus.json
    python bench/migrate.py --store qdrant-edge --rows 100000
    python bench/migrate.py --store qdrant-edge --rows 20000 --encode projection

The source is a dense collection of ``--rows`` 384-d clustered unit vectors with small payloads.
Codes (32 non-zeros over h=16384, Zipf-like latent popularity) are made once up front. The raw
baseline upserts them with the dense vectors and payloads, page by page, straight through the
adapter (no read, no validation, no journal), then flushes. The migration reads the source by
cursor, validates, "encodes" (``--encode lookup`` hands back the same pre-made codes, so the ratio
measures the engine's own overhead; ``--encode projection`` computes a numpy projection + top-k per
batch, to show encoding overlapped with I/O), upserts, journals and flushes. Ratio = migrate / raw
rows/s (target >= 0.8), with and without the final flush (Qdrant Edge's optimize dominates small runs).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from bench.common import ProjectionEncoder, bench_main, placeholder_model, store_arguments, text_table  # noqa: E402
from bench.store_io import make_dense, make_sparse  # noqa: E402
from csr_vdb.adapters import open_store  # noqa: E402
from csr_vdb.migrations import MigrationPlan, run_migration  # noqa: E402
from csr_vdb.sparse import SparseVectors  # noqa: E402

DIM = 384


def default_uri(store: str, tmp: str) -> str:
    return {"milvus": f"{tmp}/bench.db", "qdrant-edge": f"{tmp}/edge", "memory": "memory://"}[store]


class LookupEncoder:
    """Hands back pre-made codes for the vectors it is given (keyed by their bytes)."""

    def __init__(self, x: np.ndarray, codes: SparseVectors) -> None:
        self.row = {x[i].tobytes(): i for i in range(len(x))}
        self.codes = codes

    def __call__(self, batch: np.ndarray) -> SparseVectors:
        rows = [self.row[np.ascontiguousarray(v, np.float32).tobytes()] for v in batch]
        return self.codes[rows]


def source_rows(n: int, hidden_dim: int, k: int) -> tuple[list[int], np.ndarray, list[dict], SparseVectors]:
    """``(ids, dense [n, DIM], payloads, codes)`` of the benchmark's source collection (the data of store_io.py)."""
    payloads = [{"doc": i, "title": f"document {i}", "lang": "en" if i % 3 else "de"} for i in range(n)]
    return list(range(n)), make_dense(n, DIM, seed=1), payloads, make_sparse(n, hidden_dim, k, seed=2)


def run(args: argparse.Namespace) -> dict:
    n, bs = args.rows, args.batch_size
    ids, x, payloads, codes = source_rows(n, args.hidden_dim, args.k)
    tmp = tempfile.mkdtemp(prefix="csr-vdb-migrate-")
    uri = args.uri or default_uri(args.store, tmp)
    store = open_store(args.store, uri)
    src, raw, tgt = f"{args.prefix}_src", f"{args.prefix}_raw", f"{args.prefix}_csr"
    try:
        for name in (src, raw, tgt):
            store.drop(name)
        t = time.perf_counter()
        store.create_dense_collection(src, DIM, metric="cosine")
        for s in range(0, n, 5000):
            store.insert_dense(src, ids[s : s + 5000], x[s : s + 5000], payloads[s : s + 5000])
        store.flush(src)
        load_s = time.perf_counter() - t
        # the vectors as the store hands them back (Qdrant may renormalise), for the lookup encoder
        stored = np.concatenate([p.vectors for p in store.iter_dense(src, 5000)])

        store.create_sparse_collection(raw, like=src, keep_dense=True)
        t = time.perf_counter()
        for s in range(0, n, bs):
            store.upsert(raw, ids[s : s + bs], codes[s : s + bs], payloads[s : s + bs], dense=stored[s : s + bs])
        raw_write_s = time.perf_counter() - t
        store.flush(raw)
        raw_s = time.perf_counter() - t

        model = placeholder_model(Path(tmp) / "model")
        if args.encode == "lookup":
            encode = LookupEncoder(stored, codes)
        else:
            encode = ProjectionEncoder(DIM, args.hidden_dim, args.k, seed=0)
        plan = MigrationPlan.create(
            store, store_kind=args.store, uri=uri, source=src, target=tgt, model_dir=model, batch_size=bs
        )
        t = time.perf_counter()
        res = run_migration(store, plan, encode, state_base=Path(tmp) / "state")
        mig_s = time.perf_counter() - t
        assert store.count(tgt) == n, "migration lost rows"
        if not args.keep:
            for name in (src, raw, tgt):
                store.drop(name)
    finally:
        store.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "store": args.store,
        "rows": n,
        "batch_size": bs,
        "encode": args.encode,
        "hidden_dim": args.hidden_dim,
        "k": args.k,
        "source_load_s": round(load_s, 2),
        "raw_insert_s": round(raw_s, 2),
        "raw_flush_s": round(raw_s - raw_write_s, 2),
        "raw_rows_per_s": round(n / raw_s, 1),
        "migrate_s": round(mig_s, 2),
        "migrate_flush_s": res.flush_s,
        "migrate_rows_per_s": round(n / mig_s, 1),
        "ratio": round(raw_s / mig_s, 3),
        "ratio_without_flush": round(raw_write_s / max(mig_s - res.flush_s, 1e-9), 3),
        "batches": res.batches,
        "machine": f"{platform.machine()} {platform.system()}, {platform.python_version()}",
    }


def table(rows: list[dict]) -> str:
    return text_table(rows, [
        ("store", "store", "<12"), ("rows", "rows", ">8"), ("batch", "batch_size", ">6"), ("encode", "encode", ">10"),
        ("raw rows/s", "raw_rows_per_s", ">11.0f"), ("migrate rows/s", "migrate_rows_per_s", ">15.0f"),
        ("ratio", "ratio", ">6.2f"),
        ("flush s raw/mig", lambda r: f"{r['raw_flush_s']:.1f}/{r['migrate_flush_s']:.1f}", ">16"),
        ("ratio w/o flush", "ratio_without_flush", ">16.2f"),
    ])


def main(argv: list[str] | None = None) -> int:
    p = store_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "bench_migrate")
    p.add_argument("--hidden-dim", "--hidden", type=int, default=16384, help="dimension h of the codes")
    p.add_argument("--k", type=int, default=32, help="non-zeros per sparse vector")
    p.add_argument("--encode", choices=["lookup", "projection"], default="lookup")
    return bench_main(p, argv, run, table)


if __name__ == "__main__":
    sys.exit(main())
