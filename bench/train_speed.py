"""Training speed and peak memory of `train_encoder`: rows/s per epoch, peak RSS, in-memory and 2M-row memmap.

Each case runs in its own subprocess so that ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the
peak resident set of that case alone (the parent stays small: it neither loads torch nor touches the
data, since Linux carries the parent's peak into a child's ``ru_maxrss``); ``VmHWM`` is reported too.
Data are synthetic clustered unit vectors (speed does not depend on the data set; no licensed data
is read).

Usage:
    python bench/train_speed.py --out bench/results/train_speed.json            # 200k rows in memory
    python bench/train_speed.py --rows2m --out bench/results/train_speed_2m.json  # + 2M-row float16 memmap

Also reported: the load average (the machine is shared; wall-clock rows/s drop under load) and
rows per CPU-second of the training process divided by the thread count (a load-independent estimate
of the rows/s the same threads reach on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout, for the `bench` helpers

from bench.common import write_json  # noqa: E402


def clustered_rows(n: int, dim: int, clusters: int, seed: int, dtype=np.float32, chunk: int = 100_000):
    """Yield ``[m, dim]`` chunks of unit vectors around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(dtype)


def vm_hwm_mb() -> float | None:
    """Peak resident set of this process image (``VmHWM``; Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_case(spec: dict) -> dict:
    """Child process body: train once, report timings and peak RSS as a JSON dict."""
    import resource

    import torch

    from csr_vdb.config import CSRConfig, TrainConfig
    from csr_vdb.sources import ArraySource, NpySource
    from csr_vdb.training import train_encoder

    torch.set_num_threads(spec["threads"])
    if spec["source"] == "memory":
        x = np.concatenate(list(clustered_rows(spec["rows"], spec["dim"], 1000, seed=0)))
        source = ArraySource(x)
    else:
        source = NpySource(spec["path"])
    cfg = CSRConfig(input_dim=spec["dim"], hidden_dim=spec["hidden_dim"], k=spec["k"])
    train = TrainConfig(
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        positives=spec["positives"],
        threads=spec["threads"],
        device=spec["device"],
        max_steps=spec.get("max_steps"),
        patience=None,
        log_every=50,
    )
    load0 = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = train_encoder(source, cfg, train)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rep = res.report
    rows = sum(e["rows"] for e in rep["epochs"])
    return {
        "case": spec["name"],
        "source": spec["source"],
        "rows": spec["rows"],
        "dim": spec["dim"],
        "hidden_dim": spec["hidden_dim"],
        "k": spec["k"],
        "batch_size": spec["batch_size"],
        "positives": spec["positives"],
        "threads": spec["threads"],
        "device": rep["device"],
        "epochs": rep["epochs"],
        "steps": rep["steps"],
        "rows_trained": rows,
        "wall_s": round(wall, 2),
        "rows_per_s_wall": round(rows / wall, 1),
        "cpu_s": round(cpu, 2),
        "rows_per_cpu_s_x_threads": round(rows / cpu * spec["threads"], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "vm_hwm_mb": vm_hwm_mb(),
        "load_avg_start": round(load0, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
        "final_fvu": rep["final_fvu"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def spawn(spec: dict, flag: str = "--child") -> dict:
    """Run one case (or the file generator) in a child process and return the JSON it prints."""
    # the environment passes through unchanged: on an idle machine OMP_WAIT_POLICY=PASSIVE is
    # slower than libgomp's default, so the case runs as a user's training would
    out = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"case {spec['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_npy(path: Path, rows: int, dim: int) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    start = 0
    for chunk in clustered_rows(rows, dim, 1000, seed=1, dtype=np.float16):
        arr[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    arr.flush()
    del arr


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the in-memory case")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--hidden-dim", type=int, default=1536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--positives", default="neighbors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rows2m", action="store_true", help="also run the 2M-row float16 memmap case")
    ap.add_argument("--rows2m-count", type=int, default=2_000_000)
    ap.add_argument("--max-steps-2m", type=int, default=None, help="cap the 2M case (default: one full epoch)")
    ap.add_argument("--skip-memory", action="store_true", help="only run the memmap case")
    ap.add_argument("--workdir", default=None, help="where the 2M .npy is written (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    if args.generate:
        g = json.loads(args.generate)
        write_npy(Path(g["path"]), g["rows"], g["dim"])
        print(json.dumps({}))
        return

    base = dict(
        dim=args.dim, hidden_dim=args.hidden_dim, k=args.k, batch_size=args.batch_size,
        positives=args.positives, threads=args.threads, device=args.device,
    )
    results = []
    if not args.skip_memory:
        spec = dict(base, name=f"memory {args.rows}", source="memory", rows=args.rows, epochs=args.epochs)
        results.append(spawn(spec))
    if args.rows2m:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            path = Path(tmp) / "emb_f16.npy"
            t0 = time.perf_counter()
            # written by a child: a parent that touched the file would pass its resident set on to
            # the measured case (Linux keeps the pre-exec peak in ru_maxrss)
            spawn({"name": "generate", "path": str(path), "rows": args.rows2m_count, "dim": args.dim}, "--generate")
            gen_s = time.perf_counter() - t0
            spec = dict(base, name=f"memmap f16 {args.rows2m_count}", source="npy", path=str(path),
                        rows=args.rows2m_count, epochs=1, max_steps=args.max_steps_2m)
            r = spawn(spec)
            r["file_mb"] = round(path.stat().st_size / 2**20, 1)
            r["generate_s"] = round(gen_s, 1)
            results.append(r)

    header = f"{'case':<24}{'epoch rows/s (wall)':>26}{'rows/cpu-s x thr':>18}{'peak RSS MB':>13}{'load':>12}{'FVU':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        per_epoch = "/".join(f"{e['rows_per_s']:.0f}" for e in r["epochs"])
        load = f"{r['load_avg_start']:.1f}-{r['load_avg_end']:.1f}"
        fvu = f"{r['final_fvu']:.3f}" if r["final_fvu"] is not None else "-"
        cpu_rate, rss = r["rows_per_cpu_s_x_threads"], r["peak_rss_mb"]
        print(f"{r['case']:<24}{per_epoch:>26}{cpu_rate:>18.0f}{rss:>13.0f}{load:>12}{fvu:>7}")
    if args.out:
        write_json(args.out, {"results": results})


if __name__ == "__main__":
    main()
