"""`run_migration`: page the source, validate, encode, upsert, journal — resumable, overlapped I/O."""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from csr_vdb.adapters.base import DensePage, VectorStore
from csr_vdb.errors import DataError, MigrationError, describe_rows
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.plan import (
    JOURNAL_FILE,
    LOCK_FILE,
    PLAN_FILE,
    MigrationPlan,
    SourceSchema,
    check_target_schema,
    state_dir,
)
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import invalid_dense_rows

log = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], SparseVectors]
Progress = Callable[[int, int], None]

_QUEUE_DEPTH = 2  # pages in flight between reader -> encoder -> writer (bounded memory)
_POLL_S = 0.2


class MigrationResult(BaseModel):
    """What one call of `run_migration` did."""

    model_config = ConfigDict(extra="forbid")

    plan_id: str = Field(description="The plan's id.")
    source: str = Field(description="Source collection.")
    target: str = Field(description="Target collection.")
    shard: str = Field(description="Shard i/n.")
    status: str = Field(description="complete | dry-run.")
    dry_run: bool = Field(description="True when nothing was written.")
    resumed: bool = Field(description="True when the run continued an existing journal.")
    resumed_after: Any = Field(None, description="Cursor (id) the run continued after, if any.")
    rows_total: int = Field(description="Rows in the source collection (all shards).")
    rows_read: int = Field(description="Source rows scanned by this run.")
    rows_written: int = Field(description="Rows upserted into the target by this run (dry run: rows that would be).")
    rows_skipped_invalid: int = Field(description="Rows skipped as invalid by this run.")
    invalid_ids: list[Any] = Field(default_factory=list, description="First skipped ids (up to 100).")
    batches: int = Field(description="Batches processed by this run.")
    rows_done: int = Field(description="Rows written to the target over all runs of this plan.")
    seconds: float = Field(description="Wall time of this run.")
    rows_per_s: float = Field(description="Source rows scanned per second in this run.")
    avg_nnz: float | None = Field(None, description="Mean non-zeros per sparse vector written (or encoded, dry run).")
    flush_s: float = Field(0.0, description="Seconds of the final flush (index build) inside `seconds`.")
    target_created: bool = Field(False, description="True when this run created the target collection.")
    state_dir: str | None = Field(None, description="Folder of plan.json / journal.sqlite (None for a dry run).")


@dataclass
class _Batch:
    cursor: Any
    rows_read: int
    ids: list
    vectors: np.ndarray | None
    payloads: list
    codes: SparseVectors | None
    invalid: list[tuple[Any, str]]


class _Stop(Exception):
    """Internal: another stage failed; unwind quietly."""


def _current_schema(store: VectorStore, plan: MigrationPlan) -> SourceSchema:
    info = store.describe(plan.source)
    fields = dict(info.vector_fields) or {info.vector_field: info.dimension}
    if plan.vector_field not in fields:
        raise MigrationError(
            f"source collection '{plan.source}' no longer has vector field '{plan.vector_field}'"
        )
    return SourceSchema(
        dim=int(fields[plan.vector_field]),
        metric=str(info.metric),
        id_type=info.id_type,
        vector_field=plan.vector_field,
    )


def check_source_unchanged(store: VectorStore, plan: MigrationPlan) -> None:
    """Raise `MigrationError` if the source's schema differs from the one captured in the plan."""
    now = _current_schema(store, plan)
    if now != plan.source_schema:
        raise MigrationError(
            f"source collection '{plan.source}' changed schema since the plan was made "
            f"(was {plan.source_schema.model_dump()}, now {now.model_dump()})"
        )


@contextmanager
def plan_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the plan's state folder so two workers never run one plan."""
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise MigrationError(f"another process is running this migration (lock {path})") from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock


