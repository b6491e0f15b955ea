"""Operations the CLI composes from the library: export to a memmap, train from a store, load models.

These functions hold the glue between layers (a store, the core trainer, the migration plan)
that the core itself may not import; the click commands stay thin and call one of them.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from csr_vdb.errors import ConfigError, DataError, StoreError

logger = logging.getLogger(__name__)

Progress = Callable[..., None]


class ExportResult(BaseModel):
    """Files written by `export_collection`."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="Exported collection.")
    path: str = Field(description="The .npy file ([rows, dim]).")
    ids_path: str = Field(description="One id per line, in row order.")
    meta_path: str = Field(description="JSON: collection, rows, dim, dtype, id_type, metric, vector_field.")
    rows: int = Field(description="Rows written.")
    dim: int = Field(description="Vector dimension.")
    dtype: str = Field(description="float32 or float16.")
    id_type: str = Field(description="int or str.")
    metric: str = Field(description="The collection's dense metric.")
    seconds: float = Field(description="Wall time.")
    rows_per_s: float = Field(description="Export throughput.")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name[: -len(".npy")] + suffix if path.name.endswith(".npy") else path.name + suffix)


def export_collection(
    store: Any,
    collection: str,
    out: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    vector_field: str | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> ExportResult:
    """Stream a collection's dense vectors into a ``.npy`` memmap plus an ids file, atomically.

    Memory stays at one page: pages are written straight into the memory-mapped file, which is
    renamed into place only when complete.

    Args:
        store: an open `VectorStore`.
        collection: collection (or alias) to export.
        out: the ``.npy`` path; ``<stem>.ids.txt`` and ``<stem>.meta.json`` are written beside it.
        dtype: "float32" or "float16".
        vector_field: dense field (default: the first).
        batch_size: rows per page.
        progress: callback ``(done_rows, total_rows)``.

    Raises:
        ConfigError: bad dtype.
        CollectionNotFoundError: no such collection.
        DataError: the collection is empty or has no dense vectors.
        StoreError: the collection changed size during the export.
    """
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"--dtype must be float32 or float16, got '{dtype}'")
    info = store.describe(collection)
    dim = info.vector_fields.get(vector_field, 0) if vector_field else info.dimension
    if vector_field and vector_field not in info.vector_fields:
        raise ConfigError(
            f"collection '{collection}' has no vector field '{vector_field}' "
            f"(fields: {', '.join(info.vector_fields) or 'none'})"
        )
    if dim <= 0:
        raise DataError(f"collection '{collection}' has no dense vectors to export")
    n = store.count(collection)
    if n == 0:
        raise DataError(f"collection '{collection}' is empty")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    ids_path, meta_path = _sibling(path, ".ids.txt"), _sibling(path, ".meta.json")
    ids_tmp = ids_path.with_name(ids_path.name + ".part")
    t0 = time.perf_counter()
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n, dim))
    done = 0
    try:
        with open(ids_tmp, "w", encoding="utf-8") as fids:
            for page in store.iter_dense(collection, batch_size=batch_size, vector_field=vector_field):
                m = len(page.ids)
                if done + m > n:
                    raise StoreError(f"collection '{collection}' grew during the export ({n} rows expected)")
                arr[done : done + m] = page.vectors
                for i in page.ids:
                    s = str(i)
                    if "\n" in s or "\r" in s:
                        raise DataError(f"id {i!r} contains a line break; cannot write it to {ids_path}", [i])
                    fids.write(s + "\n")
                done += m
                if progress:
                    progress(done, n)
        if done != n:
            raise StoreError(f"collection '{collection}' shrank during the export ({done} of {n} rows read)")
        arr.flush()
        del arr
        os.replace(ids_tmp, ids_path)
        os.replace(tmp, path)
    except BaseException:
        for p in (tmp, ids_tmp):
            p.unlink(missing_ok=True)
        raise
    secs = time.perf_counter() - t0
    meta = {
        "collection": info.name, "rows": n, "dim": dim, "dtype": dtype, "id_type": info.id_type,
        "metric": info.metric, "vector_field": vector_field or info.vector_field,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        collection=collection, path=str(path), ids_path=str(ids_path), meta_path=str(meta_path),
        rows=n, dim=dim, dtype=dtype, id_type=info.id_type, metric=info.metric, seconds=secs,
        rows_per_s=n / secs if secs > 0 else 0.0,
    )


