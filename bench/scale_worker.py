"""A worker process of bench/scale.py: opens one collection alone and serves timed queries.

Started as ``python bench/scale_worker.py``; requests and replies are pickled tuples framed by
their length on stdin/stdout (anything else the engine prints goes to stderr). Each collection
gets its own process so that the resident memory measured is that collection's, and the parent
sends one query at a time to one worker, so the modes of a run are interleaved per query and
never compete for the CPU. Latency is timed inside the worker around the call a user would make
(`VectorStore.search_dense` / `search_sparse`, `Retriever.search`), without the pipe.

torch is imported only when a `Retriever` is set up, after the engine's memory was measured.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# One query at a time gains nothing from BLAS threads, and on a busy CPU their spin-waits cost
# milliseconds per numpy product (measured: a 384 x 1536 vector product 0.6 ms with 1 thread,
# 14 ms with 2); set before numpy loads. bench/scale.py passes --blas-threads here.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = os.environ.get("CSR_SCALE_BLAS_THREADS", "1")

import numpy as np  # noqa: E402

from scale_engines import open_bench_store, rss  # noqa: E402


def _read(stream) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _write(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


class NarrowedEncoder:
    """An encoder whose search queries keep ``width`` entries: the ``search:`` modes' queries.

    ``select="magnitude"`` asks the encoder for its ``width`` largest positive entries (what
    `Retriever` sends with ``k_query=width``); ``select="cost"`` takes the encoder's default
    search query and keeps the entries with the largest ``|q_i| / (1 + posting_i)^alpha``
    (`csr_vdb.query_width.narrow_queries`). Signed (re-scoring) queries are unchanged.
    """

    def __init__(self, encoder: Any, width: int | None, select: str, posting: np.ndarray | None, alpha: float):
        self.encoder = encoder
        self.config = encoder.config
        self.width = width
        self.select = select
        self.posting = posting
        self.alpha = alpha

    def encode_queries(self, x, k=None, batch_size=8192, projection=None, signed=False):
        if signed or k is not None or self.width is None or projection == "encoder":
            return self.encoder.encode_queries(x, k=k, batch_size=batch_size, projection=projection, signed=signed)
        if self.select == "magnitude":
            return self.encoder.encode_queries(x, k=self.width, batch_size=batch_size, projection=projection)
        from csr_vdb.query_width import narrow_queries

        full = self.encoder.encode_queries(x, batch_size=batch_size, projection=projection)
        return narrow_queries(full, self.width, "cost", self.posting, self.alpha)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


class Worker:
    """State of one worker: the store, its collection, the queries and the modes it serves."""

    def __init__(self) -> None:
        self.store: Any = None
        self.kind = ""
        self.collection = ""
        self.dense: np.ndarray | None = None
        self.sparse: dict[str, Any] = {}
        self.retrievers: dict[str, tuple[Any, int]] = {}
        self.limits: list[int] = []
        self.ef: int | None = None

    # ------------------------------------------------------------------ commands
    def open(self, spec: dict) -> dict:
        """Open the collection, warm it up with raw searches and measure the process's memory."""
        self.kind = spec["store"]
        self.collection = spec["collection"]
        self.dense = spec.get("dense_queries")
        self.sparse = spec.get("sparse_queries") or {}
        self.limits = list(spec["limits"])
        self.search_candidates = dict(spec.get("search_candidates") or {})
        base = rss()
        t = time.perf_counter()
        self.store = open_bench_store(self.kind, spec["uri"], token=spec.get("token"))
        opened = time.perf_counter() - t
        warm = [m for m in spec.get("warmup_modes", [])]
        n_warm = min(int(spec.get("warmup", 20)), len(self.limits))
        t = time.perf_counter()
        for mode in warm:
            for i in range(n_warm):
                self.run(mode, i)
        warm_s = time.perf_counter() - t
        return {"rss_base": base, "rss_loaded": rss(), "open_s": opened, "warmup_s": warm_s, "pid": os.getpid()}

    def setup_retrievers(self, spec: dict) -> dict:
        """Load the encoder (imports torch) and one `Retriever` per query variant."""
        import torch

        torch.set_num_threads(int(spec.get("torch_threads", 1)))
        from csr_vdb.model import CSREncoder
        from csr_vdb.retriever import Retriever

        enc = CSREncoder.load(spec["model_dir"], device="cpu")
        posting = spec.get("posting")
        cfg = enc.config
        self.fast = {
            "W_dec": enc.W_dec.detach().numpy().astype(np.float32).T.copy(),  # [d, h]
            "b_pre": enc.b_pre.detach().numpy().astype(np.float32),
            "bias": bool(cfg.bias_latent), "l2": cfg.normalize == "l2", "h": cfg.hidden_dim,
            "default_width": cfg.k_query_for("decoder"),
        }
        self.fast_variants = {name: v for name, v in spec["variants"].items() if v.get("select", "magnitude") == "magnitude"}
        for name, v in spec["variants"].items():
            if v.get("select", "magnitude") != "magnitude":
                continue  # Retriever takes its search query's width from the config, by magnitude only
            narrowed = enc.with_config(k_query=int(v["width"])) if v.get("width") else enc
            self.retrievers[name] = (Retriever(self.store, self.collection, narrowed, device="cpu"), int(v["candidates"]))
        loaded = rss()  # torch and the encoder, before a query touches more of the collection
        for name in self.retrievers:
            for i in range(min(int(spec.get("warmup", 20)), len(self.limits))):
                self.run(f"retriever:{name}", i)
        return {"rss": loaded, "rss_warm": rss()}

    def run(self, mode: str, i: int, ef: int | None = None, depth: int | None = None) -> list[Any]:
        """One query of ``mode``; ``depth`` asks for a longer list (quality passes, untimed)."""
        limit = depth or self.limits[i]
        if mode == "dense":
            hits = self.store.search_dense(self.collection, self.dense[i : i + 1], limit=limit)[0]
            return [h.id for h in hits]
        if mode == "dense_ef":
            hits = self.store.search_dense(self.collection, self.dense[i : i + 1], limit=limit, ef=ef or self.ef)[0]
            return [h.id for h in hits]
        kind, _, variant = mode.partition(":")
        if kind == "search":
            # the limit the query path sends to the database: the variant's candidates
            q = self.sparse[variant]
            want = max(limit, int(self.search_candidates.get(variant, 0))) if depth is None else limit
            hits = self.store.search_sparse(self.collection, q[i : i + 1], limit=want)[0]
            return [h.id for h in hits[:limit]]
        if kind == "fast":
            return self.fast_path(variant, i, limit)
        if kind == "retriever":
            retriever, cand = self.retrievers[variant]
            x = self.dense[i : i + 1]
            hits = retriever.search(x, top_k=limit, candidates=max(cand, limit), rerank="codes")[0]
            return [h.id for h in hits]
        raise ValueError(f"unknown mode {mode!r}")

    def fast_path(self, variant: str, i: int, limit: int) -> list[Any]:
        """Prototype of a one-pass query path on Qdrant Edge: one projection for both queries, the
        engine returns the candidates' codes with the hits, the signed re-score in numpy.

        Same ranking as `Retriever.search(rerank="codes")` with the variant's width and candidates.
        """
        import qdrant_edge as qe

        f = self.fast
        v = self.fast_variants[variant]
        width = int(v.get("width") or f["default_width"])
        cand = max(int(v["candidates"]), limit)
        x = self.dense[i]
        if f["l2"]:
            x = x / np.linalg.norm(x)
        proj = x @ f["W_dec"]  # [h]: the signed decoder query (and the search query's source)
        top = np.argpartition(-proj, width - 1)[:width] if width < len(proj) else np.arange(len(proj))
        top = top[proj[top] > 0]
        if len(top) == 0:
            top = np.array([int(np.argmax(proj))])
        vals = proj[top]
        shard = self.store._layout(self.collection).shard
        req = qe.QueryRequest(
            limit=cand,
            query=qe.Query.Nearest(qe.SparseVector(top.tolist(), (vals / np.linalg.norm(vals)).tolist()), using="csr"),
            with_payload=False,
            with_vector=["csr"],
        )
        points = shard.query(req)
        signed = np.append(proj, x @ f["b_pre"]) if f["bias"] else proj
        if not points:
            return []
        vecs = [p.vector["csr"] for p in points]
        lens = np.fromiter((len(v.indices) for v in vecs), np.int64, len(vecs))
        flat_i = np.fromiter(itertools.chain.from_iterable(v.indices for v in vecs), np.int64, int(lens.sum()))
        flat_v = np.fromiter(itertools.chain.from_iterable(v.values for v in vecs), np.float64, int(lens.sum()))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        scores = np.add.reduceat(signed[flat_i] * flat_v, starts) if len(flat_i) else np.zeros(len(vecs))
        scores[lens == 0] = 0.0
        order = np.argsort(-scores, kind="stable")[:limit]
        return [points[j].id for j in order]

    def query(self, mode: str, i: int, ef: int | None = None, depth: int | None = None) -> tuple[list[Any], float]:
        t = time.perf_counter()
        ids = self.run(mode, i, ef=ef, depth=depth)
        return ids, (time.perf_counter() - t) * 1000.0

    def throughput(self, mode: str, threads: int, seconds: float) -> dict:
        """Queries per second of ``threads`` client threads looping over the queries for ``seconds``."""
        n = len(self.limits)
        counts = [0] * threads
        stop = threading.Event()
        errors: list[str] = []

        def loop(t: int) -> None:
            i = t
            try:
                while not stop.is_set():
                    self.run(mode, i % n)
                    counts[t] += 1
                    i += threads
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                errors.append(repr(exc))
                stop.set()

        pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for th in pool:
            th.start()
        time.sleep(seconds)
        stop.set()
        for th in pool:
            th.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise RuntimeError(errors[0])
        return {"qps": sum(counts) / elapsed, "queries": sum(counts), "seconds": elapsed}

    def profile(self, mode: str, queries: int, top: int = 12) -> list[dict]:
        """cProfile ``queries`` calls of ``mode``: the functions with the most cumulative time, ms per query."""
        import cProfile
        import pstats

        prof = cProfile.Profile()
        n = min(queries, len(self.limits))
        prof.enable()
        for i in range(n):
            self.run(mode, i)
        prof.disable()
        stats = pstats.Stats(prof)
        rows = []
        for (fname, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append({"function": f"{Path(fname).name}:{line}({func})", "calls_per_query": round(nc / n, 1),
                         "cum_ms": round(1000 * ct / n, 3), "own_ms": round(1000 * tt / n, 3)})
        rows.sort(key=lambda r: -r["cum_ms"])
        return rows[:top]

    def set_ef(self, ef: int | None) -> None:
        self.ef = ef

    def close(self) -> dict:
        out = {"rss": rss()}
        if self.store is not None:
            self.store.close()
            self.store = None
        return out


def main() -> int:
    proto_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # engine chatter must not corrupt the protocol
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    worker = Worker()
    while True:
        msg = _read(proto_in)
        if msg is None:
            break
        cmd, kwargs = msg
        try:
            result = getattr(worker, cmd)(**kwargs)
            _write(proto_out, ("ok", result))
        except Exception as exc:  # noqa: BLE001 - sent back to the parent, which raises it
            _write(proto_out, ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        if cmd == "close":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
