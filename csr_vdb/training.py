"""Streaming trainer for `CSREncoder`: embedding sources (arrays, .npy memmaps, iterators) and `train_encoder`."""

from __future__ import annotations

import functools
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.losses import (
    code_similarity,
    info_nce,
    mask_self_,
    nearest_neighbors,
    reconstruction_terms,
    supcon_loss,
    update_dead_counts_,
)
from csr_vdb.model import CSREncoder, resolve_device
from csr_vdb.sources import (
    FINGERPRINT_ROWS,
    ArraySource,
    EmbeddingSource,
    check_rows,
    data_fingerprint,
    holdout_mask,
    split_batch,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None, dict[str, float]], None]

TERM_NAMES = ("loss", "reconstruction_loss_k", "reconstruction_loss_4k", "auxiliary_loss", "contrastive_loss")
"""Loss curves kept in the training report (``loss`` is the weighted total)."""

_MOVED = {
    name: "csr_vdb.sources"
    for name in ("ArraySource", "NpySource", "IteratorSource", "EmbeddingSource", "Batch", "holdout_mask",
                 "data_fingerprint", "FINGERPRINT_ROWS")
}


def __getattr__(name: str) -> Any:
    """Names that moved out of this module still import from here, with a `DeprecationWarning`."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"csr_vdb.training.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------------ helpers
def k_schedule(step: int, total_steps: int | None, k: int, k_start: int | None, anneal_fraction: float = 0.7) -> int:
    """CSRv2 k-annealing: ``k_t = round(k0 (1 - p) + k p)`` with ``p = min(1, step / (f * total))``.

    Returns ``k`` when annealing is off (``k_start`` None). With an unknown total (a stream of
    unknown length, first epoch) ``p`` is 0.
    """
    if k_start is None:
        return k
    if not total_steps:
        return k_start
    p = min(1.0, step / (anneal_fraction * total_steps))
    return int(round(k_start * (1 - p) + k * p))


@dataclass
class TrainResult:
    """What `train_encoder` returns: the trained encoder and its training report."""

    encoder: CSREncoder
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """Save the encoder (and ``training_report.json``) to ``directory``."""
        self.encoder.training_report = self.report
        return self.encoder.save(directory)


class _Contrastive:
    """Builds the contrastive term for one batch according to ``TrainConfig.positives``."""

    def __init__(
        self,
        model: CSREncoder,
        train: TrainConfig,
        pairs: tuple[torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.train = train
        self.mode = train.positives if train.gamma > 0 else "none"
        self.cosine = train.similarity == "cosine"
        self.pairs = pairs
        self.gen = generator
        self.pool: torch.Tensor | None = None

    def codes(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k codes ``(indices [n, k], values [n, k])`` of preprocessed rows (differentiable)."""
        return self.model.topk_codes(x, k)

    def sim(self, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Code similarities / temperature, ``[n_a, n_b]``."""
        h = self.model.config.hidden_dim
        return code_similarity(a[0], a[1], b[0], b[1], h, self.cosine, scale=1.0 / self.train.temperature)

    def __call__(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        vals: torch.Tensor,
        labels: torch.Tensor | None,
        k: int,
        kq: int,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
        update_pool: bool = True,
    ) -> torch.Tensor:
        mode = self.mode
        if mode == "none":
            return x.new_zeros(())
        if mode == "pairs":
            if pairs is None:
                return x.new_zeros(())
            q, d = pairs
            # in-batch negatives: query i's positive is doc i, every other doc is a negative
            logits = self.sim(self.codes(q, kq), self.codes(d, k))
            return info_nce(logits, torch.arange(q.shape[0], device=q.device))
        z = (idx, vals)
        if mode == "labels":
            if labels is None:
                raise ConfigError("positives='labels' needs a source with labels, e.g. ArraySource(x, labels)")
            return supcon_loss(self.sim(z, z), labels)
        if mode == "noise":
            n, dim = x.shape
            noise = torch.randn(n, dim, generator=self.gen, device="cpu").to(x.device)
            keep = (torch.rand(n, dim, generator=self.gen, device="cpu") > 0.1).to(x.device)
            view = self.model.preprocess((x + noise * (self.train.noise_std / math.sqrt(dim))) * keep / 0.9)
            return info_nce(self.sim(z, self.codes(view, k)), torch.arange(n, device=x.device))
        # "neighbors": each row's dense nearest neighbour (in the batch or the pool of recent rows)
        n = x.shape[0]
        # validation (update_pool=False) mines inside its own batch only, so it does not depend on training state
        pool = self.pool if self.train.neighbor_pool > 0 and update_pool else None
        nn_idx = nearest_neighbors(x, pool)
        cand = z
        targets = nn_idx
        if pool is not None and pool.shape[0]:
            from_pool = nn_idx >= n
            if from_pool.any():
                uniq, inv = torch.unique(nn_idx[from_pool] - n, return_inverse=True)
                pi, pv = self.codes(pool[uniq], k)
                cand = (torch.cat([idx, pi]), torch.cat([vals, pv]))
                targets = nn_idx.clone()
                targets[from_pool] = n + inv
        if update_pool and self.train.neighbor_pool > 0:
            fresh = x.detach()
            self.pool = fresh if self.pool is None else torch.cat([fresh, self.pool])[: self.train.neighbor_pool]
        return info_nce(mask_self_(self.sim(z, cand)), targets)


def _adam(model: CSREncoder, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam, fused where torch supports it (one kernel per step: 1 ms vs 6 ms on CPU at h=1536, d=384)."""
    kw = dict(lr=train.lr, eps=train.eps, weight_decay=train.weight_decay)
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), **kw)


