"""Operations the CLI composes from the library: export to a memmap, train from a store, migrate,
verify and evaluate with a saved encoder.

These functions hold the glue between layers (a store, the core encoder and trainer, the migration
engine) that the core itself may not import; each click command parses its options and calls one
of them (or one library function).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from csr_vdb.config import QueryWidthFields
from csr_vdb.errors import ConfigError, DataError, MigrationError, StoreError
from csr_vdb.fileutil import private_dir
from csr_vdb.migrations import (
    AliasResult,
    MigrationPlan,
    MigrationResult,
    SyncReport,
    VerifyReport,
    cutover,
    plan_migration,
    plans_for,
    run_migration,
    sync_migration,
    verify_migration,
)
from csr_vdb.migrations.report import Report
from csr_vdb.migrations.sync import model_sha

logger = logging.getLogger(__name__)

Progress = Callable[..., None]


class ExportResult(Report):
    """Files written by `export_collection`."""

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
        ConfigError: bad dtype or unknown field.
        CollectionNotFoundError: no such collection.
        DataError: the collection is empty or has no dense vectors.
        StoreError: the collection changed size during the export.
    """
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"--dtype must be float32 or float16, got '{dtype}'")
    info = store.describe(collection)
    if vector_field and vector_field not in info.vector_fields:
        raise ConfigError(
            f"collection '{collection}' has no vector field '{vector_field}' "
            f"(fields: {', '.join(info.vector_fields) or 'none'})"
        )
    dim = info.vector_fields[vector_field] if vector_field else info.dimension
    if dim <= 0:
        raise DataError(f"collection '{collection}' has no dense vectors to export")
    if info.count == 0:
        raise DataError(f"collection '{collection}' is empty")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids_path, meta_path = _sibling(path, ".ids.txt"), _sibling(path, ".meta.json")
    t0 = time.perf_counter()
    pages = store.iter_dense(collection, batch_size=batch_size, vector_field=vector_field)
    _write_pages(pages, path, ids_path, (info.count, dim), dtype, collection, progress)
    secs = time.perf_counter() - t0
    meta = {"collection": info.name, "rows": info.count, "dim": dim, "dtype": dtype, "id_type": info.id_type,
            "metric": info.metric, "vector_field": vector_field or info.vector_field}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        collection=collection, path=str(path), ids_path=str(ids_path), meta_path=str(meta_path),
        rows=info.count, dim=dim, dtype=dtype, id_type=info.id_type, metric=info.metric, seconds=secs,
        rows_per_s=info.count / secs if secs > 0 else 0.0,
    )


def _write_pages(
    pages: Any, path: Path, ids_path: Path, shape: tuple[int, int], dtype: str, collection: str,
    progress: Progress | None,
) -> None:
    """Write ``shape[0]`` rows of pages into ``path`` (+ their ids), each through a ``.part`` file
    renamed into place only when every row arrived; nothing is left behind on failure."""
    n = shape[0]
    tmp, ids_tmp = path.with_name(path.name + ".part"), ids_path.with_name(ids_path.name + ".part")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
    done = 0
    try:
        with open(ids_tmp, "w", encoding="utf-8") as fids:
            for page in pages:
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


class TrainSummary(Report, QueryWidthFields):
    """What `train_model` did."""

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
    search_candidates: int | None = Field(None, description="Candidates re-scored per search.")


_MODEL_OVERRIDES = ("hidden_dim", "k", "k_query", "query_projection", "doc_codes", "bias_latent", "source_collection")
_TRAIN_OVERRIDES = ("epochs", "batch_size", "lr", "seed", "device")


