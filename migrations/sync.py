"""`sync_migration`: bring a migrated target to the source's current state, at a cost that follows the change.

The migration's journal holds a manifest (`csr_vdb.migrations.manifest`): per row, a hash of the
dense vector and of the payload the target holds. A sync pages the source in id order, compares
each page with the manifest rows of the same ids (the whole page at once first; row by row only
when it differs) and classifies the differences:

- new ids: encoded and upserted;
- a changed dense vector: re-encoded and upserted;
- a changed payload alone: the payload rewritten (`VectorStore.set_payload`), nothing encoded;
- ids gone from the source: deleted from the target.

The target is never read in full: only the rows that differ are fetched from it, to find the ones
an application already wrote there (`csr_vdb.writer.SparseWriter` with dual-write), which are
recorded and counted as already applied. Every write is recorded in the manifest after the store
acknowledged it, so a sync killed anywhere and run again converges (upserts and deletes by id are
idempotent). With ``changed_field``, a payload field that grows with every write (a timestamp, a
version), the source is scanned for ids and that field only, and only the rows at or above the
last sync's watermark are read with their vectors.

A journal written before manifests existed has none: its first sync compares every row with the
target instead (reading both in full, re-encoding the rows to compare codes) and builds the
manifest; later syncs take the fast path. ``repair`` takes that slow path on purpose: sync follows
the source and trusts the manifest for the target, so a target written behind its back (rows
deleted from it or added to it alone, which `verify` reports) is only set right by a repair.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from csr_vdb.errors import DataError, MigrationError, describe_rows
from csr_vdb.fileutil import model_checksum
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.lock import plan_lock
from csr_vdb.migrations.manifest import Manifest, id_key, row_digests
from csr_vdb.migrations.pipeline import Encode, Progress, checked_encoder, encode_rows
from csr_vdb.migrations.plan import JOURNAL_FILE, MigrationPlan, StateBase, state_dir
from csr_vdb.migrations.report import PlanReport
from csr_vdb.migrations.runner import journal_problem
from csr_vdb.migrations.schema import Preflight, check_source_unchanged, check_target_schema
from csr_vdb.sparse import SparseVectors
from csr_vdb.store import Id, VectorStore
from csr_vdb.validation import invalid_dense_rows

log = logging.getLogger(__name__)

_IDS_KEPT = 20  # ids listed per kind of change in a report


class SyncReport(PlanReport):
    """What one `sync_migration` did (or, in a dry run, would do)."""

    status: str = Field(description="synced | nothing to do | dry-run.")
    dry_run: bool = Field(False, description="True when nothing was written.")
    mode: str = Field(description="full (source paged in full) | changed-field | rebuild (no manifest yet, or "
                                   "a repair: every row compared with the target).")
    changed_field: str | None = Field(None, description="Payload field used as the change signal.")
    rows_scanned: int = Field(description="Source rows of this shard listed.")
    rows_read: int = Field(description="Source rows of this shard read with their vectors.")
    inserts: int = Field(description="Rows new in the source (or missing from the target), encoded and upserted.")
    reencodes: int = Field(description="Rows whose dense vector changed, re-encoded and upserted.")
    payload_updates: int = Field(description="Rows whose payload alone changed, rewritten without re-encoding.")
    deletes: int = Field(description="Rows gone from the source (or now invalid), deleted from the target.")
    changes: int = Field(description="inserts + reencodes + payload_updates + deletes.")
    already_applied: int = Field(description="Changed rows the target already held as the source has them "
                                             "(an application's dual-write): recorded, nothing written.")
    skipped_invalid: int = Field(description="Rows newly found with NaN/inf/all-zero vectors, left out (the plan's "
                                             "skip_invalid).")
    invalid_ids: list[Any] = Field(default_factory=list, description="First such ids.")
    changed_ids: list[Any] = Field(default_factory=list, description="First ids written or deleted.")
    watermark: Any = Field(None, description="Highest value of changed_field this sync saw (the next one reads from it).")
    seconds: float = Field(description="Wall time.")
    state_dir: str = Field(description="Folder of the plan's journal.")


@dataclass
class _Counts:
    scanned: int = 0
    read: int = 0
    inserts: int = 0
    reencodes: int = 0
    payload_updates: int = 0
    deletes: int = 0
    already: int = 0
    invalid: int = 0
    invalid_ids: list[Any] = field(default_factory=list)
    changed_ids: list[Any] = field(default_factory=list)

    def note(self, ids: Iterable[Any], into: list[Any]) -> None:
        for i in ids:
            if len(into) >= _IDS_KEPT:
                return
            into.append(i)


def _same_code(stored: tuple[list[int], list[float]] | None, want: tuple[list[int], list[float]]) -> bool:
    if stored is None:
        return False
    return list(stored[0]) == list(want[0]) and np.allclose(stored[1], want[1], rtol=0.0, atol=1e-5)


def _newer(value: Any, mark: Any) -> bool:
    """True unless ``value`` is comparable with the watermark and below it (missing: True)."""
    num = (int, float)
    if isinstance(value, bool) or isinstance(mark, bool):
        return True
    if isinstance(value, num) and isinstance(mark, num):
        return value >= mark
    if isinstance(value, str) and isinstance(mark, str):
        return value >= mark
    return True


class _Sync:
    """One sync's scan: compares pages with the manifest, writes the differences, records them."""

    def __init__(
        self, store: VectorStore, plan: MigrationPlan, encode: Encode, journal: Journal, *, dry_run: bool,
        dense_kept: bool, progress: Progress | None, total: int, trust_manifest: bool = True,
    ) -> None:
        self.store, self.plan, self.encode, self.journal = store, plan, checked_encoder(encode), journal
        self.trust_manifest = trust_manifest
        self.dry_run, self.dense_kept, self.progress, self.total = dry_run, dense_kept, progress, total
        self.manifest = Manifest(journal)
        self.invalid_known = self.manifest.invalid_keys()
        self.n = _Counts()
        self.pending: list[tuple] = []  # (id, key, vector, payload, digests, recorded digests or None)

    # ------------------------------------------------------------------ compare
    def page(self, ids: list[Id], vectors: np.ndarray, payloads: list[dict[str, Any]], *, scanned: bool = True) -> None:
        """Compare source rows with the manifest; the rows that differ wait in a batch, written by `flush`."""
        keep = [n for n, inside in enumerate(self.plan.in_shard(ids)) if inside]
        if scanned:
            self.n.scanned += len(keep)
        self.n.read += len(keep)
        if not keep:
            return
        if len(keep) < len(ids):
            ids, payloads = [ids[n] for n in keep], [payloads[n] for n in keep]
            vectors = np.asarray(vectors)[keep]
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.plan.source_schema.dim:
            raise DataError(f"source '{self.plan.source}' returned vectors of shape {vectors.shape}, "
                            f"expected dimension {self.plan.source_schema.dim}")
        keys = [id_key(i) for i in ids]
        self.manifest.mark_seen(keys)
        digests = row_digests(vectors, payloads)
        known = self.manifest.lookup(keys) if self.trust_manifest else {}
        if len(known) == len(keys) and all(known[k] == d for k, d in zip(keys, digests)):
            return  # the whole page matches what the target holds
        for n, (k, d) in enumerate(zip(keys, digests)):
            old = known.get(k)
            if old is None or old[0] != d[0] or old[1] != d[1]:
                self.pending.append((ids[n], k, vectors[n], payloads[n], d, old))
        if len(self.pending) >= self.plan.batch_size:
            self.flush()

    def flush(self) -> None:
        """Write the waiting rows (one encode and a few store calls for the whole batch), then record them."""
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        ids = [r[0] for r in rows]
        keys = [r[1] for r in rows]
        vectors = np.stack([r[2] for r in rows])
        payloads = [r[3] for r in rows]
        digests = [r[4] for r in rows]
        known = {r[1]: r[5] for r in rows if r[5] is not None}
        vec_rows = [n for n, r in enumerate(rows) if r[5] is None or r[5][0] != r[4][0]]
        pay_rows = [n for n, r in enumerate(rows) if r[5] is not None and r[5][0] == r[4][0]]
        self._apply(ids, keys, vectors, payloads, digests, known, vec_rows, pay_rows)

    def _invalid(self, ids: list[Id], vectors: np.ndarray, rows: list[int]) -> dict[int, str]:
        """Rows (positions) among ``rows`` whose vectors cannot be encoded, with the reason."""
        bad: dict[int, str] = {}
        if rows:
            for reason, found in invalid_dense_rows(vectors[rows]).items():
                for r in found:
                    bad[rows[r]] = reason
        if bad and not self.plan.skip_invalid:
            first = next(iter(bad.values()))
            names = [ids[n] for n in sorted(bad)]
            raise DataError(
                f"source '{self.plan.source}' has {first} vectors at ids {describe_rows(names)}; nothing of this "
                "batch was written (fix the rows, or migrate with --skip-invalid)",
                names,
            )
        return bad

    def _codes(self, vectors: np.ndarray) -> SparseVectors:
        return encode_rows(self.encode, vectors)

    def _dense_same(self, stored: np.ndarray | None, want: np.ndarray) -> bool:
        if not self.dense_kept:
            return True
        return stored is not None and bool(np.allclose(stored, want, rtol=1e-5, atol=1e-6))

    def _apply(
        self, ids: list[Id], keys: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]],
        digests: list[tuple[bytes, bytes]], known: dict[str, Any], vec_rows: list[int], pay_rows: list[int],
    ) -> None:
        bad = self._invalid(ids, vectors, vec_rows)
        vec_rows = [n for n in vec_rows if n not in bad]
        got = {
            r.id: r
            for r in self.store.fetch(self.plan.target, [ids[n] for n in vec_rows + pay_rows],
                                      with_dense=self.dense_kept, with_sparse=True)
        }
        # a payload change of a row the target lost is a full write
        lost = [n for n in pay_rows if ids[n] not in got]
        pay_rows = [n for n in pay_rows if ids[n] in got]
        vec_rows = sorted(vec_rows + lost)
        codes = self._codes(vectors[vec_rows]) if vec_rows else None
        pairs = codes.to_qdrant() if codes is not None else []
        already: list[int] = []
        upsert: list[int] = []
        for j, n in enumerate(vec_rows):
            r = got.get(ids[n])
            same = r is not None and r.payload == payloads[n] and self._dense_same(r.dense, vectors[n])
            (already if same and _same_code(r.sparse, pairs[j]) else upsert).append(n)  # type: ignore[union-attr]
        rewrite: list[int] = []
        for n in pay_rows:
            r = got[ids[n]]
            same = r.payload == payloads[n] and self._dense_same(r.dense, vectors[n])
            (already if same else rewrite).append(n)
        gone_bad = [n for n in bad if keys[n] in known]  # were in the target: now invalid, so removed
        newly_bad = [(ids[n], bad[n]) for n in sorted(bad) if keys[n] not in self.invalid_known]
        again = [keys[n] for n in vec_rows if keys[n] in self.invalid_known]

        if not self.dry_run:
            if upsert:
                row_of = {n: j for j, n in enumerate(vec_rows)}
                at = [row_of[n] for n in upsert]
                self.store.upsert(
                    self.plan.target, [ids[n] for n in upsert], codes[at],  # type: ignore[index]
                    [payloads[n] for n in upsert], dense=vectors[upsert] if self.dense_kept else None,
                    validated=True,  # by _invalid above
                )
            if rewrite:
                missing = set(self.store.set_payload(self.plan.target, [ids[n] for n in rewrite],
                                                     [payloads[n] for n in rewrite]))
                late = [n for n in rewrite if ids[n] in missing]  # deleted from the target meanwhile
                if late:
                    self.store.upsert(self.plan.target, [ids[n] for n in late], self._codes(vectors[late]),
                                      [payloads[n] for n in late], dense=vectors[late] if self.dense_kept else None,
                                      validated=True)  # vectors unchanged since they were written
            if gone_bad:
                self.store.delete(self.plan.target, [ids[n] for n in gone_bad])
            # recorded only now that the store acknowledged every write above
            self.journal.record_sync(
                put=[(keys[n], *digests[n]) for n in upsert + rewrite + already],
                drop=[keys[n] for n in gone_bad],
                invalid=newly_bad,
                valid_again=again,
                changed=len(upsert) + len(rewrite) + len(gone_bad),
            )
            self.invalid_known.update(id_key(i) for i, _ in newly_bad)
            self.invalid_known.difference_update(again)
        self.n.inserts += sum(1 for n in upsert if keys[n] not in known or n in lost)
        self.n.reencodes += sum(1 for n in upsert if keys[n] in known and n not in lost)
        self.n.payload_updates += len(rewrite)
        self.n.deletes += len(gone_bad)
        self.n.already += len(already)
        self.n.invalid += len(newly_bad)
        self.n.note((i for i, _ in newly_bad), self.n.invalid_ids)
        self.n.note((ids[n] for n in sorted(upsert + rewrite + gone_bad)), self.n.changed_ids)

    # ------------------------------------------------------------------ deletions
    def deletions(self) -> None:
        """Delete from the target the recorded rows this sync did not meet in the source."""
        self.flush()
        gone = self.manifest.unseen()
        for a in range(0, len(gone), self.plan.batch_size):
            chunk = gone[a : a + self.plan.batch_size]
            ids = [json.loads(k) for k in chunk]
            present = [r.id for r in self.store.fetch(self.plan.target, ids)]
            if not self.dry_run:
                if present:
                    self.store.delete(self.plan.target, present)
                self.journal.record_sync(drop=list(chunk), changed=len(present))
            self.n.deletes += len(present)
            self.n.already += len(chunk) - len(present)
            self.n.note(present, self.n.changed_ids)
        stale = self.manifest.unseen_invalid()  # skipped rows since deleted from the source
        if stale and not self.dry_run:
            self.journal.record_sync(valid_again=stale)

    def extras(self) -> None:
        """Rebuild only: delete target rows (of this shard) that the source does not hold."""
        for page in self.store.iter_payloads(self.plan.target, self.plan.batch_size, fields=[]):
            ids = [i for i, inside in zip(page.ids, self.plan.in_shard(page.ids)) if inside]
            keys = [id_key(i) for i in ids]
            seen = self.manifest.seen(keys)
            extra = [i for i, k in zip(ids, keys) if k not in seen]
            if extra and not self.dry_run:
                self.store.delete(self.plan.target, extra)
                self.journal.record_sync(changed=len(extra))
            self.n.deletes += len(extra)
            self.n.note(extra, self.n.changed_ids)

    # ------------------------------------------------------------------ scans
    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(min(self.n.scanned, self.total), self.total)

    def full_scan(self) -> None:
        """Page the whole source (this shard's rows) with vectors (no watermark: returns None)."""
        pages = self.store.iter_dense(self.plan.source, self.plan.batch_size, vector_field=self.plan.vector_field)
        for page in pages:
            self.page(page.ids, page.vectors, page.payloads)
            self._tick()
        self.flush()

    def changed_scan(self, name: str, mark: Any) -> Any:
        """Scan ids and field ``name`` of the source; read with vectors only the rows new to the
        manifest or with ``name`` at or above ``mark`` (every row when ``mark`` is None: then the
        full scan follows). Returns the highest value of ``name`` met, the next watermark.

        The watermark is taken from this ids scan, which ends before any row is read: a row
        written later carries a higher value and is read by the next sync.
        """
        top_num: float | None = None
        top_str: str | None = None
        for page in self.store.iter_payloads(self.plan.source, self.plan.batch_size, fields=[name]):
            keep = [n for n, inside in enumerate(self.plan.in_shard(page.ids)) if inside]
            ids = [page.ids[n] for n in keep]
            values = [page.payloads[n].get(name) for n in keep]
            keys = [id_key(i) for i in ids]
            self.manifest.mark_seen(keys)
            self.n.scanned += len(ids)
            for v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    top_num = v if top_num is None else max(top_num, v)
                elif isinstance(v, str):
                    top_str = v if top_str is None else max(top_str, v)
            if mark is not None and ids:
                known = self.manifest.lookup(keys)
                want = [i for i, k, v in zip(ids, keys, values) if k not in known or _newer(v, mark)]
                if want:
                    recs = self.store.fetch(self.plan.source, want, with_dense=True, vector_field=self.plan.vector_field)
                    if recs:
                        self.page([r.id for r in recs], np.stack([r.dense for r in recs]),
                                  [r.payload for r in recs], scanned=False)
            self._tick()
        self.flush()
        if mark is None:
            self.n.scanned = 0
            self.full_scan()
        return top_num if top_num is not None else top_str