@torch.no_grad()
def _remove_parallel_decoder_grad_(model: CSREncoder) -> None:
    """Project out the gradient component along each unit-norm decoder atom (it would only change
    the norm, which `normalize_decoder_` undoes anyway; after Gao et al. 2024)."""
    g = model.W_dec.grad
    if g is None:
        return
    w = model.W_dec
    g.sub_((g * w).sum(dim=1, keepdim=True) * w)


#: Steps between two `_release_free_heap` calls while training.
RELEASE_HEAP_EVERY = 100


@functools.cache
def _glibc() -> Any:
    """glibc through ctypes (None where the C library has no ``mallopt``/``malloc_trim``)."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover - non-glibc platforms
        logger.debug("no glibc malloc tuning", exc_info=True)
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


@functools.cache
def _tune_heap_for_training() -> None:
    """Keep training temporaries on the heap instead of fresh page-faulted mappings (glibc; once).

    A step allocates the same 1-6 MB temporaries every time. With glibc's defaults many of them
    come from ``mmap`` or from heap memory just trimmed back to the OS, and each first touch of a
    page faults: ~1,100 faults and ~9 ms of a 60 ms step (1024 rows, h=1536, 2 threads). Raising the
    mmap threshold to 64 MiB and the trim threshold to 512 MiB (``mallopt``) brings that to ~250 faults;
    `_release_free_heap` every `RELEASE_HEAP_EVERY` steps keeps the resident set flat on long streams.
    Process-wide and not undone after training (glibc cannot restore its adaptive thresholds); a
    no-op where glibc is not the allocator. Cached: it runs once per process.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