def build_configs(input_dim: int, n_rows: int, *, metric: str = "cosine", **overrides: Any) -> tuple[Any, Any]:
    """The recipe's (`csr_vdb.recipes.default_configs`) CSRConfig/TrainConfig with user overrides.

    Args:
        input_dim: the vectors' dimension.
        n_rows: rows to train on (the recipe sizes batches and epochs by it).
        metric: the vectors' metric: a cosine collection is compared on unit vectors, ip / l2 keep
            the raw scale.
        overrides: model settings (hidden_dim, k, k_query, query_projection, doc_codes,
            bias_latent, source_collection) and training settings (epochs, batch_size, lr, seed,
            device); None means "the recipe's".

    Raises:
        ConfigError: an unknown or invalid override (e.g. k > hidden_dim).
    """
    from csr_vdb.config import CSRConfig, TrainConfig
    from csr_vdb.recipes import default_configs, with_overrides

    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(_MODEL_OVERRIDES) - set(_TRAIN_OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
    model = {k: given[k] for k in _MODEL_OVERRIDES if k in given}
    train = {k: given[k] for k in _TRAIN_OVERRIDES if k in given}
    # the recipe derives other settings (batch, annealing) from k and h: hand them over
    shape = {k: model[k] for k in ("k", "hidden_dim") if k in model}
    if "k" in shape and "hidden_dim" not in shape and shape["k"] > 4 * input_dim:
        shape["hidden_dim"] = 4 * shape["k"]
    try:
        cfg, tcfg = default_configs(input_dim, n_rows, **shape)
        # TopK queries (the encoder projection) never score the bias latent nor take the decoder
        # search width: with_overrides keeps the codes and queries those settings expect
        model_kw = with_overrides(cfg, input_dim=input_dim, normalize="l2" if metric == "cosine" else "none",
                                  **model).model_dump()
        if model_kw["k"] > model_kw["hidden_dim"] and "hidden_dim" not in model:
            model_kw["hidden_dim"] = max(model_kw["k"] * 4, model_kw["hidden_dim"])
        train_kw = {**tcfg.model_dump(), **train}
        if n_rows > 0:
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
    query_width: str | int | None = "auto",
    recall_floor: float = 0.99,
    **overrides: Any,
) -> TrainSummary:
    """Train an encoder on a collection (streamed through a memmap export) or on a ``.npy`` file.

    The collection is exported page by page to ``<work_dir>/exports/…npy`` and read back with
    `csr_vdb.sources.NpySource` (memory-mapped), so the whole collection is never in RAM.
    Then, for decoder-projection queries, the search-query width is chosen on the collection's own
    rows (`csr_vdb.query_width.fit_query_width`) and saved in the model's config.

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
        query_width: ``"auto"``: the narrowest width (16 and up) whose search + re-score keeps
            ``recall_floor`` of the full width's recall on self-queries of the training rows;
            an int: that width; None: the recipe's. Decoder-projection queries only.
        recall_floor: see ``query_width``.
        overrides: `build_configs` keyword overrides (hidden_dim, k, k_query, epochs, ...).

    Raises:
        ConfigError: neither or both sources; invalid settings (a query width with TopK queries,
            or one that differs from ``k_query``).
        DataError / StoreError / ModelError: from the export, training or saving.
    """
    from csr_vdb.sources import NpySource
    from csr_vdb.training import train_encoder

    if (from_npy is None) == (collection is None):
        raise ConfigError("give either --collection or --from-npy")
    width = _query_width_setting(query_width, recall_floor, overrides)
    if isinstance(width, int):
        overrides["k_query"] = width
    with _training_file(store, collection, from_npy, vector_field, work_dir, keep_export, export_progress) as (
        npy, file_metric, export_s,
    ):
        source = NpySource(npy)
        n_rows = int(getattr(source, "n_rows", None) or 0)
        cfg, tcfg = build_configs(source.dim, n_rows, metric=metric or file_metric, source_collection=collection,
                                  **overrides)
        t0 = time.perf_counter()
        result = train_encoder(source, cfg, tcfg, progress=train_progress)
        secs = time.perf_counter() - t0
        encoder = result.encoder
        if width == "auto" and encoder.config.query_projection == "decoder":
            from csr_vdb.query_width import apply_query_width, fit_query_width

            rows = np.load(npy, mmap_mode="r")
            apply_query_width(encoder, fit_query_width(encoder, rows, recall_floor=recall_floor, seed=tcfg.seed))
        result.save(model_dir)  # also writes training_report.json
    report = dict(getattr(result, "report", {}) or {})
    final = encoder.config
    return TrainSummary(
        model_dir=str(model_dir), source=collection or str(from_npy), rows=n_rows, input_dim=cfg.input_dim,
        hidden_dim=cfg.hidden_dim, k=cfg.k, epochs=tcfg.epochs, seconds=secs, export_seconds=export_s,
        report={k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None},
        search_candidates=final.search_candidates, **QueryWidthFields.of(final, final.query_projection),
    )