def is_locked(folder: Path) -> bool:
    """True while a migration process holds the plan's lock (read-only probe)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _prepare(page: DensePage, plan: MigrationPlan, encode: Encode | None) -> _Batch:
    """Filter a page to this shard, validate it and encode it (raises DataError by default)."""
    keep = plan.in_shard(page.ids)
    idx = [n for n, k in enumerate(keep) if k]
    ids = [page.ids[n] for n in idx]
    vectors = np.asarray(page.vectors, dtype=np.float32)[idx] if idx else None
    payloads = [page.payloads[n] for n in idx]
    invalid: list[tuple[Any, str]] = []
    if vectors is not None:
        if vectors.ndim != 2 or vectors.shape[1] != plan.source_schema.dim:
            raise DataError(
                f"source '{plan.source}' returned vectors of shape {vectors.shape}, "
                f"expected dimension {plan.source_schema.dim}"
            )
        problems = invalid_dense_rows(vectors)
        if problems:
            bad = sorted({r for rows in problems.values() for r in rows})
            if not plan.skip_invalid:
                reason, rows = next(iter(problems.items()))
                names = [ids[r] for r in rows]
                raise DataError(
                    f"source '{plan.source}' has {reason} vectors at ids {describe_rows(names)}; "
                    "nothing of this batch was written (fix the rows or pass --skip-invalid)",
                    names,
                )
            reasons = {r: reason for reason, rows in problems.items() for r in rows}
            invalid = [(ids[r], reasons[r]) for r in bad]
            bad_set = set(bad)
            good = [r for r in range(len(ids)) if r not in bad_set]
            ids = [ids[r] for r in good]
            payloads = [payloads[r] for r in good]
            vectors = vectors[good] if good else None
    codes = None
    if vectors is not None and encode is not None:
        codes = encode(vectors)
        if not isinstance(codes, SparseVectors) or len(codes) != len(ids):
            raise DataError(
                f"encoder returned {len(codes) if isinstance(codes, SparseVectors) else type(codes).__name__}"
                f" sparse vectors for {len(ids)} rows"
            )
        codes.validate(ids)
    return _Batch(page.cursor, len(page), ids, vectors, payloads, codes, invalid)


def run_migration(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    *,
    state_base: str | os.PathLike[str] | None,
    resume: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MigrationResult:
    """Migrate (this shard of) the source into the sparse target, recording each batch.

    A reader thread prefetches source pages, the calling thread validates and encodes, a writer
    thread upserts and then records the batch in the journal, so I/O and encoding overlap. A
    batch is journaled only after the store acknowledged it; a crash in between repeats at most
    that batch on resume (upserts are idempotent by id).

    Args:
        store: the open store (source and target live in it).
        plan: the migration plan (`MigrationPlan.create`).
        encode: dense ``[n, dim]`` float32 -> `SparseVectors` of n rows (the document encoder).
        state_base: base folder of state folders (None = ``./.csr-vdb``).
        resume: continue an existing journal (refused for another plan, model or source schema).
        dry_run: read, validate and encode the first batch only; write nothing anywhere.
        progress: called as ``progress(rows_scanned, rows_total)`` after each batch.

    Returns:
        A `MigrationResult`.

    Raises:
        MigrationError: journal exists without ``resume``, journal of another plan/model/schema,
            target collision, journal unwritable, another process running the plan.
        DataError: invalid source rows (unless ``plan.skip_invalid``) or a bad encoder output.
        StoreError: the store failed.
    """
    t0 = time.monotonic()
    check_source_unchanged(store, plan)
    total = store.count(plan.source)
    if dry_run:
        return _dry_run(store, plan, encode, total, t0, progress)

    folder = state_dir(state_base, plan)
    jpath = folder / JOURNAL_FILE
    if jpath.exists() and not resume:
        raise MigrationError(
            f"a journal for this migration already exists in {folder}: pass --resume to continue it "
            "(or delete that folder and drop the target to start over)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MigrationError(f"cannot create state folder {folder}: {exc.strerror or exc}") from exc

    with plan_lock(folder):
        resumed = jpath.exists()
        if resumed:
            journal = Journal.open(jpath)
            try:
                _check_resume(journal, plan, jpath)
            except BaseException:
                journal.close()
                raise
        else:
            if store.has_collection(plan.target):
                check_target_schema(store, plan.target, plan.source_schema, plan.keep_dense, plan.uri)
                n = store.count(plan.target)
                # Other shards of the same split write into the same target: not a collision.
                if n and plan.shard_count == 1:
                    raise MigrationError(
                        f"target collection '{plan.target}' already exists with {n} rows in {plan.uri} "
                        "and no journal of this migration: drop it or choose another target"
                    )
            plan.save(folder / PLAN_FILE)
            journal = Journal.create(
                jpath,
                {
                    "plan_id": plan.plan_id,
                    "model_sha256": plan.model_sha256,
                    "source_schema": plan.source_schema.model_dump(),
                    "source_count": total,
                    "created_at": time.time(),
                },
            )
        try:
            return _run(store, plan, encode, journal, folder, resumed, total, t0, progress)
        finally:
            journal.close()


def _check_resume(journal: Journal, plan: MigrationPlan, jpath: Path) -> None:
    meta = journal.meta()
    if meta.get("plan_id") != plan.plan_id:
        raise MigrationError(
            f"journal {jpath} belongs to another plan ({meta.get('plan_id')}, this plan is {plan.plan_id}); "
            "refusing to resume"
        )
    if meta.get("model_sha256") != plan.model_sha256:
        raise MigrationError(
            f"model changed since the migration started (journal {jpath} was written with model "
            f"{str(meta.get('model_sha256'))[:12]}, now {plan.model_sha256[:12]}); refusing to resume"
        )
    if meta.get("source_schema") != plan.source_schema.model_dump():
        raise MigrationError(
            f"source schema changed since the migration started (journal {jpath}); refusing to resume"
        )


def _reader(
    store: VectorStore, plan: MigrationPlan, after: Any, out: queue.Queue, stop: threading.Event
) -> None:
    """Prefetch source pages into ``out``; ends with None, or with the exception it met."""
    try:
        for page in store.iter_dense(plan.source, plan.batch_size, after=after, vector_field=plan.vector_field):
            while not stop.is_set():
                try:
                    out.put(page, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        item: Any = None
    except BaseException as exc:  # handed to the main thread, which re-raises it
        item = exc
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _run(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    journal: Journal,
    folder: Path,
    resumed: bool,
    total: int,
    t0: float,
    progress: Progress | None,
) -> MigrationResult:
    before = journal.totals()
    meta = journal.meta()
    if resumed and before.rows_written and not store.has_collection(plan.target):
        raise MigrationError(
            f"target collection '{plan.target}' was dropped after {before.rows_written} rows were migrated; "
            f"delete the state folder {folder} to start over"
        )
    stats = {"read": 0, "written": 0, "invalid": 0, "batches": 0, "nnz": 0}
    invalid_ids: list[Any] = []
    scanned = before.rows_read
    if meta.get("completed_at") is not None:
        log.info("migration %s is already complete", plan.plan_id)
        return _result(plan, False, resumed, before, total, stats, invalid_ids, journal, t0, False, folder)

    run = journal.start_run("resume" if resumed else "fresh")
    created = False
    if not store.has_collection(plan.target):
        store.create_sparse_collection(
            plan.target, like=plan.source, keep_dense=plan.keep_dense, vector_field=plan.vector_field
        )
        created = True
    else:
        check_target_schema(store, plan.target, plan.source_schema, plan.keep_dense, plan.uri)

    pages: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    batches: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop_read = threading.Event()
    abort_write = threading.Event()
    write_error: list[BaseException] = []

    def writer() -> None:
        nonlocal scanned
        while True:
            try:
                b = batches.get(timeout=_POLL_S)
            except queue.Empty:
                if abort_write.is_set():
                    return
                continue
            if b is None or abort_write.is_set():
                return
            try:
                if b.ids:
                    store.upsert(
                        plan.target,
                        b.ids,
                        b.codes,
                        b.payloads,
                        dense=b.vectors if plan.keep_dense else None,
                    )
                # Only now, after the store acknowledged the write, is the batch recorded.
                journal.record_batch(
                    run=run, cursor=b.cursor, written_ids=b.ids, rows_read=b.rows_read, invalid=b.invalid
                )
                stats["read"] += b.rows_read
                stats["written"] += len(b.ids)
                stats["invalid"] += len(b.invalid)
                stats["batches"] += 1
                if b.codes is not None:
                    stats["nnz"] += int(b.codes.nnz().sum())
                invalid_ids.extend(i for i, _ in b.invalid[: max(0, 100 - len(invalid_ids))])
                scanned += b.rows_read
                if progress is not None:
                    progress(scanned, total)
            except BaseException as exc:  # incl. KeyboardInterrupt from a progress callback
                write_error.append(exc)
                return

    reader = threading.Thread(
        target=_reader, args=(store, plan, before.cursor, pages, stop_read), name="csr-vdb-reader", daemon=True
    )
    wthread = threading.Thread(target=writer, name="csr-vdb-writer", daemon=True)
    reader.start()
    wthread.start()
    outcome, message = "failed", None
    try:
        while True:
            page = _get(pages, write_error)
            if page is None:
                break
            if isinstance(page, BaseException):
                raise page
            batch = _prepare(page, plan, encode)
            _put(batches, batch, write_error, wthread)
        _put(batches, None, write_error, wthread)  # drain: the writer finishes every queued batch
        wthread.join()
        if write_error:
            raise write_error[0]
        tf = time.monotonic()
        store.flush(plan.target)
        stats["flush_s"] = time.monotonic() - tf
        journal.set_meta(completed_at=time.time())
        outcome = "complete"
    except _Stop:
        stop_read.set()
        wthread.join()
        exc = write_error[0]
        interrupted = isinstance(exc, KeyboardInterrupt)
        outcome, message = ("interrupted" if interrupted else "failed"), (str(exc) or type(exc).__name__)
        raise exc from None
    except DataError as exc:
        # Earlier (valid) batches are still written and journaled, so a resume after fixing
        # the data continues right before the offending batch.
        stop_read.set()
        _put_nowait_drain(batches, wthread)
        wthread.join()
        message = str(exc)
        if write_error:
            raise write_error[0] from exc
        raise
    except BaseException as exc:
        stop_read.set()
        abort_write.set()
        wthread.join()
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = str(exc) or type(exc).__name__
        raise
    finally:
        stop_read.set()
        reader.join(timeout=5)
        try:
            journal.end_run(run, outcome, message)
        except MigrationError as exc:  # the run's own outcome matters more than its log line
            log.warning("%s", exc)
    return _result(plan, False, resumed, before, total, stats, invalid_ids, journal, t0, created, folder)


def _get(q: queue.Queue, write_error: list) -> Any:
    while True:
        if write_error:
            raise _Stop()
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def _put(q: queue.Queue, item: Any, write_error: list, writer: threading.Thread) -> None:
    while True:
        if write_error:
            raise _Stop()
        if not writer.is_alive():
            raise MigrationError("the writer thread ended unexpectedly")
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _put_nowait_drain(q: queue.Queue, wthread: threading.Thread) -> None:
    """Queue the end marker behind the batches already waiting (the writer drains them)."""
    while wthread.is_alive():
        try:
            q.put(None, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _result(plan, dry, resumed, before, total, stats, invalid_ids, journal, t0, created, folder) -> MigrationResult:
    secs = time.monotonic() - t0
    done = journal.totals().rows_written if journal is not None else 0
    return MigrationResult(
        plan_id=plan.plan_id,
        source=plan.source,
        target=plan.target,
        shard=plan.shard,
        status="dry-run" if dry else "complete",
        dry_run=dry,
        resumed=resumed,
        resumed_after=before.cursor if before is not None else None,
        rows_total=total,
        rows_read=stats["read"],
        rows_written=stats["written"],
        rows_skipped_invalid=stats["invalid"],
        invalid_ids=invalid_ids,
        batches=stats["batches"],
        rows_done=done,
        seconds=round(secs, 3),
        rows_per_s=round(stats["read"] / secs, 1) if secs > 0 else 0.0,
        avg_nnz=round(stats["nnz"] / stats["written"], 2) if stats["written"] else None,
        flush_s=round(stats.get("flush_s", 0.0), 3),
        target_created=created,
        state_dir=str(folder) if folder is not None else None,
    )


def _dry_run(
    store: VectorStore, plan: MigrationPlan, encode: Encode, total: int, t0: float, progress: Progress | None
) -> MigrationResult:
    """Read and validate every page of this shard, encode the first batch; write nothing."""
    if store.has_collection(plan.target):
        check_target_schema(store, plan.target, plan.source_schema, plan.keep_dense, plan.uri)
    stats = {"read": 0, "written": 0, "invalid": 0, "batches": 0, "nnz": 0}
    invalid_ids: list[Any] = []
    encoded = 0
    for page in store.iter_dense(plan.source, plan.batch_size, vector_field=plan.vector_field):
        b = _prepare(page, plan, encode if encoded == 0 else None)
        if b.codes is not None:
            encoded = len(b.codes)
            stats["nnz"] = int(b.codes.nnz().sum())
        stats["read"] += b.rows_read
        stats["written"] += len(b.ids)  # rows that would be written
        stats["invalid"] += len(b.invalid)
        stats["batches"] += 1
        invalid_ids.extend(i for i, _ in b.invalid[: max(0, 100 - len(invalid_ids))])
        if progress is not None:
            progress(stats["read"], total)
    res = _result(plan, True, False, None, total, stats, invalid_ids, None, t0, False, None)
    return res.model_copy(update={"avg_nnz": round(stats["nnz"] / encoded, 2) if encoded else None})