def _release_free_heap() -> None:
    """Give free heap pages back to the OS (glibc ``malloc_trim(0)``); a no-op elsewhere.

    Without it the heap fragments and the resident set creeps up (~30 MB per 100 steps of 1024
    rows, ~0.6 GB over a 2M-row epoch); trimming every `RELEASE_HEAP_EVERY` steps keeps it flat
    (+3 MB per 100 steps) at no measurable cost. (The earlier remedy, serving every allocation
    >= 1 MiB with a fresh ``mmap``, page-faulted every temporary anew and cost 40% of the step time.)
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# ------------------------------------------------------------------------------ trainer
def train_encoder(
    source: EmbeddingSource | np.ndarray | torch.Tensor,
    config: CSRConfig,
    train: TrainConfig | None = None,
    progress: ProgressCallback | None = None,
    val_source: EmbeddingSource | np.ndarray | torch.Tensor | None = None,
    *,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train a `CSREncoder` on a stream of embeddings (arXiv 2503.01776, with CSRv2 k-annealing).

    Loss per step: ``L(k) + L(4k)/8 + beta_aux * L_aux + gamma * L_contrastive`` (see
    `csr_vdb.losses`). Adam; decoder atoms re-normalised after every step; ``b_pre`` initialised to
    the mean of the first ``init_rows`` rows; dead latents counted in rows. Validation rows are
    held out of the stream by content hash (or taken from ``val_source``); training stops early after
    ``patience`` evaluations without improvement and returns the best weights.

    Args:
        source: an `EmbeddingSource` (or a plain ``[n, input_dim]`` array / tensor).
        config: the encoder's shape; ``data_fingerprint`` is filled in.
        train: training settings (defaults when None).
        progress: called as ``progress(step, total_steps or None, metrics)`` every ``log_every``
            steps and after each evaluation.
        val_source: explicit validation rows (then nothing is held out of ``source``).
        pairs: ``(queries [m, input_dim], docs [m, input_dim])`` for ``positives="pairs"``.

    Returns:
        `TrainResult` with the encoder (in eval mode) and the report (also kept as
        ``encoder.training_report`` and saved by ``encoder.save``).

    Raises:
        ConfigError: dimension mismatch, k_start > hidden_dim/4, a positives mode without its data.
        DataError: bad rows in the source, an empty source.
    """
    train = train or TrainConfig()
    _tune_heap_for_training()
    if isinstance(source, (np.ndarray, torch.Tensor)):
        source = ArraySource(source)
    if isinstance(val_source, (np.ndarray, torch.Tensor)):
        val_source = ArraySource(val_source)
    if source.dim != config.input_dim:
        raise ConfigError(f"source has dimension {source.dim}, config.input_dim is {config.input_dim}")
    if val_source is not None and val_source.dim != config.input_dim:
        raise ConfigError(f"validation source has dimension {val_source.dim}, expected {config.input_dim}")
    if train.k_start is not None and train.k_start > max(config.hidden_dim // 4, config.k):
        raise ConfigError(f"k_start ({train.k_start}) must be <= hidden_dim/4 ({config.hidden_dim // 4})")
    if train.positives == "pairs" and train.gamma > 0 and pairs is None:
        raise ConfigError("positives='pairs' needs pairs=(queries, docs)")

    old_threads = torch.get_num_threads()
    if train.threads:
        torch.set_num_threads(train.threads)
    try:
        return _train(source, config, train, progress, val_source, pairs)
    finally:
        torch.set_num_threads(old_threads)


def _train(
    source: EmbeddingSource,
    config: CSRConfig,
    train: TrainConfig,
    progress: ProgressCallback | None,
    val_source: EmbeddingSource | None,
    pairs_np: tuple[np.ndarray, np.ndarray] | None,
) -> TrainResult:
    t_start = time.perf_counter()
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    model = CSREncoder(config, device=device)
    bs = train.batch_size
    holdout = val_source is None and train.val_fraction > 0
    val_fraction = train.val_fraction
    if holdout and source.n_rows:
        # never hold out far more rows than validation keeps
        val_fraction = min(val_fraction, max(train.max_val_rows * 1.25 / source.n_rows, 1e-6))
    hseed = train.seed

    # ---- fingerprint (source order) and b_pre = data mean (shuffled rows, training side of the split)
    head = []
    got = 0
    for b in source.batches(min(FINGERPRINT_ROWS, bs), shuffle=False, seed=train.seed, epoch=0):
        xb, _ = split_batch(b)
        head.append(xb[: FINGERPRINT_ROWS - got])
        got += head[-1].shape[0]
        if got >= FINGERPRINT_ROWS:
            break
    if not got:
        raise DataError("the training source yielded no rows")
    head_rows = np.concatenate(head)
    acc = torch.zeros(config.input_dim, dtype=torch.float64)
    cnt = 0
    for b in source.batches(bs, shuffle=True, seed=train.seed, epoch=0):
        xb, _ = split_batch(b)
        if holdout:
            xb = xb[~holdout_mask(xb, val_fraction, hseed)]
        if xb.shape[0]:
            acc += model.preprocess(torch.from_numpy(xb)).sum(0, dtype=torch.float64)
            cnt += xb.shape[0]
        if cnt >= train.init_rows:
            break
    if cnt == 0:
        raise DataError("the training source has no rows left after the validation hold-out")
    with torch.no_grad():
        model.b_pre.copy_((acc / cnt).to(torch.float32))

    pairs_t = None
    val_pairs_t = None
    if pairs_np is not None and train.positives == "pairs":
        q = torch.from_numpy(np.asarray(pairs_np[0], dtype=np.float32))
        d = torch.from_numpy(np.asarray(pairs_np[1], dtype=np.float32))
        if q.ndim != 2 or q.shape != d.shape or q.shape[1] != config.input_dim or q.shape[0] < 2:
            raise DataError(
                f"pairs must be two [m >= 2, {config.input_dim}] arrays, got {tuple(q.shape)} and {tuple(d.shape)}"
            )
        for name, arr in (("pair queries", q.numpy()), ("pair docs", d.numpy())):
            check_rows(arr, 0, name)
        q, d = model.preprocess(q.to(device)), model.preprocess(d.to(device))
        perm = torch.randperm(q.shape[0], generator=gen).to(device)
        n_val_pairs = int(q.shape[0] * train.val_fraction) if q.shape[0] >= 50 else 0
        if n_val_pairs >= 2:
            val_pairs_t = (q[perm[:n_val_pairs]], d[perm[:n_val_pairs]])
            q, d = q[perm[n_val_pairs:]], d[perm[n_val_pairs:]]
        pairs_t = (q, d)

    opt = _adam(model, train)
    contrast = _Contrastive(model, train, pairs_t, gen)
    k_aux = min(config.k_aux, config.hidden_dim)
    kq_target = config.query_k

    n_train_est = None
    if source.n_rows:
        n_train_est = max(1, round(source.n_rows * (1 - (val_fraction if holdout else 0.0))))
    total_steps = None
    if n_train_est:
        total_steps = train.epochs * math.ceil(n_train_est / bs)
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps) if total_steps else train.max_steps

    val_rows: list[np.ndarray] = []
    val_labels: list[np.ndarray] = []
    n_val_kept = 0
    curves: dict[str, list[float]] = {
        k: []
        for k in (
            "step", "loss", "reconstruction_loss_k", "reconstruction_loss_4k",
            "auxiliary_loss", "contrastive_loss", "k", "dead_fraction", "lr",
        )
    }
    evals: list[dict[str, Any]] = []
    epochs_info: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_loss": math.inf, "step": 0, "state": None}
    bad_evals = 0
    stop = False
    stopped_early = False
    step = 0
    window = torch.zeros(5, dtype=torch.float64, device=device)
    window_n = 0
    rows_epoch0 = 0
    train_rows_total = 0
    model.train()

    def evaluate(epoch: int) -> float | None:
        nonlocal bad_evals, stopped_early
        k_now = k_schedule(step, total_steps, config.k, train.k_start, train.anneal_fraction)
        metrics = _validate(model, train, contrast, val_batches(), k_now, kq_now(), val_pairs_t)
        if metrics is None:
            return None
        metrics.update(step=step, epoch=epoch)
        evals.append(metrics)
        logger.info("step %d val_loss %.5f val_fvu %.4f", step, metrics["val_loss"], metrics["val_fvu"])
        if progress is not None:
            progress(step, total_steps, {f"{k}": float(v) for k, v in metrics.items()})
        vl = metrics["val_loss"]
        if vl < best["val_loss"] - train.min_delta * abs(best["val_loss"]) or best["state"] is None:
            best.update(val_loss=vl, step=step, state={k: v.detach().clone() for k, v in model.state_dict().items()})
            bad_evals = 0
        else:
            bad_evals += 1
            if train.patience is not None and bad_evals >= train.patience:
                stopped_early = True
        return vl

    def val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if val_source is not None:
            for b in val_source.batches(bs, shuffle=False, seed=train.seed, epoch=0):
                xb, yb = split_batch(b)
                yield (
                    model.preprocess(torch.from_numpy(xb).to(device)),
                    torch.from_numpy(yb).to(device) if yb is not None else None,
                )
            return
        if not val_rows:
            return
        xs = np.concatenate(val_rows)
        ys = np.concatenate(val_labels) if val_labels else None
        for start in range(0, xs.shape[0], bs):
            yield (
                model.preprocess(torch.from_numpy(xs[start : start + bs]).to(device)),
                torch.from_numpy(ys[start : start + bs]).to(device) if ys is not None else None,
            )

    def kq_now() -> int:
        if not train.k_start:
            return kq_target
        return k_schedule(step, total_steps, kq_target, train.k_start, train.anneal_fraction)

    for epoch in range(train.epochs):
        t_epoch = time.perf_counter()
        rows_epoch = 0
        steps_epoch = 0
        for b in source.batches(bs, shuffle=True, seed=train.seed, epoch=epoch):
            xb, yb = split_batch(b)
            if xb.ndim != 2 or xb.shape[1] != config.input_dim:
                raise DataError(f"source yielded a batch of shape {xb.shape}, expected [m, {config.input_dim}]")
            if epoch == 0:
                rows_epoch0 += xb.shape[0]
            if holdout:
                m = holdout_mask(xb, val_fraction, hseed)
                if m.any():
                    if epoch == 0 and n_val_kept < train.max_val_rows:
                        take = np.flatnonzero(m)[: train.max_val_rows - n_val_kept]
                        val_rows.append(xb[take])
                        if yb is not None:
                            val_labels.append(yb[take])
                        n_val_kept += take.size
                    xb = xb[~m]
                    yb = yb[~m] if yb is not None else None
            if xb.shape[0] < 2:
                continue
            x = model.preprocess(torch.from_numpy(xb).to(device, non_blocking=True))
            labels = torch.from_numpy(yb).to(device) if yb is not None else None
            k_t = k_schedule(step, total_steps, config.k, train.k_start, train.anneal_fraction)
            kq_t = kq_now()
            recon_k, recon_4k, aux, idx, vals = reconstruction_terms(model, x, k_t, k_aux)
            pair_batch = None
            if pairs_t is not None:
                m_pairs = pairs_t[0].shape[0]
                pb = min(train.pairs_batch_size or bs, m_pairs)
                sel = torch.randperm(m_pairs, generator=gen)[:pb].to(device)
                pair_batch = (pairs_t[0][sel], pairs_t[1][sel])
            cl = contrast(x, idx, vals, labels, k_t, kq_t, pair_batch)
            # total = L(k) + L(4k)/8 + beta * L_aux + gamma * L_contrastive
            total = recon_k + recon_4k / 8 + train.beta_aux * aux + train.gamma * cl
            if train.lr_decay == "cosine" and total_steps:
                frac = min(step, total_steps) / total_steps
                for group in opt.param_groups:
                    group["lr"] = train.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
            opt.zero_grad(set_to_none=True)
            total.backward()
            _remove_parallel_decoder_grad_(model)
            opt.step()
            model.normalize_decoder_()
            update_dead_counts_(model, idx, vals)
            step += 1
            if step % RELEASE_HEAP_EVERY == 0:
                _release_free_heap()
            steps_epoch += 1
            rows_epoch += xb.shape[0]
            window += torch.stack([t.detach() for t in (total, recon_k, recon_4k, aux, cl)]).double()
            window_n += 1
            if step % train.log_every == 0 or step == total_steps:
                vals_w = (window / window_n).tolist()
                dead = float(model.dead_mask().float().mean())
                for name, v in zip(TERM_NAMES, vals_w):
                    curves[name].append(v)
                curves["step"].append(step)
                curves["k"].append(k_t)
                curves["dead_fraction"].append(dead)
                curves["lr"].append(opt.param_groups[0]["lr"])
                window.zero_()
                window_n = 0
                if progress is not None:
                    metrics = {"loss": vals_w[0], "fvu": vals_w[1], "k": k_t, "dead_fraction": dead, "epoch": epoch}
                    progress(step, total_steps, metrics)
            if train.eval_every and step % train.eval_every == 0:
                evaluate(epoch)
                model.train()
                if stopped_early:
                    stop = True
            if train.max_steps and step >= train.max_steps:
                stop = True
            if stop:
                break
        train_rows_total += rows_epoch
        secs = time.perf_counter() - t_epoch
        epochs_info.append(
            {"epoch": epoch, "rows": rows_epoch, "steps": steps_epoch, "seconds": round(secs, 4),
             "rows_per_s": round(rows_epoch / secs, 1) if secs > 0 else None}
        )
        if epoch == 0 and steps_epoch == 0:
            raise DataError("the training source yielded no usable rows (all held out or fewer than 2)")
        if epoch == 0 and total_steps is None:
            # a stream of unknown length: now we know the epoch size, plan the rest (k-annealing)
            total_steps = train.epochs * steps_epoch
        if not train.eval_every and not stopped_early:
            evaluate(epoch)
            model.train()
            if stopped_early:
                stop = True
        if stop:
            break

    if train.eval_every and (not evals or evals[-1]["step"] != step):
        evaluate(epoch)
    if train.restore_best and best["state"] is not None and best["step"] != step:
        model.load_state_dict(best["state"])
    model.eval()
    _release_free_heap()

    n_rows = source.n_rows or rows_epoch0
    fp = data_fingerprint(head_rows, n_rows, config.input_dim)
    model.config = config.model_copy(update={"data_fingerprint": fp})
    final = evals[-1] if evals else None
    last_train_fvu = curves["reconstruction_loss_k"][-1] if curves["reconstruction_loss_k"] else None
    best_eval = next((e for e in evals if e["step"] == best["step"]), None) if evals else None
    report: dict[str, Any] = {
        "method": "CSR (arXiv 2503.01776) + CSRv2 k-annealing",
        "config": model.config.model_dump(mode="json"),
        "train_config": train.model_dump(mode="json"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "n_rows": n_rows,
        "train_rows_per_epoch": epochs_info[0]["rows"],
        "val_rows": n_val_kept if holdout else None,
        "val_fraction_used": val_fraction if holdout else 0.0,
        "steps": step,
        "total_steps_planned": total_steps,
        "epochs_completed": len(epochs_info),
        "stopped_early": stopped_early,
        "best_step": best["step"] if best["state"] is not None else None,
        "best_val_loss": best["val_loss"] if best["state"] is not None else None,
        "restored_best": bool(train.restore_best and best["state"] is not None and best["step"] != step),
        "final_fvu": (best_eval or final or {}).get("val_fvu", last_train_fvu),
        "final_dead_fraction": float(model.dead_mask().float().mean()),
        "epochs": epochs_info,
        "curves": curves,
        "validation": evals,
        "data_fingerprint": fp,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    model.training_report = report
    return TrainResult(model, report)


@torch.no_grad()
def _validate(
    model: CSREncoder,
    train: TrainConfig,
    contrast: _Contrastive,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor | None]],
    k: int,
    kq: int,
    val_pairs: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, float] | None:
    """Validation loss ``L(k) + L(4k)/8 + gamma * L_contrastive`` (no aux: it depends on training state)."""
    was = model.training
    model.eval()
    sums = np.zeros(3)
    rows = 0
    try:
        gen_state = contrast.gen.get_state()
        contrast.gen.manual_seed(train.seed + 1)  # the same noise views at every evaluation
        for x, y in batches:
            n = x.shape[0]
            if n < 2:
                continue
            rk, r4, _, idx, vals = reconstruction_terms(model, x, k, 0, with_aux=False)
            if contrast.mode == "pairs" or (contrast.mode == "labels" and y is None):
                cl = 0.0
            else:
                cl = float(contrast(x, idx, vals, y, k, kq, update_pool=False))
            sums += np.array([float(rk), float(r4), cl]) * n
            rows += n
        contrast.gen.set_state(gen_state)
        if rows == 0:
            return None
        rk, r4, cl = sums / rows
        if contrast.mode == "pairs" and val_pairs is not None:
            q0 = val_pairs[0]
            cl = float(contrast(q0, q0, q0, None, k, kq, val_pairs, update_pool=False))  # pairs mode reads only pairs
        loss = rk + r4 / 8 + train.gamma * cl
        return {"val_loss": float(loss), "val_fvu": float(rk), "val_fvu_4k": float(r4), "val_contrastive": float(cl)}
    finally:
        model.train(was)
