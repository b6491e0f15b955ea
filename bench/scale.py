"""Dense HNSW vs the CSR sparse collection at scale, in one engine, one run: latency, throughput, build, size, memory, quality.

    python bench/scale.py --n 200000 --store qdrant-edge --out bench/results/scale_200k.json
    python bench/scale.py --n 50000 --store milvus --out bench/results/scale_milvus_50k.json
    python bench/scale.py --n 200000 --workdir /tmp/scale200k \\
        --variant m64=width:64,candidates:300 --variant c64=width:64,select:cost,alpha:0.5,candidates:300 \\
        --sparse-config f16=datatype:float16 --out bench/results/scale_levers.json

Rows: SciFact's corpus MiniLM vectors under their own doc ids, plus noisy unit-norm copies of them
(``normalize(x + noise * g / sqrt(d))``, ids from 1e9 on) up to ``--n`` rows; or the first ``--n``
rows of a ``--vectors`` memmap (ids = row numbers); synthetic clustered vectors when neither is
there. Queries: SciFact's judged test queries (``--queries``) and ``--self-queries`` rows of the
collection (each excluded from its own results).

Collections, each in its own store location and served by its own worker process
(bench/scale_worker.py): ``dense`` (the engine's ANN index; Qdrant's HNSW, Milvus' AUTOINDEX)
and one or more lean sparse collections of the project's codes (``sparse``, plus one per
``--sparse-config``). The encoder is trained with the recipe on a sample of the rows
(``--train-rows``) or loaded with ``--model``; ``--workdir`` keeps collections, models and codes
for the next run with the same settings.

Modes, timed one query at a time and interleaved per query (the order rotates):
``dense`` (the adapter's `search_dense`, engine defaults), ``dense_ef`` (HNSW ``ef`` raised until
recall of the exact dense top-10 reaches ``--ef-recall``, the adapter's ``search_dense(ef=...)``;
Qdrant Edge), ``search:<variant>`` (the adapter's `search_sparse` at the variant's candidate
limit, with the variant's search query) and ``retriever:<variant>`` (`Retriever.search` with the exact
re-score from codes and the encoder's ``k_query`` set to the variant's width: encode, search,
fetch the candidates' codes, re-score: the whole query path; magnitude-selected widths only).
Variants: ``default`` (the encoder's own search query width ``k_query`` and ``search_candidates``,
what `Retriever.search` uses without arguments) and each ``--variant`` (what it leaves out is the
model's); sparse collections get the adapter's index settings (Qdrant: a uint8 index) unless
``--sparse-config`` gives others.

Quality: recall@10 of the exact dense top-10 over all rows (test and self-queries), and NDCG@10
on SciFact's test qrels: each mode's ranking to depth ``--depth`` (for ``retriever`` modes: all
candidates re-scored), every copy counted as the document it copies (first occurrence kept), the
first 10 documents scored; ``ndcg_docs_at_depth`` says how many distinct documents the depth held.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting are far slower on a shared, oversubscribed CPU (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_engines import SOURCE, disk_bytes, location, open_bench_store, sparse_settings  # noqa: E402

from bench.common import emit  # noqa: E402
from bench.loaders import load_beir_dir  # noqa: E402
from csr_vdb.metrics import exact_search, ndcg_at_k  # noqa: E402

COPY_ID_BASE = 1_000_000_000
TOP_K = 10
WORKER = Path(__file__).resolve().parent / "scale_worker.py"
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------- options
def parse_kv(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=key:val,key:val`` -> ``(NAME, {key: val})`` (ints and floats converted)."""
    name, _, rest = text.partition("=")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"bad name in {text!r} (NAME=key:val,...)")
    out: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, val = part.partition(":")
        if not sep:
            raise ValueError(f"bad setting {part!r} in {text!r} (key:val)")
        for conv in (int, float):
            try:
                out[key] = conv(val)
                break
            except ValueError:
                continue
        else:
            out[key] = val
    return name, out


