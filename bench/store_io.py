"""Raw store throughput: sparse insert, sparse search (single and batched) and dense export, per store.

The yardstick the migration engine is compared against: the same pre-encoded vectors written
straight through the `VectorStore` adapter, no encoder, no journal.

    python bench/store_io.py --store milvus --rows 20000 --out bench/results/store_io_milvus.json
    python bench/store_io.py --store qdrant-edge --rows 100000
    python bench/store_io.py --store qdrant --uri http://localhost:6333 --rows 100000

Data: ``--rows`` dense vectors (384-d, clustered, unit norm) and sparse codes with 32 non-zeros
over h=16384 whose latent popularity is Zipf-like (a few latents fire often, most rarely), as
trained CSR codes do; uniform random latents would make inverted lists unrealistically short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csr_vdb.adapters import open_store  # noqa: E402
from csr_vdb.sparse import SparseVectors  # noqa: E402

DIM = 384


def make_dense(n: int, dim: int, seed: int, clusters: int = 64) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors around ``clusters`` centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_sparse(n: int, hidden: int, k: int, seed: int) -> SparseVectors:
    """``n`` codes with ``k`` distinct latents each, drawn with Zipf-like popularity, positive values."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, hidden + 1) ** 0.8
    weights = weights[rng.permutation(hidden)]
    p = weights / weights.sum()
    idx = np.empty((n, k), np.int64)
    # distinct latents per row: draw a few extra and keep the first k unique ones
    for a in range(0, n, 4096):
        m = min(4096, n - a)
        draw = rng.choice(hidden, size=(m, 3 * k), p=p)
        for r in range(m):
            _, first = np.unique(draw[r], return_index=True)
            row = draw[r][np.sort(first)][:k]
            while len(row) < k:  # vanishingly rare: top up with unused latents
                extra = rng.integers(0, hidden)
                if extra not in row:
                    row = np.append(row, extra)
            idx[a + r] = row
    vals = np.sort(np.abs(rng.normal(size=(n, k))).astype(np.float32) + 0.01, axis=1)[:, ::-1]
    return SparseVectors(idx, np.ascontiguousarray(vals), hidden)


def default_uri(store: str, tmp: str) -> str:
    if store == "milvus":
        return os.path.join(tmp, "store_io.db")
    return os.path.join(tmp, store)


def run(args: argparse.Namespace) -> dict:
    tmp = tempfile.mkdtemp(prefix="store_io_")
    uri = args.uri or default_uri(args.store, tmp)
    n, bs = args.rows, args.batch_size
    dense = make_dense(n, DIM, seed=0)
    codes = make_sparse(n, args.hidden, args.k, seed=1)
    queries = make_sparse(max(args.queries, args.single_queries), args.hidden, args.k, seed=2)
    ids = list(range(n))
    payloads = [{"doc": f"doc-{i}", "n": i} for i in ids]
    src, tgt = f"{args.prefix}_dense", f"{args.prefix}_csr"
    res: dict = {
        "store": args.store,
        "uri": uri if args.uri else "(temporary)",
        "rows": n,
        "dense_dim": DIM,
        "hidden_dim": args.hidden,
        "k": args.k,
        "batch_size": bs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
        # the machine is shared: a load far above the core count slows every figure down
        "load_avg_1m_start": os.getloadavg()[0],
    }
    store = open_store(args.store, uri, token=os.environ.get("CSR_VDB_TOKEN"))
    try:
        for name in (src, tgt):
            store.drop(name)
        store.create_dense_collection(src, DIM, metric="cosine")
        t = time.perf_counter()
        for a in range(0, n, bs):
            store.insert_dense(src, ids[a : a + bs], dense[a : a + bs], payloads[a : a + bs])
        store.flush(src)
        res["dense_insert_rows_s"] = n / (time.perf_counter() - t)

        t = time.perf_counter()
        seen = 0
        for page in store.iter_dense(src, batch_size=bs):
            seen += len(page)
        el = time.perf_counter() - t
        assert seen == n, f"exported {seen} of {n} rows"
        res["export_rows_s"] = n / el
        res["export_s"] = el

        store.create_sparse_collection(tgt, like=src, keep_dense=True)
        t = time.perf_counter()
        for a in range(0, n, bs):
            store.upsert(tgt, ids[a : a + bs], codes[a : a + bs], payloads[a : a + bs], dense=dense[a : a + bs])
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        store.flush(tgt)
        flush_s = time.perf_counter() - t
        res["sparse_upsert_rows_s"] = n / write_s
        res["sparse_upsert_with_flush_rows_s"] = n / (write_s + flush_s)
        res["flush_s"] = flush_s
        count = store.count(tgt)
        assert count == n, f"target holds {count} rows, expected {n}"

        store.search_sparse(tgt, queries[:1], limit=10)  # warm-up (index load)
        t = time.perf_counter()
        done = 0
        for r in range(args.single_queries):
            store.search_sparse(tgt, queries[r : r + 1], limit=10)
            done += 1
            if time.perf_counter() - t > args.single_seconds:
                break
        el = time.perf_counter() - t
        res["single_query_n"] = done
        res["single_query_ms"] = 1000 * el / done
        res["single_qps"] = done / el

        t = time.perf_counter()
        hits = store.search_sparse(tgt, queries[: args.queries], limit=10)
        el = time.perf_counter() - t
        res["batch_queries"] = args.queries
        res["batch_s"] = el
        res["batch_qps"] = args.queries / el
        res["batch_mean_hits"] = float(np.mean([len(h) for h in hits]))
        res["load_avg_1m_end"] = os.getloadavg()[0]
        if not args.keep:
            store.drop(tgt)
            store.drop(src)
    finally:
        store.close()
        if not args.uri and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def table(rows: list[dict]) -> str:
    cols = [
        ("store", "store", "{}"),
        ("rows", "rows", "{}"),
        ("dense insert/s", "dense_insert_rows_s", "{:,.0f}"),
        ("export/s", "export_rows_s", "{:,.0f}"),
        ("sparse upsert/s", "sparse_upsert_rows_s", "{:,.0f}"),
        ("+flush", "sparse_upsert_with_flush_rows_s", "{:,.0f}"),
        ("1 query ms", "single_query_ms", "{:.2f}"),
        ("batch qps", "batch_qps", "{:,.0f}"),
    ]
    head = " | ".join(c[0] for c in cols)
    lines = [f"| {head} |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, choices=["milvus", "qdrant-edge", "qdrant", "memory"])
    p.add_argument("--uri", help="store location (default: a temporary file/folder, removed afterwards)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=16384, help="sparse dimension h")
    p.add_argument("--k", type=int, default=32, help="non-zeros per sparse vector")
    p.add_argument("--queries", type=int, default=100, help="queries in the one batched search call")
    p.add_argument("--single-queries", type=int, default=100, help="at most this many one-query calls")
    p.add_argument("--single-seconds", type=float, default=10.0, help="stop single queries after this long")
    p.add_argument("--prefix", default="store_io", help="collection name prefix (for a shared server)")
    p.add_argument("--keep", action="store_true", help="keep the collections and temporary files")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    res = run(args)
    print(table([res]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