class TrainSummary(BaseModel):
    """What `train_model` did."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(description="Folder of the saved encoder.")
    source: str = Field(description="Collection name or .npy file trained on.")
    rows: int = Field(description="Training rows available.")
    input_dim: int = Field(description="d.")
    hidden_dim: int = Field(description="h.")
    k: int = Field(description="Active latents per document code.")
    epochs: int = Field(description="Epochs configured.")
    seconds: float = Field(description="Training wall time (export excluded).")
    export_seconds: float | None = Field(None, description="Export wall time when trained from a store.")
    report: dict[str, Any] = Field(default_factory=dict, description="Final figures of the training report.")


def build_configs(
    input_dim: int,
    n_rows: int,
    *,
    metric: str = "cosine",
    hidden: int | None = None,
    k: int | None = None,
    k_query: int | None = None,
    query_projection: str | None = None,
    doc_codes: str | None = None,
    bias_latent: bool | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    source_collection: str | None = None,
) -> tuple[Any, Any]:
    """The recipe's (`csr_vdb.recipes.default_configs`) CSRConfig/TrainConfig with user overrides.

    Raises:
        ConfigError: an override is invalid (e.g. k > hidden).
    """
    from csr_vdb.config import CSRConfig, TrainConfig

    try:
        from csr_vdb.recipes import default_configs
    except ImportError:  # the recipe module is optional; the configs' own defaults still train
        default_configs = None
    try:
        if default_configs is not None:
            # the recipe may derive other settings (batch, annealing) from k and h: hand them over
            given = {name: v for name, v in (("k", k), ("hidden_dim", hidden)) if v is not None}
            if k is not None and hidden is None and k > 4 * input_dim:
                given["hidden_dim"] = 4 * k
            try:
                accepted = set(inspect.signature(default_configs).parameters)
            except (TypeError, ValueError):  # pragma: no cover - builtins/C callables
                accepted = set()
            cfg, tcfg = default_configs(input_dim, n_rows, **{a: v for a, v in given.items() if a in accepted})
            model_kw = cfg.model_dump()
            train_kw = tcfg.model_dump()
        else:
            model_kw = {"input_dim": input_dim, "hidden_dim": 4 * input_dim, "k": 32}
            train_kw = {}
        model_kw["input_dim"] = input_dim
        # a cosine collection is compared on unit vectors; ip / l2 keep the raw scale
        model_kw["normalize"] = "l2" if metric == "cosine" else "none"
        for key, val in (("hidden_dim", hidden), ("k", k), ("k_query", k_query),
                         ("query_projection", query_projection), ("doc_codes", doc_codes),
                         ("bias_latent", bias_latent),
                         ("source_collection", source_collection)):
            if val is not None:
                model_kw[key] = val
        if bias_latent is None and query_projection == "encoder":
            # TopK queries never score the bias latent: keep the codes those queries expect
            model_kw["bias_latent"] = False
        if model_kw.get("k", 0) > model_kw.get("hidden_dim", 0) and hidden is None:
            model_kw["hidden_dim"] = max(model_kw["k"] * 4, model_kw["hidden_dim"])
        for key, val in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed)):
            if val is not None:
                train_kw[key] = val
        if device is not None:
            train_kw["device"] = device
        if "batch_size" in train_kw and n_rows > 0:
            # a batch larger than the collection would make an epoch of zero steps
            train_kw["batch_size"] = max(2, min(int(train_kw["batch_size"]), n_rows))
        return CSRConfig(**model_kw), TrainConfig(**train_kw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid training setting {where or ''}: {first['msg']}".replace(" :", ":")) from None


def train_model(
    model_dir: str | os.PathLike[str],
    *,
    store: Any = None,
    collection: str | None = None,
    from_npy: str | os.PathLike[str] | None = None,
    vector_field: str | None = None,
    work_dir: str | os.PathLike[str] = ".csr-vdb",
    keep_export: bool = False,
    export_progress: Progress | None = None,
    train_progress: Progress | None = None,
    metric: str | None = None,
    **overrides: Any,
) -> TrainSummary:
    """Train an encoder on a collection (streamed through a memmap export) or on a ``.npy`` file.

    The collection is exported page by page to ``<work_dir>/exports/…npy`` and read back with
    `csr_vdb.training.NpySource` (memory-mapped), so the whole collection is never in RAM.

    Args:
        model_dir: where the encoder is saved.
        store: an open store (with ``collection``), or None with ``from_npy``.
        collection: collection to train on.
        from_npy: a ``[rows, dim]`` float16/float32 ``.npy`` file instead of a collection.
        vector_field: dense field of the collection.
        work_dir: state folder holding the temporary export.
        keep_export: keep the export after training (else deleted).
        export_progress: callback ``(done_rows, total_rows)``.
        train_progress: callback ``(step, total_steps, metrics)``.
        metric: the vectors' metric when training from a file ("cosine" default).
        overrides: `build_configs` keyword overrides (hidden, k, k_query, epochs, ...).

    Raises:
        ConfigError: neither or both sources; invalid settings.
        DataError / StoreError / ModelError: from the export, training or saving.
    """
    from csr_vdb.training import NpySource, train_encoder

    if (from_npy is None) == (collection is None):
        raise ConfigError("give either --collection or --from-npy")
    export_s = None
    export_path: Path | None = None
    if from_npy is not None:
        npy = Path(from_npy)
        if not npy.is_file():
            raise ConfigError(f"--from-npy file {npy} not found")
        source_name = str(npy)
        metric = metric or "cosine"
    else:
        info = store.describe(collection)
        metric = metric or info.metric
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{info.name}")
        export_path = Path(work_dir) / "exports" / f"{slug}-{os.getpid()}.npy"
        exp = export_collection(store, collection, export_path, vector_field=vector_field, progress=export_progress)
        export_s = exp.seconds
        npy = export_path
        source_name = collection
    try:
        source = NpySource(npy)
        n_rows = int(getattr(source, "n_rows", None) or 0)
        cfg, tcfg = build_configs(
            source.dim, n_rows, metric=metric, source_collection=collection, **overrides
        )
        t0 = time.perf_counter()
        result = train_encoder(source, cfg, tcfg, progress=train_progress)
        secs = time.perf_counter() - t0
        result.save(model_dir)  # also writes training_report.json
    finally:
        if export_path is not None and not keep_export:
            for p in (export_path, _sibling(export_path, ".ids.txt"), _sibling(export_path, ".meta.json")):
                p.unlink(missing_ok=True)
    report = dict(getattr(result, "report", {}) or {})
    final = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return TrainSummary(
        model_dir=str(model_dir), source=source_name, rows=n_rows, input_dim=cfg.input_dim,
        hidden_dim=cfg.hidden_dim, k=cfg.k, epochs=tcfg.epochs, seconds=secs, export_seconds=export_s,
        report=final,
    )


def load_encoder(model_dir: str | os.PathLike[str], device: str | None = None) -> Any:
    """`CSREncoder.load` (raises ModelError with a clear message)."""
    from csr_vdb.model import CSREncoder

    return CSREncoder.load(model_dir, device=device)


def model_for(
    model: str | None,
    state_dir: Path,
    store_kind: str,
    uri: str,
    collection: str,
    target: str | None = None,
) -> str:
    """The ``--model`` folder, or the one recorded in a migration plan of this collection.

    A plan matches when it is for this store and URI and ``collection`` is its source, its target
    or its alias (so searching ``docs_live`` after a cutover finds the model).
    """
    if model:
        return model
    from csr_vdb.migrations.plan import PLAN_FILE, MigrationPlan, normalize_uri

    want = normalize_uri(uri)
    found: list[Any] = []
    for path in sorted(Path(state_dir).glob(f"*/{PLAN_FILE}")):
        try:
            plan = MigrationPlan.load(path)
        except Exception as exc:  # a foreign or damaged file must not hide the others
            logger.debug("ignoring %s: %s", path, exc)
            continue
        if plan.store_kind != store_kind or normalize_uri(plan.uri) != want:
            continue
        if collection in (plan.source, plan.target, plan.alias) and (target is None or plan.target == target):
            found.append(plan)
    if not found:
        raise ConfigError(f"--model is required: no migration of '{collection}' recorded under {state_dir}")
    return str(found[-1].model_dir)


def remove_tree(path: Path) -> None:
    """Delete a folder if it exists (demo re-runs)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