def model_sha(model_dir: str | Any) -> str:
    """`csr_vdb.fileutil.model_checksum` of a model folder; `MigrationError` when its files cannot be read."""
    try:
        return model_checksum(model_dir)
    except OSError as exc:
        raise MigrationError(f"cannot read the model files in {model_dir}: {exc.strerror or exc}") from exc


def sync_migration(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    *,
    state_base: StateBase,
    dry_run: bool = False,
    changed_field: str | None = None,
    repair: bool = False,
    progress: Progress | None = None,
) -> SyncReport:
    """Bring the plan's target (this shard) to the source's current state, and record it.

    Args:
        store: the open store.
        plan: the migration plan (`csr_vdb.migrations.find_plan`).
        encode: the plan's document encoder (``model_dir``, checked against ``model_sha256``).
        state_base: base folder of state folders.
        dry_run: count what would change; write nothing (store and state folder untouched).
        changed_field: a payload field that grows with every write of a row (a timestamp, a
            version): only rows at or above the last sync's watermark are read with vectors.
        repair: compare every row with the target, not with the manifest (reads source and
            target in full, re-encodes every row): sets right a target written behind sync's back.
        progress: called as ``progress(rows_scanned, rows_total)``.

    Returns:
        A `SyncReport`.

    Raises:
        MigrationError: never migrated here, migration not complete, model files other than the
            plan's, source schema changed (dimension, id type), target gone, another process
            running the plan.
        DataError: invalid source rows (unless the plan skips them); the batches before are
            written and recorded.
        StoreError: the store failed.
    """
    t0 = time.monotonic()
    folder = state_dir(state_base, plan)
    jpath = folder / JOURNAL_FILE
    if not jpath.exists():
        raise MigrationError(
            f"'{plan.source}' -> '{plan.target}' was never migrated here (no journal in {folder}): run migrate first"
        )
    sha = model_sha(plan.model_dir)
    if sha != plan.model_sha256:
        raise MigrationError(
            f"the model files in {plan.model_dir} changed since the migration (checksum {sha[:12]}, plan "
            f"{plan.model_sha256[:12]}): a new model is a new generation (migrate --target {plan.source}_csr_v2)"
        )
    pre = Preflight.read(store, plan.source, plan.target)
    check_source_unchanged(pre.source, plan.source_schema, plan.source)
    if pre.target is None:
        raise MigrationError(f"target collection '{plan.target}' does not exist in {plan.uri}: migrate again")
    check_target_schema(pre.target, plan.source_schema, plan.keep_dense, plan.uri)
    dense_kept = plan.vector_field in pre.target.vector_fields
    if dry_run:
        with Journal.open(jpath, readonly=True) as journal:
            return _sync(store, plan, encode, journal, jpath, dry_run=True, dense_kept=dense_kept,
                         changed_field=changed_field, repair=repair, progress=progress, total=pre.source.count, t0=t0)
    with plan_lock(folder), Journal.open(jpath) as journal:
        return _sync(store, plan, encode, journal, jpath, dry_run=False, dense_kept=dense_kept,
                     changed_field=changed_field, repair=repair, progress=progress, total=pre.source.count, t0=t0)


