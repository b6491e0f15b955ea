"""`cutover`, `rollback` and `migration_status`: switch the alias after a passed verify (and a final sync),
move it between generations, and report progress."""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Any

from pydantic import Field

from csr_vdb.store import VectorStore
from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import atomic_write_json
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.lock import holder, is_locked, plan_lock
from csr_vdb.migrations.pipeline import Encode
from csr_vdb.migrations.plan import (
    CUTOVER_FILE,
    JOURNAL_FILE,
    VERIFY_FILE,
    MigrationPlan,
    StateBase,
    plans_for,
    state_dir,
)
from csr_vdb.migrations.report import PlanReport, Report
from csr_vdb.migrations.sync import sync_migration
from csr_vdb.migrations.verify import load_verify, shard_journals_state

log = logging.getLogger(__name__)


class AliasResult(Report):
    """What `cutover` / `rollback` did to the alias."""

    action: str = Field(description="cutover | rollback.")
    alias: str = Field(description="The alias moved.")
    previous: str | None = Field(description="Collection the alias pointed to before (None: it did not exist).")
    current: str = Field(description="Collection the alias points to now.")
    forced: bool = Field(False, description="True when cutover skipped the verify check (--force).")
    verified_at: str | None = Field(None, description="When the verify that allowed the cutover ran.")
    synced: int | None = Field(None, description="Rows the cutover's final sync wrote or deleted (None: no sync ran).")


class Generation(Report):
    """One sparse collection made from a source: a plan of the state dir with that source."""

    target: str = Field(description="The sparse collection.")
    plan_id: str = Field(description="Its plan's id.")
    model_dir: str = Field(description="The encoder it was made with.")
    model_sha256: str = Field(description="That encoder's checksum.")
    state: str = Field(description="not started | incomplete | complete (shard 0 of its plan).")
    rows: int | None = Field(None, description="Rows it holds now (None: the collection does not exist).")
    live: bool = Field(False, description="The alias points at it.")
    created_at: str = Field(description="When its plan was made.")


class StatusReport(PlanReport):
    """Where a migration stands; gathered without writing anything."""

    store_kind: str = Field(description="Store kind.")
    uri: str = Field(description="Store location.")
    state: str = Field(description="not started | running | interrupted | failed | complete.")
    rows_total: int = Field(description="Rows in the source (all shards).")
    rows_scanned: int = Field(0, description="Source rows read so far (progress of the cursor).")
    rows_done: int = Field(0, description="Rows written to the target so far by this shard.")
    rows_skipped_invalid: int = Field(0, description="Rows skipped as invalid.")
    batches: int = Field(0, description="Batches recorded in the journal.")
    percent: float = Field(0.0, description="rows_scanned / rows_total, in percent.")
    rows_per_s: float | None = Field(None, description="Scan rate of the latest run.")
    eta_s: float | None = Field(None, description="Seconds left at that rate (None when unknown or done).")
    last_batch_at: str | None = Field(None, description="When the last batch was recorded (ISO 8601, UTC).")
    last_error: str | None = Field(None, description="Message of the latest run when it failed.")
    target_rows: int | None = Field(None, description="Rows in the target now (None if it does not exist).")
    verify_ok: bool | None = Field(None, description="Result of the last verify (None: never verified).")
    verified_at: str | None = Field(None, description="When the last verify ran.")
    verify_current: bool = Field(False, description="The last verify matches the journals' current state.")
    alias: str = Field(description="The alias reported (the plan's unless asked for another).")
    alias_target: str | None = Field(None, description="Collection the alias points to now.")
    alias_on: str | None = Field(
        None, description="Where the alias points: source, target, other (another collection), None (nowhere)."
    )
    state_dir: str = Field(description="Folder of the plan's state files.")
    last_sync: dict[str, Any] | None = Field(None, description="When the last sync that changed rows ran, its mode "
                                                               "and how many rows it changed.")
    generations: list[Generation] = Field(default_factory=list, description="Every sparse collection made from "
                                          "this source (its plans in the state dir), oldest first.")


