"""`verify_migration`: prove the target holds exactly the source's rows, re-encoded, and measure recall."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from csr_vdb.store import VectorStore
from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import atomic_write_json
from csr_vdb.migrations.journal import Journal, ids_hash
from csr_vdb.migrations.pipeline import Encode, Progress
from csr_vdb.migrations.plan import JOURNAL_FILE, VERIFY_FILE, MigrationPlan, StateBase, state_dir
from csr_vdb.migrations.report import PlanReport, Report
from csr_vdb.migrations.schema import Preflight, check_source_unchanged, fidelity_differences

log = logging.getLogger(__name__)

_EXAMPLES = 20  # ids listed per kind of mismatch
_SEARCH_CHUNK = 64
RECALL_K = 10


class SchemaCheck(Report):
    """The target's schema against its source's, as the database's own client reports both."""

    ok: bool = Field(description="True when the target keeps the source's schema exactly.")
    differences: list[str] = Field(default_factory=list, description="One line per difference.")
    source: dict[str, Any] = Field(default_factory=dict, description="The source's native schema.")
    target: dict[str, Any] = Field(default_factory=dict, description="The target's native schema.")


class VerifyReport(PlanReport):
    """What `verify_migration` checked and found; ``ok`` is False on any mismatch."""

    shard_count: int = Field(description="Shards whose union was verified.")
    ok: bool = Field(description="True when every check passed.")
    problems: list[str] = Field(default_factory=list, description="One line per failed check.")
    checked_at: str = Field(description="When the check ran (ISO 8601, UTC).")
    seconds: float = Field(description="Wall time of the check.")
    journal_state: str = Field(description="Fingerprint of the journals verified (cutover compares it).")
    journals_complete: bool = Field(description="Every shard's journal says its run completed.")
    incomplete_shards: list[str] = Field(default_factory=list, description="Shards not (fully) migrated.")
    source_rows: int = Field(description="Rows in the source.")
    skipped_invalid: int = Field(description="Source rows skipped as invalid (recorded in the journals).")
    expected_rows: int = Field(description="Rows the target must hold (source minus skipped).")
    target_rows: int = Field(description="Rows the target holds.")
    count_ok: bool = Field(description="target_rows == expected_rows.")
    ranges_checked: int = Field(description="Id ranges (source pages) compared by hash.")
    ranges_mismatched: int = Field(description="Id ranges whose hashes differed (then diffed exactly).")
    n_missing: int = Field(description="Expected ids absent from the target.")
    missing_ids: list[Any] = Field(default_factory=list, description="First missing ids.")
    n_extra: int = Field(description="Target ids that are not expected.")
    extra_ids: list[Any] = Field(default_factory=list, description="First extra ids (listed when the target can be scanned).")
    payload_mismatches: int = Field(description="Rows whose payload differs from the source.")
    payload_mismatch_ids: list[Any] = Field(default_factory=list, description="First such ids.")
    dense_checked: int = Field(description="Rows whose dense vector was compared (0 when not kept).")
    dense_mismatches: int = Field(description="Rows whose dense vector differs from the source.")
    dense_mismatch_ids: list[Any] = Field(default_factory=list, description="First such ids.")
    sample_size: int = Field(description="Rows re-encoded and compared with the stored sparse vectors.")
    sparse_mismatches: int = Field(description="Sampled rows whose stored sparse vector differs (atol 1e-5).")
    sparse_mismatch_ids: list[Any] = Field(default_factory=list, description="First such ids.")
    recall_at_10: float | None = Field(None, description="Mean recall@10 of sparse search vs dense search, sampled rows as queries.")
    min_recall: float = Field(description="Recall threshold below which the check fails (0 = report only).")
    quality_ok: bool = Field(description="recall_at_10 >= min_recall.")
    schema_check: SchemaCheck | None = Field(
        None, description="The target's schema (ids, dense field, payload layout and indexes) against the source's."
    )


def shard_journals_state(
    plan: MigrationPlan, state_base: StateBase
) -> tuple[str, list[str], list[Any], dict[str, Any]]:
    """Read every shard's journal of a split (read-only).

    Returns:
        ``(fingerprint, incomplete shards, skipped invalid ids, per-shard info)``.
    """
    prints, incomplete, skipped, info = [], [], [], {}
    for p in plan.shards():
        jpath = state_dir(state_base, p) / JOURNAL_FILE
        if not jpath.exists():
            prints.append("missing")
            incomplete.append(f"{p.shard} (never run)")
            continue
        with Journal.open(jpath, readonly=True) as j:
            meta = j.meta()
            prints.append(j.fingerprint())
            skipped.extend(j.invalid_ids())
            t = j.totals()
            info[p.shard] = {"rows_written": t.rows_written, "complete": meta.get("completed_at") is not None}
            if meta.get("plan_id") != p.plan_id:
                incomplete.append(f"{p.shard} (journal of another plan)")
            elif meta.get("model_sha256") != plan.model_sha256:
                incomplete.append(f"{p.shard} (another model)")
            elif meta.get("completed_at") is None:
                incomplete.append(f"{p.shard} (not complete)")
    # the same for every shard's plan of one split, so any shard may verify and another cut over
    split_id = plan.shards()[0].plan_id
    fp = hashlib.sha256("|".join([split_id, *prints]).encode()).hexdigest()[:16]
    return fp, incomplete, skipped, info