def _sync(
    store: VectorStore, plan: MigrationPlan, encode: Encode, journal: Journal, jpath: Any, *, dry_run: bool,
    dense_kept: bool, changed_field: str | None, repair: bool, progress: Progress | None, total: int, t0: float,
) -> SyncReport:
    meta = journal.meta()
    problem = journal_problem(meta, plan, jpath)
    if problem:
        raise MigrationError(f"{problem}; refusing to sync")
    if meta.get("completed_at") is None:
        raise MigrationError(
            f"the migration '{plan.source}' -> '{plan.target}' (shard {plan.shard}) is not complete: "
            "finish it first (migrate --resume)"
        )
    rebuild = repair or not meta.get("manifest")
    mark = meta.get("sync_watermark") or {}
    old_mark = mark.get("value") if changed_field and mark.get("field") == changed_field and not rebuild else None
    mode = "rebuild" if rebuild else ("changed-field" if changed_field else "full")
    job = _Sync(store, plan, encode, journal, dry_run=dry_run, dense_kept=dense_kept, progress=progress, total=total,
                trust_manifest=not repair)
    new_mark = job.changed_scan(changed_field, old_mark) if changed_field else job.full_scan()
    job.deletions()
    if rebuild:
        job.extras()
    n = job.n
    changes = n.inserts + n.reencodes + n.payload_updates + n.deletes
    if not dry_run:
        # a sync with nothing to do leaves the journal as it was
        done: dict[str, Any] = {"last_sync": {"at": time.time(), "mode": mode, "changes": changes}} if changes else {}
        if rebuild:
            done["manifest"] = 1
        if changed_field and new_mark is not None and new_mark != old_mark:
            done["sync_watermark"] = {"field": changed_field, "value": new_mark}
        if done:
            journal.set_meta(**done)
    status = "dry-run" if dry_run else ("synced" if changes else "nothing to do")
    log.info("sync %s -> %s: %s (%d changes)", plan.source, plan.target, status, changes)
    return SyncReport(
        **SyncReport.about(plan), status=status, dry_run=dry_run, mode=mode, changed_field=changed_field,
        rows_scanned=n.scanned, rows_read=n.read, inserts=n.inserts, reencodes=n.reencodes,
        payload_updates=n.payload_updates, deletes=n.deletes, changes=changes, already_applied=n.already,
        skipped_invalid=n.invalid, invalid_ids=n.invalid_ids, changed_ids=n.changed_ids, watermark=new_mark,
        seconds=round(time.monotonic() - t0, 3), state_dir=str(jpath.parent),
    )