def _last_verify(plan: MigrationPlan, state_base: StateBase) -> dict[str, Any] | None:
    """The newest verify.json of any shard of the plan's split (verify covers the union)."""
    reports = []
    for p in plan.shards():
        folder = state_dir(state_base, p)
        rep = load_verify(folder)
        if rep is not None:
            # file times order reports made within the same second (checked_at has seconds)
            reports.append(((folder / VERIFY_FILE).stat().st_mtime_ns, rep))
    return max(reports, key=lambda r: r[0])[1] if reports else None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


def _check_verified(plan: MigrationPlan, report: dict[str, Any] | None, state_base: StateBase) -> None:
    """Raise `MigrationError` unless ``report`` is a passed verify of the journals as they are now."""
    if report is None:
        raise MigrationError(f"cutover refused: '{plan.target}' was never verified (run verify first, or --force)")
    if report.get("source") != plan.source or report.get("target") != plan.target:
        raise MigrationError("cutover refused: the last verify was of another migration (run verify again)")
    if not report.get("ok"):
        first = (report.get("problems") or ["see verify.json"])[0]
        raise MigrationError(f"cutover refused: the last verify failed ({first}); fix it or --force")
    current, _, _, _ = shard_journals_state(plan, state_base)
    if report.get("journal_state") != current:
        raise MigrationError("cutover refused: the migration changed since the last verify (run verify again)")


def _hold_split(plan: MigrationPlan, state_base: StateBase, action: str) -> ExitStack:
    """Hold the lock of every shard of the plan's split that was started here, so that no migration
    into the target runs while the alias moves (and none starts until it has moved).

    A folder that cannot hold a lock file (read-only state) is only probed: refused if a run holds
    it, otherwise passed.

    Raises:
        MigrationError: a migration of the split is running.
    """
    stack = ExitStack()
    for p in plan.shards():
        folder = state_dir(state_base, p)
        if not folder.is_dir():
            continue
        try:
            stack.enter_context(plan_lock(folder, action))
        except MigrationError as exc:
            if not is_locked(folder):
                log.warning("%s without the lock of %s: %s", action, folder, exc)
                continue
            stack.close()
            raise MigrationError(
                f"{action} refused: a migration into '{plan.target}' is running (shard {p.shard}, {holder(folder)}); "
                "wait for it to end"
            ) from None
    return stack


def _point_alias(
    store: VectorStore,
    plan: MigrationPlan,
    alias: str,
    collection: str,
    state_base: StateBase,
    **result: Any,
) -> AliasResult:
    """Move ``alias`` to ``collection`` and record the change in the plan's cutover.json history.

    A failure to record only warns: the alias has moved, and the store is what counts.
    """
    if alias in store.list_collections():
        raise MigrationError(f"cannot use '{alias}' as an alias: a collection has that name in {plan.uri}")
    previous = store.get_alias(alias)
    store.set_alias(alias, collection)
    log.info("alias %s: %s -> %s", alias, previous, collection)
    res = AliasResult(alias=alias, previous=previous, current=collection, **result)
    folder = state_dir(state_base, plan)
    if folder.exists():
        path = folder / CUTOVER_FILE
        try:
            history = json.loads(path.read_text()) if path.exists() else []
            atomic_write_json(path, [*history, {**res.model_dump(), "at": _iso(time.time())}])
        except (OSError, ValueError) as exc:
            log.warning("could not record the alias change in %s: %s", path, exc)
    return res