def _query_width_setting(query_width: str | int | None, recall_floor: float, overrides: dict[str, Any]) -> str | int | None:
    """``--query-width`` as "auto", a width, or None, checked against the other settings."""
    if isinstance(query_width, str) and query_width.strip().lower() != "auto":
        try:
            query_width = int(query_width)
        except ValueError:
            raise ConfigError(f"--query-width must be 'auto' or a positive integer, got {query_width!r}") from None
    if isinstance(query_width, str):
        query_width = "auto"
    if isinstance(query_width, int) and query_width < 1:
        raise ConfigError(f"--query-width must be 'auto' or a positive integer, got {query_width}")
    if not 0 < recall_floor <= 1:
        raise ConfigError(f"--recall-floor must be in (0, 1], got {recall_floor}")
    k_query = overrides.get("k_query")
    if k_query is not None:
        if isinstance(query_width, int) and query_width != k_query:
            raise ConfigError(f"--k-query {k_query} and --query-width {query_width} disagree: give one")
        return k_query  # an explicit width is kept as given
    if overrides.get("query_projection") == "encoder" and query_width is not None:
        if isinstance(query_width, int):
            raise ConfigError("--query-width is the decoder-projection search width; with --query-projection "
                              "encoder use --k-query")
        return None  # auto: TopK queries keep k non-zeros
    return query_width


@contextmanager
def _training_file(
    store: Any, collection: str | None, from_npy: str | os.PathLike[str] | None, vector_field: str | None,
    work_dir: str | os.PathLike[str], keep_export: bool, progress: Progress | None,
) -> Iterator[tuple[Path, str, float | None]]:
    """``(.npy file, its metric, export seconds or None)``: ``from_npy``, or an export of
    ``collection`` under ``work_dir/exports`` that is deleted afterwards unless ``keep_export``."""
    if from_npy is not None:
        npy = Path(from_npy)
        if not npy.is_file():
            raise ConfigError(f"--from-npy file {npy} not found")
        yield npy, "cosine", None
        return
    info = store.describe(collection)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{info.name}")
    path = Path(work_dir) / "exports" / f"{slug}-{os.getpid()}.npy"
    private_dir(path.parent, own=True)  # the collection's vectors: readable by their owner only
    try:
        exp = export_collection(store, collection, path, vector_field=vector_field, progress=progress)
        yield path, info.metric, exp.seconds
    finally:
        if not keep_export:
            for p in (path, _sibling(path, ".ids.txt"), _sibling(path, ".meta.json")):
                p.unlink(missing_ok=True)


def migrate_collection(
    store: Any, plan_options: dict[str, Any], *, device: str | None, **run_options: Any
) -> tuple[MigrationPlan, MigrationResult]:
    """Plan a migration with the encoder saved in ``plan_options["model_dir"]``, and run it.

    The store is described once for both steps (`plan_migration`'s `Preflight` goes to the run).

    Args:
        store: the open store.
        plan_options: keyword arguments of `csr_vdb.migrations.plan_migration` (store_kind, uri,
            source, model_dir, ...); the encoder's ``input_dim`` is checked against the source.
        device: torch device of the encoder (None: CPU).
        run_options: state_base, resume, dry_run, progress (`csr_vdb.migrations.run_migration`).

    Raises:
        ModelError: the encoder cannot be loaded; and what planning and running raise.
    """
    encoder = load_encoder(plan_options["model_dir"], device)
    plan, pre = plan_migration(store, **{**plan_options, "model_dir": str(Path(plan_options["model_dir"]).resolve()),
                                         "model_dim": encoder.config.input_dim})
    return plan, run_migration(store, plan, encoder.encode, preflight=pre, **run_options)


def verify_collection(
    store: Any, plan: MigrationPlan, *, device: str | None, state_base: str | os.PathLike[str] | None, **options: Any
) -> VerifyReport:
    """`csr_vdb.migrations.verify_migration` with the plan's encoder (documents and queries).

    ``options``: sample, min_recall, progress.
    """
    encoder = load_encoder(plan.model_dir, device)
    return verify_migration(store, plan, encoder.encode, verification_queries(encoder), state_base=state_base,
                            **options)


