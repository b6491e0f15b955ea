"""`run_migration`: check the store once, open the journal, run the pipeline, report the run."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from csr_vdb.store import VectorStore
from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import private_dir, probe_space
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.lock import plan_lock
from csr_vdb.migrations.pipeline import Encode, Pipeline, Progress, Tally, checked_encoder, prepare_batch
from csr_vdb.migrations.plan import (
    JOURNAL_FILE,
    PLAN_FILE,
    MigrationPlan,
    StateBase,
    check_plan_file,
    state_dir,
)
from csr_vdb.migrations.report import PlanReport
from csr_vdb.migrations.schema import Preflight, check_source_unchanged, check_target_schema

log = logging.getLogger(__name__)


class MigrationResult(PlanReport):
    """What one call of `run_migration` did."""

    status: str = Field(description="complete | dry-run.")
    dry_run: bool = Field(False, description="True when nothing was written.")
    resumed: bool = Field(False, description="True when the run continued an existing journal.")
    resumed_after: Any = Field(None, description="Cursor (id) the run continued after, if any.")
    rows_total: int = Field(description="Rows in the source collection (all shards).")
    rows_read: int = Field(description="Source rows scanned by this run.")
    rows_written: int = Field(description="Rows upserted into the target by this run (dry run: rows that would be).")
    rows_skipped_invalid: int = Field(description="Rows skipped as invalid by this run.")
    invalid_ids: list[Any] = Field(default_factory=list, description="First skipped ids (up to 100).")
    batches: int = Field(description="Batches processed by this run.")
    rows_done: int = Field(0, description="Rows written to the target over all runs of this plan.")
    seconds: float = Field(description="Wall time of this run.")
    rows_per_s: float = Field(description="Source rows scanned per second in this run.")
    avg_nnz: float | None = Field(None, description="Mean non-zeros per sparse vector written (or encoded, dry run).")
    flush_s: float = Field(0.0, description="Seconds of the final flush (index build) inside `seconds`.")
    target_created: bool = Field(False, description="True when this run created the target collection.")
    state_dir: str | None = Field(None, description="Folder of plan.json / journal.sqlite (None for a dry run).")

    @classmethod
    def of(cls, plan: MigrationPlan, tally: Tally, *, rows_total: int, t0: float, **run: Any) -> MigrationResult:
        """The result of a run of ``plan`` that counted ``tally`` and started at ``time.monotonic() == t0``.

        ``run``: the fields that describe the run itself (dry_run, resumed, rows_done, ...).
        """
        secs = time.monotonic() - t0
        return cls(
            **cls.about(plan),
            status="dry-run" if run.get("dry_run") else "complete",
            rows_total=rows_total,
            rows_read=tally.rows_read,
            rows_written=tally.rows_written,
            rows_skipped_invalid=tally.rows_invalid,
            invalid_ids=tally.invalid_ids,
            batches=tally.batches,
            seconds=round(secs, 3),
            rows_per_s=round(tally.rows_read / secs, 1) if secs > 0 else 0.0,
            avg_nnz=tally.avg_nnz,
            flush_s=round(tally.flush_s, 3),
            **run,
        )


def run_migration(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    *,
    state_base: StateBase,
    resume: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    preflight: Preflight | None = None,
) -> MigrationResult:
    """Migrate (this shard of) the source into the sparse target, recording each batch.

    A reader thread prefetches source pages, the calling thread validates and encodes, a writer
    thread upserts and then records the batch in the journal, so I/O and encoding overlap
    (`csr_vdb.migrations.pipeline`).

    The source and the target are described once (the store caches their layouts), and each
    row validated once: dense rows in `prepare_batch` before encoding (the encoder and the
    store's write are told so: `checked_encoder`, ``upsert(validated=True)``), sparse codes by
    the store's write (a dry run checks them in `prepare_batch`).

    Args:
        store: the open store (source and target live in it).
        plan: the migration plan (`MigrationPlan.create`).
        encode: dense ``[n, dim]`` float32 -> `SparseVectors` of n rows (the document encoder).
        state_base: base folder of state folders (None = ``./.csr-vdb``).
        resume: continue an existing journal (refused for another plan, model or source schema).
        dry_run: read and validate every page of this shard, encode the first batch; write nothing.
        progress: called as ``progress(rows_scanned, rows_total)`` after each batch.
        preflight: what `plan_migration` returned with ``plan``, just now: the store was checked
            against the plan then, so it is not described again. None (a saved plan) checks it here.

    Returns:
        A `MigrationResult`.

    Raises:
        MigrationError: journal exists without ``resume``, journal of another plan/model/schema,
            source schema changed, target collision, journal unwritable, another process running
            the plan.
        DataError: invalid source rows (unless ``plan.skip_invalid``) or a bad encoder output.
        StoreError: the store failed.
    """
    t0 = time.monotonic()
    pre = preflight
    if pre is None:
        pre = Preflight.read(store, plan.source, plan.target)
        check_source_unchanged(pre.source, plan.source_schema, plan.source)
        if pre.target is not None:
            check_target_schema(pre.target, plan.source_schema, plan.keep_dense, plan.uri)
    if dry_run:
        return _dry_run(store, plan, encode, pre.source.count, t0, progress)
    folder = state_dir(state_base, plan)
    jpath = folder / JOURNAL_FILE
    try:
        private_dir(folder)
    except OSError as exc:
        raise MigrationError(
            f"cannot create state folder {folder}: {exc.strerror or exc} (choose a writable --state-dir)"
        ) from exc
    # The lock first: a second run of this plan is refused as such, whatever state the first is in.
    with plan_lock(folder):
        resumed = jpath.exists()
        if resumed and not resume:
            raise MigrationError(
                f"a journal for this migration already exists in {folder}: pass --resume to continue it "
                "(or delete that folder and drop the target to start over)"
            )
        journal = _resume_journal(jpath, plan) if resumed else None
        try:
            # Everything the state folder must hold is checked before anything is written to the target.
            _check_room(folder, plan, pre, journal)
            if journal is None:
                journal = _new_journal(folder, plan, pre)
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        try:
            return _run(store, plan, encode, journal, pre, folder=folder, resumed=resumed, t0=t0,
                        progress=progress)
        finally:
            journal.close()


def _new_journal(folder: Path, plan: MigrationPlan, pre: Preflight) -> Journal:
    """Save the plan and start its journal, unless the target already holds another migration's rows."""
    # Other shards of the same split write into the same target: not a collision.
    if pre.target is not None and pre.target.count and plan.shard_count == 1:
        raise MigrationError(
            f"target collection '{plan.target}' already exists with {pre.target.count} rows in {plan.uri} "
            "and no journal of this migration: drop it or choose another target"
        )
    try:
        plan.save(folder / PLAN_FILE)
    except OSError as exc:
        raise MigrationError(f"cannot write the plan in {folder}: {exc.strerror or exc}{_ROOM_HINT}") from exc
    return Journal.create(
        folder / JOURNAL_FILE,
        {
            "plan_id": plan.plan_id,
            "model_sha256": plan.model_sha256,
            "source_schema": plan.source_schema.model_dump(),
            "source_count": pre.source.count,
            "created_at": time.time(),
            "manifest": 1,  # every batch records its rows' hashes (csr_vdb.migrations.manifest)
            "plan": plan.model_dump(mode="json"),  # plan.json as written, to check and restore it
        },
    )


_ROOM_HINT = " (free space or make the state folder writable, then run again)"
_JOURNAL_BYTES_PER_BATCH = 8 * 1024  # a batch's row, its index entry and its WAL pages
_JOURNAL_BYTES_PER_ROW = 128  # a row's manifest entry (id and two hashes) with its index
_PROBE_MIN, _PROBE_MAX = 256 * 1024, 64 * 1024**2


def _check_room(folder: Path, plan: MigrationPlan, pre: Preflight, journal: Journal | None) -> None:
    """Refuse to start unless the state folder takes the journal's expected growth (this shard's
    batches left): a full disk, a quota, a file-size limit or a read-only folder is met here, before
    anything is written to the target, not after the first batches."""
    done = journal.totals().rows_read if journal is not None else 0
    left = max(pre.source.count - done, 0)
    batches = math.ceil(left / plan.batch_size) + 1
    need = batches * _JOURNAL_BYTES_PER_BATCH + math.ceil(left / plan.shard_count) * _JOURNAL_BYTES_PER_ROW
    need = min(max(need, _PROBE_MIN), _PROBE_MAX)
    try:
        probe_space(folder, need)
    except OSError as exc:
        raise MigrationError(
            f"state folder {folder} cannot take the migration journal ({need // 1024} KiB): "
            f"{exc.strerror or exc}{_ROOM_HINT}"
        ) from exc


def journal_problem(meta: dict[str, Any], plan: MigrationPlan, jpath: Path) -> str | None:
    """Why a journal (its meta) cannot be continued under ``plan`` (another plan, model or source
    schema), or None when it can."""
    if meta.get("plan_id") != plan.plan_id:
        return f"journal {jpath} belongs to another plan ({meta.get('plan_id')}, this plan is {plan.plan_id})"
    if meta.get("model_sha256") != plan.model_sha256:
        return (
            f"model changed since the migration started (journal {jpath} was written with model "
            f"{str(meta.get('model_sha256'))[:12]}, now {plan.model_sha256[:12]})"
        )
    if meta.get("source_schema") != plan.source_schema.model_dump():
        return f"source schema changed since the migration started (journal {jpath})"
    return None


def _resume_journal(jpath: Path, plan: MigrationPlan) -> Journal:
    """Open an existing journal, refusing a damaged one, one of another plan, model or source
    schema, and a plan file changed by hand."""
    journal = Journal.open(jpath)
    try:
        check_plan_file(jpath.parent, journal.meta().get("plan"), restore=True)
    except BaseException:
        journal.close()
        raise
    problem = journal_problem(journal.meta(), plan, jpath)
    if problem:
        journal.close()
        raise MigrationError(f"{problem}; refusing to resume")
    return journal


def _run(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    journal: Journal,
    pre: Preflight,
    *,
    folder: Path,
    resumed: bool,
    t0: float,
    progress: Progress | None,
) -> MigrationResult:
    before = journal.totals()
    if resumed and before.rows_written and pre.target is None:
        raise MigrationError(
            f"target collection '{plan.target}' was dropped after {before.rows_written} rows were migrated; "
            f"delete the state folder {folder} to start over"
        )
    tally = Tally()
    total = pre.source.count

    def result(created: bool) -> MigrationResult:
        return MigrationResult.of(
            plan, tally, rows_total=total, t0=t0, resumed=resumed, resumed_after=before.cursor,
            rows_done=journal.totals().rows_written, target_created=created, state_dir=str(folder),
        )

    if journal.meta().get("completed_at") is not None:
        log.info("migration %s is already complete", plan.plan_id)
        return result(False)
    run = journal.start_run("resume" if resumed else "fresh")
    created = pre.target is None
    if created:
        store.create_sparse_collection(
            plan.target, like=plan.source, keep_dense=plan.keep_dense, vector_field=plan.vector_field
        )
    outcome, message = "failed", None
    try:
        Pipeline(store, plan, encode, journal, run, tally, scanned=before.rows_read, total=total,
                 progress=progress).run(before.cursor)
        tf = time.monotonic()
        store.flush(plan.target)
        tally.flush_s = time.monotonic() - tf
        journal.set_meta(completed_at=time.time())
        outcome = "complete"
    except BaseException as exc:
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = str(exc) or type(exc).__name__
        raise
    finally:
        try:
            journal.end_run(run, outcome, message)
        except MigrationError as exc:  # the run's own outcome matters more than its log line
            log.info("%s", exc)
    return result(created)


def _dry_run(
    store: VectorStore, plan: MigrationPlan, encode: Encode, total: int, t0: float, progress: Progress | None
) -> MigrationResult:
    """Read and validate every page of this shard, encode (and check) the first batch; write nothing."""
    tally = Tally()
    encode = checked_encoder(encode)
    for page in store.iter_dense(plan.source, plan.batch_size, vector_field=plan.vector_field):
        tally.add(prepare_batch(page, plan, None if tally.encoded else encode, check_codes=True))
        if progress is not None:
            progress(tally.rows_read, total)
    return MigrationResult.of(plan, tally, rows_total=total, t0=t0, dry_run=True)