def _final_sync(store: VectorStore, plan: MigrationPlan, encode: Encode, state_base: StateBase) -> int:
    """Sync every shard of the split, then check that nothing is left to do; returns the rows written.

    The second, dry-run pass is deliberate: writes may arrive while the first one runs, and only a
    pass that finds no difference shows source and target equal just before the alias moves. It
    writes nothing and reads the source against the manifest only.

    Raises:
        MigrationError: source and target still differ after the sync (writes are still arriving).
    """
    written = sum(sync_migration(store, p, encode, state_base=state_base).changes for p in plan.shards())
    left = [sync_migration(store, p, encode, state_base=state_base, dry_run=True) for p in plan.shards()]
    n = sum(r.changes for r in left)
    if n:
        kinds = ", ".join(f"{sum(getattr(r, k) for r in left)} {k.replace('_', ' ')}"
                          for k in ("inserts", "reencodes", "payload_updates", "deletes"))
        raise MigrationError(
            f"cutover refused: '{plan.source}' and '{plan.target}' still differ after a final sync ({kinds}): "
            "writes are still arriving; stop them and run cutover again, or --force"
        )
    return written


def cutover(
    store: VectorStore,
    plan: MigrationPlan,
    *,
    state_base: StateBase,
    alias: str | None = None,
    force: bool = False,
    encode: Encode | None = None,
) -> AliasResult:
    """Point the alias at the target, once the last verify passed for the current journal state and,
    given the encoder, a final sync left source and target equal.

    Refused while a migration into the target runs (even with ``force``). Interrupted at any point
    (even by SIGKILL), it leaves the alias where it was or on the target, never missing: the store
    moves an alias in one atomic step; `migration_status` says where it points, and running
    `cutover` again finishes the job.

    Args:
        store: the open store.
        plan: the migration plan.
        state_base: base folder of state folders.
        alias: alias to move (default ``plan.alias``).
        force: skip the checks (verify and the final sync).
        encode: the plan's document encoder: when given, the writes since the verify are synced
            first and the cutover is refused while source and target still differ.

    Raises:
        MigrationError: never verified, verify failed, or the journals changed since (unless
            ``force``); source and target still differ after the final sync; the target does not
            exist; the alias names a collection; a migration into the target is running.
        StoreError: the store failed.
    """
    report = _last_verify(plan, state_base)
    synced = None
    if not force:
        _check_verified(plan, report, state_base)
        if encode is not None:  # takes (and releases) each shard's lock itself
            synced = _final_sync(store, plan, encode, state_base)
    with _hold_split(plan, state_base, "cutover"):
        if not store.has_collection(plan.target):
            raise MigrationError(f"cutover refused: target collection '{plan.target}' does not exist in {plan.uri}")
        return _point_alias(
            store, plan, alias or plan.alias, plan.target, state_base, action="cutover", forced=force,
            verified_at=report.get("checked_at") if report else None, synced=synced,
        )


def _previous_generation(store: VectorStore, plan: MigrationPlan, alias: str, state_base: StateBase) -> str | None:
    """The collection ``alias`` pointed to before this plan's last cutover, if it still exists."""
    path = state_dir(state_base, plan) / CUTOVER_FILE
    try:
        history = json.loads(path.read_text()) if path.exists() else []
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    cuts = [h for h in history if h.get("action") == "cutover" and h.get("alias") == alias
            and h.get("current") == plan.target]
    previous = cuts[-1].get("previous") if cuts else None
    if previous and previous != plan.target and store.has_collection(previous):
        return previous
    return None


def rollback(
    store: VectorStore, plan: MigrationPlan, *, state_base: StateBase, alias: str | None = None
) -> AliasResult:
    """Point the alias back at the previous generation: the collection it pointed to before this
    plan's last cutover (another sparse generation, a blue/green rollout), else the source (which
    the migration never wrote).

    Refused while a migration into the target runs; atomic like `cutover`.

    Raises:
        MigrationError: the collection to return to no longer exists, the alias names a collection, or
            a migration into the target is running.
        StoreError: the store failed.
    """
    alias = alias or plan.alias
    with _hold_split(plan, state_base, "rollback"):
        back = _previous_generation(store, plan, alias, state_base)
        if back is None and not store.has_collection(plan.source):
            raise MigrationError(f"rollback refused: source collection '{plan.source}' is gone from {plan.uri}")
        return _point_alias(store, plan, alias, back or plan.source, state_base, action="rollback")