VARIANT_KEYS = {"width", "select", "alpha", "candidates", "collection"}
COLLECTION_KEYS = {"model", "hidden"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="rows in each collection")
    p.add_argument("--store", default="qdrant-edge", choices=["qdrant-edge", "milvus"])
    p.add_argument("--uri", help="a server URI (Milvus: http://host:port); default: embedded, under --workdir")
    p.add_argument("--token", default=os.environ.get("CSR_VDB_TOKEN"), help="server token (default $CSR_VDB_TOKEN)")
    p.add_argument("--server-pid", type=int, help="measure this local server process's memory (with --uri)")
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="folder holding scifact/ (default ../shared/data beside the checkout)")
    p.add_argument("--vectors", type=Path, help="a .npy [rows, d] (float32/float16, memory-mapped) to use instead")
    p.add_argument("--synthetic", action="store_true", help="clustered synthetic vectors (also when no data)")
    p.add_argument("--noise", type=float, default=0.75, help="noise of the copies (cos to original 1/sqrt(1+noise^2))")
    p.add_argument("--queries", type=int, default=300, help="test queries (SciFact's judged test queries)")
    p.add_argument("--self-queries", type=int, default=200, help="rows of the collection used as queries")
    p.add_argument("--depth", type=int, default=100, help="ranking depth of the quality pass (NDCG)")
    p.add_argument("--model", type=Path, help="encoder folder (default: train the recipe on a sample)")
    p.add_argument("--train-rows", type=int, default=100_000, help="rows sampled to train on")
    p.add_argument("--hidden", type=int, help="latents h of the trained encoder (default: the recipe's)")
    p.add_argument("--steps", type=int, help="cap on training steps (default: the recipe's)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=key:val,...",
                   help="a search-query variant: width, select (magnitude|cost), alpha, candidates, collection")
    p.add_argument("--sparse-config", action="append", default=[], metavar="NAME=key:val,...",
                   help="another sparse collection: engine settings (Qdrant Edge: datatype, memory, "
                        "full_scan_threshold; Milvus: inverted_index_algo, drop_ratio_build) and/or "
                        "model:DIR or hidden:H (its own encoder)")
    p.add_argument("--no-default-variant", action="store_true", help="time only the --variant modes")
    p.add_argument("--fast", action="store_true",
                   help="also time fast:<variant>, a one-pass prototype of the query path (Qdrant Edge)")
    p.add_argument("--ef-recall", type=float, default=0.95, help="recall the tuned dense ef must reach")
    p.add_argument("--efs", default="16,32,64,100,128,192,256,384,512,768,1024,2048",
                   help="HNSW ef values tried for --ef-recall")
    p.add_argument("--throughput-seconds", type=float, default=3.0, help="per mode and thread count (0: skip)")
    p.add_argument("--throughput-modes", default="dense,dense_ef,search:default,retriever:default",
                   help="modes measured for throughput ('all' for every mode)")
    p.add_argument("--profile-modes", default="retriever:default",
                   help="modes profiled with cProfile after the timed run (comma-separated; '' for none)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="numpy BLAS threads in the worker processes (one query at a time: 1)")
    p.add_argument("--warmup", type=int, default=20, help="queries per mode before timing")
    p.add_argument("--batch-size", type=int, default=1000, help="rows per write")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and encoding")
    p.add_argument("--workdir", type=Path, help="keep collections, models and codes here and reuse them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.n < 20 or args.queries < 0 or args.self_queries < 0 or args.queries + args.self_queries < 1:
        p.error("--n must be >= 20 and there must be at least one query")
    # width / candidates left out: the model's own (k_query, search_candidates), filled in once it is loaded
    args.variants = {} if args.no_default_variant else {"default": {}}
    for text in args.variant:
        name, cfg = parse_kv(text)
        bad = set(cfg) - VARIANT_KEYS
        if bad:
            p.error(f"--variant {text}: unknown keys {sorted(bad)} (use {sorted(VARIANT_KEYS)})")
        args.variants[name] = cfg
    if not args.variants:
        p.error("no sparse variant to run")
    args.collections = {"sparse": {}}
    for text in args.sparse_config:
        name, cfg = parse_kv(text)
        if name in ("dense", "sparse", SOURCE):
            p.error(f"--sparse-config name {name!r} is taken")
        args.collections[name] = cfg
    targeted = {v.get("collection", "sparse") for v in args.variants.values()}
    for name in args.collections:
        if name not in targeted:  # a collection of its own settings: the default query on it
            args.variants[name] = {"collection": name}
    for name, v in args.variants.items():
        if v.get("collection", "sparse") not in args.collections:
            p.error(f"--variant {name}: no sparse collection {v['collection']!r}")
    args.efs = sorted({int(e) for e in args.efs.split(",") if e.strip()})
    return args


# ---------------------------------------------------------------------------- data
def build_rows(args: argparse.Namespace) -> dict[str, Any]:
    """The collection's vectors, ids and which rows are SciFact's own, plus the test queries."""
    rng = np.random.default_rng(args.seed)
    n = args.n
    scifact = args.data_dir / "scifact"
    if args.vectors is not None:
        x = np.load(args.vectors, mmap_mode="r")
        if x.ndim != 2 or len(x) < n:
            raise SystemExit(f"error: {args.vectors} has shape {x.shape}, need at least {n} rows")
        x = np.ascontiguousarray(x[:n], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return {"x": x, "ids": np.arange(n, dtype=np.int64), "source": f"vectors {args.vectors}",
                "base_rows": n, "beir": None, "test_x": np.zeros((0, x.shape[1]), np.float32)}
    if not args.synthetic and (scifact / "corpus_emb.npy").is_file():
        beir = load_beir_dir(scifact, split="test")
        base = np.asarray(beir.corpus_x, dtype=np.float32)
        base_ids = np.array([int(i) for i in beir.corpus_ids], dtype=np.int64)
        test_x = np.asarray(beir.queries_x, dtype=np.float32)
        source = f"scifact corpus ({len(base)} rows) + noisy copies"
    else:
        beir = None
        centres = rng.normal(size=(64, 384))
        m = min(n, 5000)
        base = centres[rng.integers(0, 64, m)] + 0.8 * rng.normal(size=(m, 384))
        base = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
        base_ids = np.arange(m, dtype=np.int64)
        t = base[rng.choice(m, min(m, 300), replace=False)] + 0.3 * rng.normal(size=(min(m, 300), 384))
        test_x = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
        source = f"synthetic clustered ({m} rows) + noisy copies"
    keep = min(n, len(base))
    d = base.shape[1]
    x = np.empty((n, d), np.float32)
    x[:keep] = base[:keep]
    ids = np.empty(n, np.int64)
    ids[:keep] = base_ids[:keep]
    copies = n - keep
    for a in range(0, copies, 65536):
        b = min(copies, a + 65536)
        j = np.arange(a, b)
        g = rng.standard_normal((b - a, d), dtype=np.float32) * np.float32(args.noise / np.sqrt(d))
        v = base[j % keep] + g
        x[keep + a : keep + b] = v / np.linalg.norm(v, axis=1, keepdims=True)
        ids[keep + a : keep + b] = COPY_ID_BASE + j
    return {"x": x, "ids": ids, "source": source, "base_rows": keep, "beir": beir, "test_x": test_x}


def data_key(args: argparse.Namespace, rows: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(f"{args.n}|{rows['source']}|{args.noise}|{args.seed}".encode())
    h.update(rows["x"][:: max(1, args.n // 512)].tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- model and codes
def train_or_load(args: argparse.Namespace, rows: dict[str, Any], key: str, workdir: Path,
                  model: Path | None, hidden: int | None) -> tuple[Path, dict[str, Any]]:
    """The encoder folder to use and what training it cost (cached under ``workdir``)."""
    if model is not None:
        return model, {"trained": False, "model": str(model)}
    import torch

    from csr_vdb.recipes import default_configs
    from csr_vdb.sources import ArraySource
    from csr_vdb.training import train_encoder

    x = rows["x"]
    n_train = min(args.train_rows, len(x))
    tag = f"model_{key}_h{hidden or 'recipe'}_t{n_train}_s{args.steps or 'recipe'}_seed{args.seed}"
    out = workdir / tag
    info_path = out / "bench_train.json"
    if info_path.is_file():
        return out, json.loads(info_path.read_text())
    torch.set_num_threads(args.threads)
    sample = x[np.sort(np.random.default_rng(args.seed + 1).choice(len(x), n_train, replace=False))]
    model_cfg, train_cfg = default_configs(x.shape[1], n_train, hidden_dim=hidden)
    upd: dict[str, Any] = {"threads": args.threads, "seed": args.seed}
    if args.steps:
        per_epoch = -(-n_train // train_cfg.batch_size)
        upd.update(epochs=max(1, -(-args.steps // per_epoch)), max_steps=args.steps)
    t = time.perf_counter()
    enc = train_encoder(ArraySource(sample), model_cfg, train_cfg.model_copy(update=upd)).encoder
    info = {"trained": True, "train_rows": n_train, "train_s": round(time.perf_counter() - t, 1),
            "hidden_dim": enc.config.hidden_dim, "k": enc.config.k, "steps_cap": args.steps}
    enc.save(out)
    info_path.write_text(json.dumps(info))
    return out, info


def encode_rows(args: argparse.Namespace, x: np.ndarray, model_dir: Path, key: str, workdir: Path):
    """Document codes of every row (cached under ``workdir`` by data and model checksum)."""
    import torch

    from csr_vdb.model import CSREncoder
    from csr_vdb.sparse import SparseVectors

    sha = json.loads((model_dir / "config.json").read_text())["weights_sha256"][:16]
    path = workdir / f"codes_{key}_{sha}.npz"
    if path.is_file():
        z = np.load(path)
        return SparseVectors(z["indices"], z["values"], int(z["dim"])), float(z["encode_s"])
    torch.set_num_threads(args.threads)
    enc = CSREncoder.load(model_dir, device="cpu")
    t = time.perf_counter()
    parts = [enc.encode(x[a : a + 32768]) for a in range(0, len(x), 32768)]
    codes = SparseVectors.concat(parts)
    encode_s = time.perf_counter() - t
    np.savez(path, indices=codes.indices.astype(np.int32), values=codes.values, dim=codes.dim, encode_s=encode_s)
    return codes, encode_s


# ---------------------------------------------------------------------------- building
def build_collection(args, name: str, kind: str, rows: dict[str, Any], key: str, workdir: Path,
                     codes=None, engine_cfg: dict[str, Any] | None = None, model_sha: str = "") -> dict[str, Any]:
    """Create and fill one collection unless ``workdir`` holds it from an earlier run; returns its build record."""
    uri, coll = location(args.store, workdir, name, args.uri)
    manifest = workdir / f"{name}.build.json"
    engine = sparse_settings(args.store, engine_cfg) if kind == "sparse" else {}
    want = {"key": key, "kind": kind, "engine": engine, "model": model_sha, "store": args.store,
            "uri": args.uri or ""}
    if manifest.is_file():
        rec = json.loads(manifest.read_text())
        if rec.get("want") == want:
            rec.update(reused=True, uri=uri, collection=coll)  # the workdir may have moved
            return rec
    if not args.uri:
        target = Path(uri)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    rec: dict[str, Any] = {"want": want, "uri": uri, "collection": coll, "reused": False}
    x, ids = rows["x"], rows["ids"].tolist()
    store = open_bench_store(args.store, uri, token=args.token)
    try:
        store.drop(coll)
        t = time.perf_counter()
        if kind == "dense":
            store.create_dense_collection(coll, x.shape[1], metric="cosine")
            for a in range(0, len(x), args.batch_size):
                store.insert_dense(coll, ids[a : a + args.batch_size], x[a : a + args.batch_size])
        else:
            like = f"{coll}_{SOURCE}"
            if not store.has_collection(like):
                store.create_dense_collection(like, x.shape[1], metric="cosine")
            store.create_sparse_collection(coll, like=like, keep_dense=False, sparse_index=engine)
            for a in range(0, len(x), args.batch_size):
                store.upsert(coll, ids[a : a + args.batch_size], codes[a : a + args.batch_size])
        rec["insert_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        store.flush(coll)
        rec["optimize_s"] = round(time.perf_counter() - t, 2)
        rec["count"] = store.count(coll)
        if args.store == "milvus" and kind == "sparse":
            rec.update(milvus_sparse_probe(store, coll))
    except Exception as exc:  # noqa: BLE001 - an engine that refuses a setting is a result
        rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        store.close()
    if "error" not in rec:
        rec["build_s"] = round(rec["insert_s"] + rec["optimize_s"], 2)
        rec["disk_bytes"] = None if args.uri else disk_bytes(uri)
        manifest.write_text(json.dumps(rec))
    return rec


def milvus_sparse_probe(store: Any, coll: str) -> dict[str, Any]:
    """What the Milvus engine kept of the sparse index settings, and whether it takes search-time pruning.

    The adapter offers neither setting yet; this asks the client directly.
    """
    client = store._client
    out: dict[str, Any] = {}
    try:
        names = client.list_indexes(coll, field_name="csr")
        desc = dict(client.describe_index(coll, names[0])) if names else {}
        out["index"] = {k: v for k, v in desc.items() if k not in ("total_rows", "indexed_rows", "pending_index_rows",
                                                                   "state", "index_state_fail_reason")}
    except Exception as exc:  # noqa: BLE001 - a probe
        out["index"] = f"describe failed: {exc}"
    try:
        client.load_collection(coll)
        client.search(coll, data=[{0: 1.0}], anns_field="csr", limit=1,
                      search_params={"metric_type": "IP", "params": {"drop_ratio_search": 0.2}})
        out["drop_ratio_search_0.2"] = "accepted"
    except Exception as exc:  # noqa: BLE001 - the refusal is the result
        msg = str(getattr(exc, "message", None) or exc)
        out["drop_ratio_search_0.2"] = f"refused: {msg.splitlines()[0] if msg else type(exc).__name__}"
    return out


# ---------------------------------------------------------------------------- workers
class WorkerProc:
    """A worker process (bench/scale_worker.py) serving one collection."""

    def __init__(self, name: str, blas_threads: int = 1) -> None:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1",
               "CSR_SCALE_BLAS_THREADS": str(blas_threads)}
        self.name = name
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        self.pid = self.proc.pid

    def call(self, cmd: str, **kwargs: Any) -> Any:
        data = pickle.dumps((cmd, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) < 8:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()})")
        (size,) = struct.unpack("<Q", head)
        status, result = pickle.loads(self.proc.stdout.read(size))
        if status != "ok":
            raise RuntimeError(f"worker {self.name}: {result}")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
            except (RuntimeError, BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3), "n": len(ms)}


def recall(found: list[list[Any]], truth: list[list[Any]]) -> float:
    return float(np.mean([len(set(f[:TOP_K]) & set(t)) / len(t) for f, t in zip(found, truth)])) if truth else 0.0


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="csr_scale_"))
        workdir = tmp
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    workers: list[WorkerProc] = []
    try:
        return _run(args, workdir, workers)
    finally:
        for w in workers:
            w.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path, workers: list[WorkerProc]) -> dict[str, Any]:
    from csr_vdb.query_width import posting_lengths

    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "blas_threads": args.blas_threads, "schema": SCHEMA_VERSION, "bench": "scale", "date": date.today().isoformat(),
        "command": "python bench/scale.py " + " ".join(args.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu", "load_avg_start": list(os.getloadavg()),
        "store": args.store, "uri": args.uri or "(embedded)", "n": args.n,
    }
    rows = build_rows(args)
    x, ids = rows["x"], rows["ids"]
    key = data_key(args, rows)
    is_copy = ids >= COPY_ID_BASE
    res["data"] = {"source": rows["source"], "base_rows": rows["base_rows"], "copies": int(is_copy.sum()),
                   "noise": args.noise, "dim": int(x.shape[1])}

    # queries: test queries then self-queries; ground truth = exact dense top-10 over all rows
    rng = np.random.default_rng(args.seed + 2)
    test_x = rows["test_x"][: args.queries]
    self_rows = np.sort(rng.choice(len(x), min(args.self_queries, len(x)), replace=False))
    qx = np.concatenate([test_x, x[self_rows]]).astype(np.float32)
    n_test = len(test_x)
    limits = [TOP_K] * n_test + [TOP_K + 1] * len(self_rows)
    _, exact_rows = exact_search(qx, x, TOP_K + 1, metric="dot")
    truth: list[list[int]] = []
    for qi in range(len(qx)):
        own = int(ids[self_rows[qi - n_test]]) if qi >= n_test else None
        truth.append([int(ids[r]) for r in exact_rows[qi] if int(ids[r]) != own][:TOP_K])
    res["queries"] = {"test": n_test, "self": int(len(self_rows))}

    # models and codes, one per distinct encoder
    base_model, base_info = train_or_load(args, rows, key, workdir, args.model, args.hidden)
    models: dict[str, tuple[Path, dict[str, Any]]] = {"sparse": (base_model, base_info)}
    for name, cfg in args.collections.items():
        if name == "sparse":
            continue
        if "model" in cfg or "hidden" in cfg:
            m = Path(cfg["model"]) if "model" in cfg else None
            models[name] = train_or_load(args, rows, key, workdir, m, cfg.get("hidden"))
        else:
            models[name] = models["sparse"]
    codes_by_model: dict[str, Any] = {}
    res["models"] = {}
    for name, (mdir, info) in models.items():
        if str(mdir) not in codes_by_model:
            codes, encode_s = encode_rows(args, x, mdir, key, workdir)
            post = posting_lengths(codes)
            cfg = json.loads((mdir / "config.json").read_text())["csr_config"]
            h = cfg["hidden_dim"]
            codes_by_model[str(mdir)] = (codes, post)
            res["models"][str(mdir)] = {
                **info, "hidden_dim": h, "k": cfg["k"], "encode_s": round(encode_s, 1),
                "encode_rows_s": round(len(x) / max(encode_s, 1e-9)),
                "dead_frac": round(float((post[:h] == 0).mean()), 4),
                "posting_mean": round(float(post[:h].mean()), 1), "posting_max": int(post[:h].max()),
                "doc_nnz_mean": round(float(codes.nnz().mean()), 2),
            }

    # build
    res["collections"] = {}
    builds = {"dense": build_collection(args, "dense", "dense", rows, key, workdir)}
    for name, cfg in args.collections.items():
        mdir = models[name][0]
        sha = json.loads((mdir / "config.json").read_text())["weights_sha256"][:16]
        engine = {k: v for k, v in cfg.items() if k not in COLLECTION_KEYS}
        builds[name] = build_collection(args, name, "sparse", rows, key, workdir,
                                        codes=codes_by_model[str(mdir)][0], engine_cfg=engine, model_sha=sha)
        builds[name]["model"] = str(mdir)
    for name, rec in builds.items():
        res["collections"][name] = {k: v for k, v in rec.items() if k != "want"} | {"engine": rec["want"]["engine"]}

    # search queries per variant (precomputed: the `search:` modes time the database alone)
    from csr_vdb.model import CSREncoder

    from scale_worker import NarrowedEncoder

    variants_by_coll: dict[str, dict[str, dict[str, Any]]] = {}
    for vname, v in args.variants.items():
        variants_by_coll.setdefault(v.get("collection", "sparse"), {})[vname] = v
    modes: list[tuple[str, str]] = [("dense", "dense")]
    procs: dict[str, WorkerProc] = {}
    res["modes"] = {}
    for cname in ["dense", *[c for c in args.collections if c in variants_by_coll]]:
        rec = builds[cname]
        if "error" in rec:
            continue
        w = WorkerProc(cname, args.blas_threads)
        workers.append(w)
        procs[cname] = w
        spec: dict[str, Any] = {"store": args.store, "uri": rec["uri"], "collection": rec["collection"],
                                "token": args.token, "limits": limits, "dense_queries": qx, "warmup": args.warmup}
        if cname == "dense":
            spec["warmup_modes"] = ["dense"]
            opened = w.call("open", spec=spec)
        else:
            mdir = Path(rec["model"])
            enc = CSREncoder.load(mdir, device="cpu")
            post = codes_by_model[str(mdir)][1]
            sq = {}
            for vname, v in variants_by_coll[cname].items():
                # what a variant leaves out is the model's own setting (what Retriever.search uses)
                v.setdefault("width", enc.config.k_query_for("decoder"))
                v.setdefault("candidates", enc.config.search_candidates or 100)
                wrapped = NarrowedEncoder(enc, v.get("width"), v.get("select", "magnitude"), post, v.get("alpha", 1.0))
                sq[vname] = wrapped.encode_queries(qx)
                res["modes"][f"search:{vname}"] = {"query_nnz_mean": round(float(sq[vname].nnz().mean()), 1),
                                                   "postings_per_query": round(float(
                                                       post[sq[vname].indices][sq[vname].values != 0].sum()
                                                       / len(qx)), 0)}
            spec["sparse_queries"] = sq
            spec["search_candidates"] = {vn: int(v["candidates"]) for vn, v in variants_by_coll[cname].items()}
            spec["warmup_modes"] = [f"search:{v}" for v in sq]
            opened = w.call("open", spec=spec)
            encoder_loaded = w.call("setup_retrievers", spec={"model_dir": str(mdir), "variants": variants_by_coll[cname],
                                                             "posting": post, "warmup": args.warmup})
            for vname, v in variants_by_coll[cname].items():
                modes.append((f"search:{vname}", cname))
                if v.get("select", "magnitude") != "magnitude":
                    continue  # the database search only: Retriever narrows its query by magnitude
                modes.append((f"retriever:{vname}", cname))
                if args.fast and args.store == "qdrant-edge":
                    modes.append((f"fast:{vname}", cname))
        res["collections"][cname]["memory_mb"] = _memory(opened, args)
        if cname != "dense" and encoder_loaded.get("rss") and opened.get("rss_loaded"):
            # the query side (torch, the encoder) lives in the same process: measured, then kept apart
            res["collections"][cname]["memory_mb"]["with_encoder"] = encoder_loaded["rss"]
            res["collections"][cname]["memory_mb"]["encoder_rss"] = round(
                encoder_loaded["rss"]["rss"] - opened["rss_loaded"]["rss"], 1)

    res["variants"] = {name: dict(v) for name, v in args.variants.items()}

    # dense ef calibration (untimed)
    ef_info: dict[str, Any] = {"recall_target": args.ef_recall}
    dense_w = procs["dense"]
    if args.store == "qdrant-edge":
        found = [dense_w.call("run", mode="dense", i=i) for i in range(len(qx))]
        ef_info["default_recall"] = round(recall(_strip_self(found, limits, ids, self_rows, n_test), truth), 4)
        ef_info["calibration"] = {}
        chosen = None
        for ef in args.efs:
            f = [dense_w.call("run", mode="dense_ef", i=i, ef=ef) for i in range(len(qx))]
            r = recall(_strip_self(f, limits, ids, self_rows, n_test), truth)
            ef_info["calibration"][ef] = round(r, 4)
            if r >= args.ef_recall:
                chosen = ef
                break
        ef_info["ef"] = chosen if chosen is not None else args.efs[-1]
        ef_info["reached"] = chosen is not None
        dense_w.call("set_ef", ef=ef_info["ef"])
        modes.insert(1, ("dense_ef", "dense"))
    else:
        ef_info["note"] = "dense index of this engine is not HNSW or takes no ef from the bench: not tuned"
    res["dense_ef"] = ef_info

    # interleaved latency
    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    found: dict[str, list[list[Any]]] = {m: [] for m, _ in modes}
    for i in range(len(qx)):
        order = modes[i % len(modes):] + modes[: i % len(modes)]
        for mode, cname in order:
            got, ms = procs[cname].call("query", mode=mode, i=i)
            times[mode].append(ms)
            found[mode].append(got)

    # quality
    qrels = rows["beir"].qrels if rows["beir"] is not None else None
    test_qids = rows["beir"].query_ids[:n_test] if rows["beir"] is not None else []
    dense_ndcg = None
    if qrels is not None:
        base = ~is_copy
        _, ex = exact_search(test_x, x[base], TOP_K, metric="dot")
        base_ids = ids[base]
        run_exact = {q: [str(int(base_ids[r])) for r in ex[j]] for j, q in enumerate(test_qids)}
        dense_ndcg = ndcg_at_k(run_exact, qrels, TOP_K, query_ids=test_qids).value
    res["reference"] = {"dense_exact_ndcg_at_10": None if dense_ndcg is None else round(dense_ndcg, 4)}
    originals = ids[: rows["base_rows"]]

    def original(row_id: Any) -> int:
        """The document a row copies (copy j of `build_rows` is a copy of base row j mod base rows)."""
        r = int(row_id)
        return int(originals[(r - COPY_ID_BASE) % len(originals)]) if r >= COPY_ID_BASE else r

    for mode, cname in modes:
        m = res["modes"].setdefault(mode, {})
        m["collection"] = cname
        m["latency_ms"] = percentiles(times[mode])
        stripped = _strip_self(found[mode], limits, ids, self_rows, n_test)
        m["recall_at_10"] = {"test": round(recall(stripped[:n_test], truth[:n_test]), 4) if n_test else None,
                             "self": round(recall(stripped[n_test:], truth[n_test:]), 4) if len(self_rows) else None,
                             "all": round(recall(stripped, truth), 4)}
        if qrels is not None and n_test:
            depth = args.depth
            if mode.startswith(("retriever:", "fast:")):
                depth = max(depth, args.variants[mode.split(":", 1)[1]]["candidates"])
            run_, distinct = {}, []
            for j, q in enumerate(test_qids):
                deep = procs[cname].call("run", mode=mode, i=j, depth=depth)
                # a copy of a document is that document: each row counts as its original, once
                docs = list(dict.fromkeys(str(original(d)) for d in deep))
                distinct.append(min(len(docs), depth))
                run_[q] = docs[:TOP_K]
            nd = ndcg_at_k(run_, qrels, TOP_K, query_ids=test_qids).value
            m["ndcg_at_10"] = round(nd, 4)
            m["ndcg_pct_of_dense"] = round(100 * nd / dense_ndcg, 1) if dense_ndcg else None
            m["ndcg_depth"] = depth
            m["ndcg_docs_at_depth"] = {"mean": round(float(np.mean(distinct)), 1), "min": int(np.min(distinct))}

    # throughput
    wanted = [m for m, _ in modes] if args.throughput_modes == "all" else args.throughput_modes.split(",")
    if args.throughput_seconds > 0:
        for mode, cname in modes:
            if mode not in wanted:
                continue
            res["modes"][mode]["qps"] = {
                str(t): round(procs[cname].call("throughput", mode=mode, threads=t, seconds=args.throughput_seconds)
                              ["qps"], 1) for t in (1, 2)}

    # where the time of the whole query path goes (cProfile, untimed)
    res["profiles"] = {}
    for mode in filter(None, args.profile_modes.split(",")):
        cname = dict(modes).get(mode)
        if cname is not None:
            res["profiles"][mode] = procs[cname].call("profile", mode=mode, queries=min(100, len(qx)))

    # memory after the run, then close
    for cname, w in procs.items():
        after = w.call("close")
        mem = res["collections"][cname].setdefault("memory_mb", {})
        mem["rss_after_run"] = after["rss"]
        if after["rss"] and mem.get("base"):  # the engine's share: less the interpreter and the encoder
            mem["engine_rss_after_run"] = round(after["rss"]["rss"] - mem["base"]["rss"] - mem.get("encoder_rss", 0), 1)
        w.proc.wait(timeout=120)
    for cname, rec in res["collections"].items():
        if not args.uri and "error" not in rec:
            rec["disk_bytes"] = disk_bytes(rec["uri"])
            if args.store == "qdrant-edge":  # without the write-ahead log (a fixed ~60 MB here)
                rec["segments_bytes"] = disk_bytes(Path(rec["uri"]) / "collections" / rec["collection"] / "segments")
    res["modes"] = {m: res["modes"][m] for m, _ in modes}
    res["load_avg_end"] = list(os.getloadavg())
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


def _strip_self(found, limits, ids, self_rows, n_test) -> list[list[int]]:
    out = []
    for qi, f in enumerate(found):
        own = int(ids[self_rows[qi - n_test]]) if qi >= n_test else None
        out.append([int(d) for d in f if int(d) != own][:TOP_K])
    return out


def _memory(opened: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Resident memory of the collection's worker: after imports, after open + warm-up, and the difference."""
    from scale_engines import rss

    if args.uri:
        return {"server": rss(args.server_pid) if args.server_pid else None, "note": "engine runs in the server"}
    base, loaded = opened["rss_base"], opened["rss_loaded"]
    if base is None or loaded is None:
        return {}
    return {"base": base, "loaded": loaded, "engine_rss": round(loaded["rss"] - base["rss"], 1),
            "open_s": round(opened["open_s"], 2)}


# ---------------------------------------------------------------------------- output
def table(res: dict[str, Any]) -> str:
    """The run as a printed table: one line per mode, then one per collection."""
    ref = res["reference"]["dense_exact_ndcg_at_10"]
    ef = res["dense_ef"]
    lines = [f"{res['store']}, {res['n']:,} rows ({res['data']['source']}), {res['queries']['test']} test + "
             f"{res['queries']['self']} self-queries, one at a time, interleaved; load {res['load_avg_start'][0]:.1f}"
             f" -> {res['load_avg_end'][0]:.1f}",
             f"dense exact NDCG@10 {ref}; dense ef tuned: {ef.get('ef')} (default recall {ef.get('default_recall')})",
             "| mode | p50 ms | p95 ms | p99 ms | qps 1t | qps 2t | recall@10 test/self | NDCG@10 (% dense) | "
             "query nnz | postings/query |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in res["modes"].items():
        if "latency_ms" not in m:
            continue
        lat, qps, r = m["latency_ms"], m.get("qps", {}), m["recall_at_10"]
        nd = m.get("ndcg_at_10")
        ndt = "-" if nd is None else f"{nd:.4f} ({m['ndcg_pct_of_dense']}%)"
        lines.append(
            f"| {mode} | {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | {qps.get('1', '-')} | "
            f"{qps.get('2', '-')} | {r['test']}/{r['self']} | {ndt} | {m.get('query_nnz_mean', '-')} | "
            f"{m.get('postings_per_query', '-')} |")
    lines += ["", "| collection | build s (insert + optimize) | disk MB (segments) | engine RSS MB | RSS after run MB "
                  "(encoder) | engine RSS after run MB | engine |",
              "|---|---|---|---|---|---|---|"]
    for name, c in res["collections"].items():
        if "error" in c:
            lines.append(f"| {name} | refused: {c['error']} | | | | {c.get('engine')} |")
            continue
        mem = c.get("memory_mb", {})
        disk = c.get("disk_bytes")
        after = (mem.get("rss_after_run") or {}).get("rss", "-")
        enc_mb = mem.get("encoder_rss")
        engine_after = mem.get("engine_rss_after_run", "-")
        seg = f" ({round(c['segments_bytes'] / 2**20, 1)})" if c.get("segments_bytes") else ""
        lines.append(f"| {name} | {c.get('build_s')} ({c.get('insert_s')} + {c.get('optimize_s')}) | "
                     f"{'-' if disk is None else round(disk / 2**20, 1)}{seg} | {mem.get('engine_rss', '-')} | {after}"
                     f"{'' if enc_mb is None else f' ({enc_mb})'} | {engine_after} | {c.get('engine') or 'defaults'} |")
    for mode, rows in res.get("profiles", {}).items():
        lines += ["", f"{mode}: cumulative ms per query (cProfile)"]
        lines += [f"  {r['cum_ms']:8.3f}  {r['function']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    res = run(args)
    emit(res, table(res), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
