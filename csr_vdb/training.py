"""The trainer: `train_encoder` fits a `CSREncoder` to a stream of embeddings (arXiv 2503.01776, CSRv2 k-annealing).

It reads batches from an `csr_vdb.sources.EmbeddingSource` and knows nothing about databases or
files; the loss terms live in `csr_vdb.losses`, the glibc heap tuning in `csr_vdb.allocator`.
"""

from __future__ import annotations

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

from csr_vdb import allocator
from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.losses import TERM_NAMES, ContrastiveLoss, csr_loss, reconstruction_terms, update_dead_counts_
from csr_vdb.device import resolve_device
from csr_vdb.model import CSREncoder
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
"""``progress(step, total_steps or None, metrics)``."""

CURVE_NAMES = ("step", *TERM_NAMES, "k", "dead_fraction", "lr")
"""Loss curves kept in the training report, one entry every ``log_every`` steps."""

_MOVED = {
    **{
        name: "csr_vdb.sources"
        for name in ("NpySource", "IteratorSource", "Batch")
    },
    **{name: "csr_vdb.allocator" for name in ("RELEASE_HEAP_EVERY",)},
}


def __getattr__(name: str) -> Any:
    """Names that moved out of this module still import from here, with a `DeprecationWarning`."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"csr_vdb.training.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), name)


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
    allocator.tune_heap_for_training()
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
        return _Trainer(source, config, train, progress, val_source, pairs).run()
    finally:
        torch.set_num_threads(old_threads)


class _Trainer:
    """One training run: setup, the epoch loop, validation with early stopping, the report.

    Steps, in `run` order: `_init_b_pre` (fingerprint rows and the data mean), `_prepare_pairs`,
    `_plan_steps`, then per epoch `_run_epoch` (hold-out, `_step`, `_log`, `_evaluate`), and `_report`.
    """

    def __init__(
        self,
        source: EmbeddingSource,
        config: CSRConfig,
        train: TrainConfig,
        progress: ProgressCallback | None,
        val_source: EmbeddingSource | None,
        pairs: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        self.t_start = time.perf_counter()
        self.source, self.config, self.train = source, config, train
        self.progress, self.val_source, self.pairs_np = progress, val_source, pairs
        self.device = resolve_device(train.device)
        torch.manual_seed(train.seed)
        self.gen = torch.Generator().manual_seed(train.seed)
        self.model = CSREncoder(config, device=self.device)
        self.bs = train.batch_size
        self.holdout = val_source is None and train.val_fraction > 0
        self.val_fraction = train.val_fraction
        if self.holdout and source.n_rows:
            # never hold out far more rows than validation keeps
            self.val_fraction = min(self.val_fraction, max(train.max_val_rows * 1.25 / source.n_rows, 1e-6))
        self.k_aux = min(config.k_aux, config.hidden_dim)
        self.total_steps: int | None = None
        self.step = 0
        self.rows_epoch0 = 0
        self.val_rows: list[np.ndarray] = []
        self.val_labels: list[np.ndarray] = []
        self.n_val_kept = 0
        self.curves: dict[str, list[float]] = {name: [] for name in CURVE_NAMES}
        self.evals: list[dict[str, Any]] = []
        self.epochs_info: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_loss": math.inf, "step": 0, "state": None}
        self.bad_evals = 0
        self.stopped_early = False
        self.window = torch.zeros(len(TERM_NAMES), dtype=torch.float64, device=self.device)
        self.window_n = 0

    # ------------------------------------------------------------------ setup
    def run(self) -> TrainResult:
        """Train, restore the best weights when asked, and return the encoder (eval mode) with its report."""
        head_rows = self._init_b_pre()
        self.pairs, self.val_pairs = self._prepare_pairs()
        self.opt = _adam(self.model, self.train)
        self.contrast = ContrastiveLoss(self.model, self.train, self.gen)
        self.total_steps = self._plan_steps()
        self.model.train()
        epoch = 0
        for epoch in range(self.train.epochs):
            if self._run_epoch(epoch):
                break
        if self.train.eval_every and (not self.evals or self.evals[-1]["step"] != self.step):
            self._evaluate(epoch)
        if self.restored_best:
            self.model.load_state_dict(self.best["state"])
        self.model.eval()
        allocator.release_free_heap()
        return TrainResult(self.model, self._report(head_rows))

    def _init_b_pre(self) -> np.ndarray:
        """Set ``b_pre`` to the mean of up to ``init_rows`` shuffled training rows; return the fingerprint rows.

        The fingerprint hashes the first rows in source order; the mean skips held-out rows.
        """
        train = self.train
        head = []
        got = 0
        for b in self.source.batches(min(FINGERPRINT_ROWS, self.bs), shuffle=False, seed=train.seed, epoch=0):
            xb, _ = split_batch(b)
            head.append(xb[: FINGERPRINT_ROWS - got])
            got += head[-1].shape[0]
            if got >= FINGERPRINT_ROWS:
                break
        if not got:
            raise DataError("the training source yielded no rows")
        acc = torch.zeros(self.config.input_dim, dtype=torch.float64)
        cnt = 0
        for b in self.source.batches(self.bs, shuffle=True, seed=train.seed, epoch=0):
            xb, _ = split_batch(b)
            if self.holdout:
                xb = xb[~holdout_mask(xb, self.val_fraction, train.seed)]
            if xb.shape[0]:
                acc += self.model.preprocess(torch.from_numpy(xb)).sum(0, dtype=torch.float64)
                cnt += xb.shape[0]
            if cnt >= train.init_rows:
                break
        if cnt == 0:
            raise DataError("the training source has no rows left after the validation hold-out")
        with torch.no_grad():
            self.model.b_pre.copy_((acc / cnt).to(torch.float32))
        return np.concatenate(head)

    def _prepare_pairs(self) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(training pairs, validation pairs)``, preprocessed, for ``positives="pairs"``; else ``(None, None)``.

        With at least 50 pairs, ``val_fraction`` of them (at least 2) are held out for validation.
        """
        if self.pairs_np is None or self.train.positives != "pairs":
            return None, None
        dim = self.config.input_dim
        q = torch.from_numpy(np.asarray(self.pairs_np[0], dtype=np.float32))
        d = torch.from_numpy(np.asarray(self.pairs_np[1], dtype=np.float32))
        if q.ndim != 2 or q.shape != d.shape or q.shape[1] != dim or q.shape[0] < 2:
            raise DataError(f"pairs must be two [m >= 2, {dim}] arrays, got {tuple(q.shape)} and {tuple(d.shape)}")
        for name, arr in (("pair queries", q.numpy()), ("pair docs", d.numpy())):
            check_rows(arr, 0, name)
        q, d = self.model.preprocess(q.to(self.device)), self.model.preprocess(d.to(self.device))
        perm = torch.randperm(q.shape[0], generator=self.gen).to(self.device)
        n_val = int(q.shape[0] * self.train.val_fraction) if q.shape[0] >= 50 else 0
        if n_val < 2:
            return (q, d), None
        return (q[perm[n_val:]], d[perm[n_val:]]), (q[perm[:n_val]], d[perm[:n_val]])

    def _plan_steps(self) -> int | None:
        """Total optimisation steps when the source's length is known (k-annealing, lr decay), else ``max_steps``."""
        total = None
        if self.source.n_rows:
            n_train = max(1, round(self.source.n_rows * (1 - (self.val_fraction if self.holdout else 0.0))))
            total = self.train.epochs * math.ceil(n_train / self.bs)
        if self.train.max_steps:
            total = min(total, self.train.max_steps) if total else self.train.max_steps
        return total

    # ------------------------------------------------------------------ the loop
    def _run_epoch(self, epoch: int) -> bool:
        """One pass over the source; returns whether training stops (early stopping, ``max_steps``)."""
        train = self.train
        t_epoch = time.perf_counter()
        rows, steps = 0, 0
        stop = False
        for b in self.source.batches(self.bs, shuffle=True, seed=train.seed, epoch=epoch):
            xb, yb = split_batch(b)
            if xb.ndim != 2 or xb.shape[1] != self.config.input_dim:
                raise DataError(f"source yielded a batch of shape {xb.shape}, expected [m, {self.config.input_dim}]")
            if epoch == 0:
                self.rows_epoch0 += xb.shape[0]
            if self.holdout:
                xb, yb = self._hold_out(xb, yb, epoch)
            if xb.shape[0] < 2:
                continue
            self._step(xb, yb, epoch)
            steps += 1
            rows += xb.shape[0]
            if train.eval_every and self.step % train.eval_every == 0:
                self._evaluate(epoch)
                self.model.train()
                stop = self.stopped_early
            if train.max_steps and self.step >= train.max_steps:
                stop = True
            if stop:
                break
        secs = time.perf_counter() - t_epoch
        self.epochs_info.append(
            {"epoch": epoch, "rows": rows, "steps": steps, "seconds": round(secs, 4),
             "rows_per_s": round(rows / secs, 1) if secs > 0 else None}
        )
        if epoch == 0 and steps == 0:
            raise DataError("the training source yielded no usable rows (all held out or fewer than 2)")
        if epoch == 0 and self.total_steps is None:
            # a stream of unknown length: now we know the epoch size, plan the rest (k-annealing)
            self.total_steps = train.epochs * steps
        if not train.eval_every and not self.stopped_early:
            self._evaluate(epoch)
            self.model.train()
            stop = stop or self.stopped_early
        return stop

    def _hold_out(self, xb: np.ndarray, yb: np.ndarray | None, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Drop the batch's held-out rows, keeping them (first epoch, up to ``max_val_rows``) for validation."""
        m = holdout_mask(xb, self.val_fraction, self.train.seed)
        if not m.any():
            return xb, yb
        if epoch == 0 and self.n_val_kept < self.train.max_val_rows:
            take = np.flatnonzero(m)[: self.train.max_val_rows - self.n_val_kept]
            self.val_rows.append(xb[take])
            if yb is not None:
                self.val_labels.append(yb[take])
            self.n_val_kept += take.size
        return xb[~m], (yb[~m] if yb is not None else None)

    def _k_now(self) -> int:
        """This step's document k (`k_schedule`)."""
        return k_schedule(self.step, self.total_steps, self.config.k, self.train.k_start, self.train.anneal_fraction)

    def _kq_now(self) -> int:
        """This step's query k: ``k_query_for()``, annealed from ``k_start`` like the document k."""
        kq = self.config.k_query_for()
        if not self.train.k_start:
            return kq
        return k_schedule(self.step, self.total_steps, kq, self.train.k_start, self.train.anneal_fraction)

    def _pair_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This step's random sample of training pairs (``pairs_batch_size``, default the batch size)."""
        if self.pairs is None:
            return None
        m = self.pairs[0].shape[0]
        sel = torch.randperm(m, generator=self.gen)[: min(self.train.pairs_batch_size or self.bs, m)].to(self.device)
        return self.pairs[0][sel], self.pairs[1][sel]

    def _step(self, xb: np.ndarray, yb: np.ndarray | None, epoch: int) -> None:
        """One optimisation step on a batch of training rows."""
        train, model = self.train, self.model
        x = model.preprocess(torch.from_numpy(xb).to(self.device, non_blocking=True))
        labels = torch.from_numpy(yb).to(self.device) if yb is not None else None
        k_t, kq_t = self._k_now(), self._kq_now()
        pair_batch = self._pair_batch()
        terms = csr_loss(
            model, x, k_t, self.k_aux,
            lambda idx, vals: self.contrast(x, idx, vals, labels, k_t, kq_t, pair_batch),
            beta_aux=train.beta_aux, gamma=train.gamma,
        )
        if train.lr_decay == "cosine" and self.total_steps:
            frac = min(self.step, self.total_steps) / self.total_steps
            for group in self.opt.param_groups:
                group["lr"] = train.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        self.opt.zero_grad(set_to_none=True)
        terms.total.backward()
        _remove_parallel_decoder_grad_(model)
        self.opt.step()
        model.normalize_decoder_()
        update_dead_counts_(model, terms.indices, terms.values)
        self.step += 1
        if self.step % allocator.RELEASE_HEAP_EVERY == 0:
            allocator.release_free_heap()
        self.window += terms.stacked().double()
        self.window_n += 1
        if self.step % train.log_every == 0 or self.step == self.total_steps:
            self._log(k_t, epoch)

    def _log(self, k_t: int, epoch: int) -> None:
        """Append the mean terms since the last entry to the curves and report progress."""
        means = (self.window / self.window_n).tolist()
        dead = float(self.model.dead_mask().float().mean())
        for name, v in zip(TERM_NAMES, means):
            self.curves[name].append(v)
        self.curves["step"].append(self.step)
        self.curves["k"].append(k_t)
        self.curves["dead_fraction"].append(dead)
        self.curves["lr"].append(self.opt.param_groups[0]["lr"])
        self.window.zero_()
        self.window_n = 0
        if self.progress is not None:
            metrics = {"loss": means[0], "fvu": means[1], "k": k_t, "dead_fraction": dead, "epoch": epoch}
            self.progress(self.step, self.total_steps, metrics)

    # ------------------------------------------------------------------ validation
    def _evaluate(self, epoch: int) -> None:
        """Validate, keep the best weights, and count evaluations without improvement (early stopping)."""
        train = self.train
        metrics = _validate(self.model, train, self.contrast, self._val_batches(), self._k_now(), self._kq_now(),
                            self.val_pairs)
        if metrics is None:
            return
        metrics.update(step=self.step, epoch=epoch)
        self.evals.append(metrics)
        logger.info("step %d val_loss %.5f val_fvu %.4f", self.step, metrics["val_loss"], metrics["val_fvu"])
        if self.progress is not None:
            self.progress(self.step, self.total_steps, {f"{k}": float(v) for k, v in metrics.items()})
        best = self.best
        vl = metrics["val_loss"]
        if vl < best["val_loss"] - train.min_delta * abs(best["val_loss"]) or best["state"] is None:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            best.update(val_loss=vl, step=self.step, state=state)
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if train.patience is not None and self.bad_evals >= train.patience:
                self.stopped_early = True

    def _val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Preprocessed validation batches (with labels or None): ``val_source``, else the held-out rows."""
        if self.val_source is not None:
            batches = (split_batch(b) for b in self.val_source.batches(self.bs, shuffle=False, seed=self.train.seed, epoch=0))
        elif self.val_rows:
            xs = np.concatenate(self.val_rows)
            ys = np.concatenate(self.val_labels) if self.val_labels else None
            batches = (
                (xs[s : s + self.bs], ys[s : s + self.bs] if ys is not None else None)
                for s in range(0, xs.shape[0], self.bs)
            )
        else:
            return
        for xb, yb in batches:
            yield (
                self.model.preprocess(torch.from_numpy(xb).to(self.device)),
                torch.from_numpy(yb).to(self.device) if yb is not None else None,
            )

    # ------------------------------------------------------------------ report
    @property
    def restored_best(self) -> bool:
        """Whether the returned weights are those of an earlier, better evaluation."""
        best = self.best
        return bool(self.train.restore_best and best["state"] is not None and best["step"] != self.step)

    def _report(self, head_rows: np.ndarray) -> dict[str, Any]:
        """Fill in the data fingerprint and build the training report (also kept on the encoder)."""
        model, config, train, best = self.model, self.config, self.train, self.best
        n_rows = self.source.n_rows or self.rows_epoch0
        fp = data_fingerprint(head_rows, n_rows, config.input_dim)
        model.config = config.model_copy(update={"data_fingerprint": fp})
        evals = self.evals
        final = evals[-1] if evals else None
        fvu_curve = self.curves["reconstruction_loss_k"]
        best_eval = next((e for e in evals if e["step"] == best["step"]), None) if evals else None
        has_best = best["state"] is not None
        report: dict[str, Any] = {
            "method": "CSR (arXiv 2503.01776) + CSRv2 k-annealing",
            "config": model.config.model_dump(mode="json"),
            "train_config": train.model_dump(mode="json"),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "n_rows": n_rows,
            "train_rows_per_epoch": self.epochs_info[0]["rows"],
            "val_rows": self.n_val_kept if self.holdout else None,
            "val_fraction_used": self.val_fraction if self.holdout else 0.0,
            "steps": self.step,
            "total_steps_planned": self.total_steps,
            "epochs_completed": len(self.epochs_info),
            "stopped_early": self.stopped_early,
            "best_step": best["step"] if has_best else None,
            "best_val_loss": best["val_loss"] if has_best else None,
            "restored_best": self.restored_best,
            "final_fvu": (best_eval or final or {}).get("val_fvu", fvu_curve[-1] if fvu_curve else None),
            "final_dead_fraction": float(model.dead_mask().float().mean()),
            "epochs": self.epochs_info,
            "curves": self.curves,
            "validation": evals,
            "data_fingerprint": fp,
            "seconds": round(time.perf_counter() - self.t_start, 3),
        }
        model.training_report = report
        return report


def _adam(model: CSREncoder, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam, fused where torch supports it (one kernel per step instead of one per parameter)."""
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


@torch.no_grad()
def _validate(
    model: CSREncoder,
    train: TrainConfig,
    contrast: ContrastiveLoss,
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
            cl = float(contrast.pairs_loss(val_pairs, k, kq))
        loss = rk + r4 / 8 + train.gamma * cl
        return {"val_loss": float(loss), "val_fvu": float(rk), "val_fvu_4k": float(r4), "val_contrastive": float(cl)}
    finally:
        model.train(was)