def generations(store: VectorStore, plan: MigrationPlan, state_base: StateBase, alias: str) -> list[Generation]:
    """Every sparse collection made from ``plan.source`` in this store (one per target), oldest first."""
    live = store.get_alias(alias)
    out: dict[str, Generation] = {}
    found = plans_for(state_base, plan.store_kind, plan.uri, plan.source)
    for p in sorted((p for p in found if p.source == plan.source and p.shard_index == 0), key=lambda p: p.created_at):
        jpath = state_dir(state_base, p) / JOURNAL_FILE
        state = "not started"
        if jpath.exists():
            with Journal.open(jpath, readonly=True) as j:
                state = "complete" if j.meta().get("completed_at") is not None else "incomplete"
        out[p.target] = Generation(
            target=p.target, plan_id=p.plan_id, model_dir=p.model_dir, model_sha256=p.model_sha256, state=state,
            rows=store.count(p.target) if store.has_collection(p.target) else None, live=live == p.target,
            created_at=p.created_at,
        )
    return list(out.values())


def migration_status(
    store: VectorStore, plan: MigrationPlan, *, state_base: StateBase, alias: str | None = None
) -> StatusReport:
    """Progress, rate, ETA, last verify, last sync and the alias (``plan.alias`` unless another is
    asked for) of one plan, and every generation made from its source; reads only (store and files)."""
    folder = state_dir(state_base, plan)
    jpath = folder / JOURNAL_FILE
    alias = alias or plan.alias
    total = store.count(plan.source) if store.has_collection(plan.source) else 0
    points_to = store.get_alias(alias)
    on = {plan.source: "source", plan.target: "target"}.get(points_to or "", "other" if points_to else None)
    where = dict(
        **StatusReport.about(plan),
        store_kind=plan.store_kind,
        uri=plan.uri,
        rows_total=total,
        target_rows=store.count(plan.target) if store.has_collection(plan.target) else None,
        alias=alias,
        alias_target=points_to,
        alias_on=on,
        state_dir=str(folder),
    )
    where["generations"] = generations(store, plan, state_base, alias)
    if not jpath.exists():
        return StatusReport(**where, state="not started")
    with Journal.open(jpath, readonly=True) as j:
        meta, t, runs, (read, secs) = j.meta(), j.totals(), j.runs(), j.run_rate()
    where["last_sync"] = meta.get("last_sync")
    complete = meta.get("completed_at") is not None
    last = runs[-1] if runs else {}
    if complete:
        state = "complete"
    elif is_locked(folder):
        state = "running"
    elif last.get("outcome") == "failed":
        state = "failed"
    else:
        state = "interrupted"
    rate = read / secs if secs > 0 else None
    left = max(total - t.rows_read, 0)
    eta = left / rate if (rate and not complete and left) else None
    report = _last_verify(plan, state_base)
    return StatusReport(
        **where,
        state=state,
        rows_scanned=t.rows_read,
        rows_done=t.rows_written,
        rows_skipped_invalid=t.rows_invalid,
        batches=t.batches,
        percent=round(100.0 * t.rows_read / total, 2) if total else 0.0,
        rows_per_s=round(rate, 1) if rate else None,
        eta_s=round(eta, 1) if eta is not None else None,
        last_batch_at=_iso(t.last_at),
        last_error=last.get("message") if last.get("outcome") in ("failed", "interrupted") else None,
        verify_ok=report.get("ok") if report else None,
        verified_at=report.get("checked_at") if report else None,
        verify_current=report is not None and report.get("journal_state") == shard_journals_state(plan, state_base)[0],
    )