@dataclass
class _Found:
    """How many rows showed one kind of mismatch, and the first of their ids."""

    n: int = 0
    ids: list[Any] = field(default_factory=list)

    def add(self, i: Any) -> None:
        self.n += 1
        if len(self.ids) < _EXAMPLES:
            self.ids.append(i)


Row = tuple[Any, Any]  # (dense vector or None, payload)


class _RowDiff:
    """Matches the target's rows with the source's while both are read in step.

    The target is read in step with the source (same store, so the same id order) and the two are
    matched through small "pending" maps, which stay empty while both agree; no comparison of ids
    by value is needed (Qdrant orders string ids by their uuid5, not alphabetically). A target
    that keeps no dense vectors cannot be paged, so its rows are fetched by the source's ids.
    """

    def __init__(self, store: VectorStore, plan: MigrationPlan, scan_target: bool) -> None:
        self.store, self.plan = store, plan
        # A cosine field means its vectors' directions: engines may keep them normalised or not
        # (a Qdrant server normalises on insert; qdrant-client's local mode keeps what a reopened
        # directory persisted), so directions are compared.
        self.cosine = plan.source_schema.metric == "cosine"
        self.missing, self.extra, self.payload, self.dense = _Found(), _Found(), _Found(), _Found()
        self.dense_checked = self.ranges = self.ranges_bad = self.expected = 0
        self._target = self._target_rows() if scan_target else None
        self._target_done = False
        self._src_pending: dict[Any, Row] = {}
        self._tgt_pending: dict[Any, Row] = {}
        self._taken = 0  # target rows read so far

    def _target_rows(self) -> Iterator[tuple[Any, Any, Any]]:
        for page in self.store.iter_dense(self.plan.target, self.plan.batch_size, vector_field=self.plan.vector_field):
            yield from zip(page.ids, page.vectors, page.payloads)

    def page(self, ids: list, vectors: np.ndarray, payloads: list, keep: list[int]) -> None:
        """Compare one source page (its rows at positions ``keep``: the others were skipped)."""
        exp_ids = [ids[n] for n in keep]
        self.expected += len(exp_ids)
        got = self._target_page(exp_ids)
        self.ranges += 1
        if ids_hash([g[0] for g in got]) != ids_hash(exp_ids):
            self.ranges_bad += 1
        arrived: dict[Any, Row] = {}
        for gid, gvec, gpay in got:
            if gid in self._src_pending:
                self._compare(gid, self._src_pending.pop(gid), (gvec, gpay))
            else:
                arrived[gid] = (gvec, gpay)
        for n in keep:
            i, want = ids[n], (vectors[n], payloads[n])
            if i in arrived:
                self._compare(i, want, arrived.pop(i))
            elif i in self._tgt_pending:
                self._compare(i, want, self._tgt_pending.pop(i))
            elif self._target is None or self._target_done:
                self.missing.add(i)  # the target cannot bring this row any more
            else:
                # kept only while the target may still bring the row (bounded by the mismatches)
                self._src_pending[i] = want
        self._tgt_pending.update(arrived)

    def _target_page(self, exp_ids: list) -> list[tuple[Any, Any, Any]]:
        if self._target is None:
            return [(r.id, None, r.payload) for r in self.store.fetch(self.plan.target, exp_ids)] if exp_ids else []
        got = []
        while self._taken < self.expected and not self._target_done:
            row = next(self._target, None)
            if row is None:
                self._target_done = True
                break
            got.append(row)
            self._taken += 1
        return got

    def _compare(self, i: Any, want: Row, got: Row) -> None:
        if got[1] != want[1]:
            self.payload.add(i)
        if got[0] is not None:
            self.dense_checked += 1
            a, b = np.asarray(got[0], np.float64), np.asarray(want[0], np.float64)
            if self.cosine:
                a, b = a / max(np.linalg.norm(a), 1e-30), b / max(np.linalg.norm(b), 1e-30)
            if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                self.dense.add(i)

    def finish(self, target_rows: int) -> None:
        """Read the rest of the target; what is left unmatched is missing or extra."""
        if self._target is not None:
            for gid, gvec, gpay in self._target:
                if gid in self._src_pending:
                    self._compare(gid, self._src_pending.pop(gid), (gvec, gpay))
                else:
                    self._tgt_pending[gid] = (gvec, gpay)
            for i in self._tgt_pending:
                self.extra.add(i)
        for i in self._src_pending:
            self.missing.add(i)
        if self._target is None:
            # Without a scannable target, extras show up only as surplus rows.
            self.extra.n = max(0, target_rows - (self.expected - self.missing.n))

    def problems(self, target_rows: int) -> list[str]:
        """One line per failed check."""
        out = []
        if target_rows != self.expected:
            out.append(f"target has {target_rows} rows, expected {self.expected}")
        if self.missing.n:
            out.append(f"{self.missing.n} ids missing from the target (e.g. {self.missing.ids[:5]})")
        if self.extra.n:
            out.append(f"{self.extra.n} unexpected ids in the target"
                       + (f" (e.g. {self.extra.ids[:5]})" if self.extra.ids else ""))
        if self.payload.n:
            out.append(f"{self.payload.n} payloads differ (e.g. ids {self.payload.ids[:5]})")
        if self.dense.n:
            out.append(f"{self.dense.n} dense vectors differ (e.g. ids {self.dense.ids[:5]})")
        return out