def verification_queries(encoder: Any) -> Any:
    """The query encoder of verify's recall check: the database's search alone (no re-score), so
    decoder-projection queries keep their full width (``k_query`` narrows the search of a query path
    that re-scores its candidates); TopK queries as the encoder makes them (`CSRConfig.k_query_alone`)."""
    width = encoder.config.k_query_alone()
    return lambda x: encoder.encode_queries(x, k=width)


def sync_collection(
    store: Any, plan: MigrationPlan, *, device: str | None, state_base: str | os.PathLike[str] | None,
    model_dir: str | None = None, **options: Any,
) -> SyncReport:
    """`csr_vdb.migrations.sync_migration` with the plan's encoder.

    Args:
        store: the open store.
        plan: the migration plan.
        device: torch device of the encoder.
        state_base: base folder of state folders.
        model_dir: a ``--model`` the user named; it must be the plan's (a new model is a new
            generation: ``migrate --target <collection>_csr_v2``).
        options: dry_run, changed_field, progress.

    Raises:
        MigrationError: ``model_dir`` is not the plan's model; and what `sync_migration` raises.
    """
    if model_dir is not None:
        if model_sha(model_dir) != plan.model_sha256:
            raise MigrationError(
                f"model {model_dir} is not the one '{plan.target}' was made with ({plan.model_dir}): a new model is "
                f"a new generation (migrate --target {plan.source}_csr_v2 --model {model_dir})"
            )
    encoder = load_encoder(plan.model_dir, device)
    return sync_migration(store, plan, encoder.encode, state_base=state_base, **options)


def cutover_collection(
    store: Any, plan: MigrationPlan, *, device: str | None, state_base: str | os.PathLike[str] | None,
    alias: str | None, force: bool,
) -> AliasResult:
    """`csr_vdb.migrations.cutover` with a final sync through the plan's encoder (none with ``force``)."""
    encode = None if force else load_encoder(plan.model_dir, device).encode
    return cutover(store, plan, state_base=state_base, alias=alias, force=force, encode=encode)


def evaluate(
    store: Any,
    collection: str,
    target: str | None,
    *,
    model_dir: str | None,
    state_dir: Path,
    store_kind: str,
    uri: str,
    device: str | None,
    **options: Any,
) -> Any:
    """`csr_vdb.collection_eval.evaluate_collection` of ``collection`` against its sparse target.

    ``collection`` may be the alias of a migration: then the rows of its source are sampled and
    the generation the alias points to is searched, with that generation's model (the drift check
    of a live collection).

    Args:
        store: the open store.
        collection: the dense source (the reference), or a migration's alias.
        target: the sparse collection (default `csr_vdb.migrations.default_target`).
        model_dir: the encoder; default the one of this collection's migration.
        state_dir, store_kind, uri: where that migration is recorded.
        device: torch device of the encoder.
        options: sample, top_k, candidates, seed, vector_field, progress, query_projection.
    """
    from csr_vdb.collection_eval import evaluate_collection
    from csr_vdb.migrations import default_target

    store.describe(collection)  # a missing collection is the clearer error (exit 6) than a missing model
    live = store.get_alias(collection) if target is None else None
    if live is not None:
        made = [p for p in plans_for(state_dir, store_kind, uri, collection) if p.alias == collection]
        if made:
            if live == made[-1].source:
                raise ConfigError(f"alias '{collection}' points at the dense source '{live}': cut over first")
            collection, target = made[-1].source, live  # the model: the plan that made `live`
    target = target or default_target(collection)
    encoder = load_encoder(model_for(model_dir, state_dir, store_kind, uri, collection, target), device)
    return evaluate_collection(store, collection, target, encoder, device=device, **options)


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
    """The ``--model`` folder, or the one recorded in the latest migration plan of this collection
    (as its source, target or alias: `csr_vdb.migrations.plans_for`)."""
    if model:
        return model
    found = plans_for(state_dir, store_kind, uri, collection, target)
    if not found:
        raise ConfigError(f"--model is required: no migration of '{collection}' recorded under {state_dir}")
    return str(found[-1].model_dir)


def remove_tree(path: Path) -> None:
    """Delete a folder if it exists (demo re-runs)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