class _Reservoir:
    """A uniform sample of at most ``size`` rows of a stream, drawn a page at a time."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)
        self.ids: list[Any] = []
        self.vectors: list[np.ndarray] = []

    def add(self, ids: list, vectors: np.ndarray, keep: list[int]) -> None:
        if not keep or self.size <= 0:
            return
        draws = self.rng.integers(0, self.seen + np.arange(len(keep)) + 1)
        for j, (n, d) in enumerate(zip(keep, draws)):
            if self.seen + j < self.size:
                self.ids.append(ids[n])
                self.vectors.append(np.asarray(vectors[n], np.float32))
            elif d < self.size:
                self.ids[d] = ids[n]
                self.vectors[d] = np.asarray(vectors[n], np.float32)
        self.seen += len(keep)


def verify_migration(
    store: VectorStore, plan: MigrationPlan, encode: Encode, encode_queries: Encode, *, state_base: StateBase,
    sample: int = 256, min_recall: float = 0.0, progress: Progress | None = None,
) -> VerifyReport:
    """Check the target against the source (all shards) and write ``verify.json``.

    Checks: every shard's journal complete; the target's schema against the source's (ids, the
    kept dense field, payload layout and indexes, as the database's client reports them); row count; id sets (a hash per id range — one
    source page — and an exact diff of ranges that differ); every payload; every dense vector
    when kept; a sample of rows re-encoded with ``encode`` and compared with the stored sparse
    vectors (atol 1e-5); recall@10 of sparse search (queries through ``encode_queries``) against
    dense search on the source, the sampled rows as queries. Nothing is written to the store.

    Args:
        store: the open store.
        plan: the migration plan (any shard of a split: the union is verified).
        encode: the document encoder used by the migration.
        encode_queries: the query encoder (may use another k).
        state_base: base folder of state folders.
        sample: rows re-encoded and used as quality queries.
        min_recall: fail when recall@10 is below this (default 0: report only).
        progress: called as ``progress(rows_checked, rows_total)``.

    Returns:
        A `VerifyReport` (``.ok`` False on any mismatch; the CLI maps that to exit code 8).

    Raises:
        MigrationError: the migration was never run here, or its target is gone.
        StoreError: the store failed.
    """
    t0 = time.monotonic()
    folder = state_dir(state_base, plan)
    if not (folder / JOURNAL_FILE).exists():
        raise MigrationError(f"nothing to verify: no journal of '{plan.source}' -> '{plan.target}' in {folder}")
    pre = Preflight.read(store, plan.source, plan.target)
    check_source_unchanged(pre.source, plan.source_schema, plan.source)
    fingerprint, incomplete, skipped_list, _ = shard_journals_state(plan, state_base)
    if pre.target is None:
        raise MigrationError(f"target collection '{plan.target}' does not exist in {plan.uri}")
    skipped = set(skipped_list)
    kept = plan.vector_field if plan.keep_dense else None
    differences = fidelity_differences(pre.source.native_schema, pre.target.native_schema, kept)
    schema = SchemaCheck(ok=not differences, differences=differences, source=pre.source.native_schema,
                         target=pre.target.native_schema)

    diff = _RowDiff(store, plan, scan_target=plan.vector_field in pre.target.vector_fields)
    drawn = _Reservoir(sample, seed=int(plan.plan_id, 16) % 2**32)
    scanned = 0
    for page in store.iter_dense(plan.source, plan.batch_size, vector_field=plan.vector_field):
        keep = [n for n, i in enumerate(page.ids) if i not in skipped]
        diff.page(page.ids, page.vectors, page.payloads, keep)
        drawn.add(page.ids, page.vectors, keep)
        scanned += len(page)
        if progress is not None:
            progress(scanned, pre.source.count)
    diff.finish(pre.target.count)

    problems = [f"shards not complete: {', '.join(incomplete)}"] if incomplete else []
    if differences:
        more = f" (+{len(differences) - 1} more)" if len(differences) > 1 else ""
        problems.append(f"target schema differs from the source's: {differences[0]}{more}")
    problems += diff.problems(pre.target.count)
    sparse, recall = _Found(), None
    if drawn.ids:
        x = np.stack(drawn.vectors)
        sparse = _compare_codes(store, plan, drawn.ids, x, encode)
        if sparse.n:
            problems.append(f"{sparse.n} of {len(drawn.ids)} sampled sparse vectors differ from a re-encode "
                            f"(e.g. ids {sparse.ids[:5]})")
        recall = _recall(store, plan, x, encode_queries)
    quality_ok = recall is None or recall >= min_recall
    if not quality_ok:
        problems.append(f"recall@{RECALL_K} {recall:.4f} below the threshold {min_recall}")

    report = VerifyReport(
        **VerifyReport.about(plan),
        shard_count=plan.shard_count,
        ok=not problems,
        problems=problems,
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - t0, 3),
        journal_state=fingerprint,
        journals_complete=not incomplete,
        incomplete_shards=incomplete,
        source_rows=pre.source.count,
        skipped_invalid=len(skipped),
        expected_rows=diff.expected,
        target_rows=pre.target.count,
        count_ok=pre.target.count == diff.expected,
        ranges_checked=diff.ranges,
        ranges_mismatched=diff.ranges_bad,
        n_missing=diff.missing.n,
        missing_ids=diff.missing.ids,
        n_extra=diff.extra.n,
        extra_ids=diff.extra.ids,
        payload_mismatches=diff.payload.n,
        payload_mismatch_ids=diff.payload.ids,
        dense_checked=diff.dense_checked,
        dense_mismatches=diff.dense.n,
        dense_mismatch_ids=diff.dense.ids,
        sample_size=len(drawn.ids),
        sparse_mismatches=sparse.n,
        sparse_mismatch_ids=sparse.ids,
        recall_at_10=None if recall is None else round(recall, 4),
        min_recall=min_recall,
        quality_ok=quality_ok,
        schema_check=schema,
    )
    try:
        atomic_write_json(folder / VERIFY_FILE, report.model_dump())
    except OSError as exc:
        raise MigrationError(f"cannot write verify report in {folder}: {exc.strerror or exc}") from exc
    log.info("verify %s -> %s: ok=%s", plan.source, plan.target, report.ok)
    return report


def _compare_codes(store: VectorStore, plan: MigrationPlan, ids: list, x: np.ndarray, encode: Encode) -> _Found:
    """Re-encode the sampled rows ``x`` and compare with the stored sparse vectors (atol 1e-5)."""
    found = _Found()
    want = encode(x).to_qdrant()
    recs = {r.id: r for r in store.fetch(plan.target, ids, with_sparse=True)}
    for i, (wi, wv) in zip(ids, want):
        r = recs.get(i)
        if r is None:
            continue  # already counted as missing
        gi, gv = r.sparse or ([], [])
        if list(gi) != list(wi) or not np.allclose(gv, wv, rtol=0.0, atol=1e-5):
            found.add(i)
    return found


def _recall(store: VectorStore, plan: MigrationPlan, x: np.ndarray, encode_queries: Encode) -> float:
    """Mean |sparse top-10 ∩ dense top-10| / |dense top-10| with the rows ``x`` as queries."""
    total, n = 0.0, 0
    for s in range(0, len(x), _SEARCH_CHUNK):
        q = x[s : s + _SEARCH_CHUNK]
        dense = store.search_dense(plan.source, q, limit=RECALL_K, vector_field=plan.vector_field)
        sparse = store.search_sparse(plan.target, encode_queries(q), limit=RECALL_K)
        for d, sp in zip(dense, sparse):
            truth = {h.id for h in d}
            if truth:
                total += len(truth & {h.id for h in sp}) / len(truth)
                n += 1
    return total / n if n else 0.0


def load_verify(folder: Path) -> dict[str, Any] | None:
    """The last verify.json of a state folder, or None."""
    path = folder / VERIFY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
