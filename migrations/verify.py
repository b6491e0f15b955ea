"""`verify_migration`: prove the target holds exactly the source's rows, re-encoded, and measure recall."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from csr_vdb.adapters.base import VectorStore
from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import atomic_write_json
from csr_vdb.migrations.journal import Journal, ids_hash
from csr_vdb.migrations.plan import JOURNAL_FILE, VERIFY_FILE, MigrationPlan, state_dir
from csr_vdb.migrations.runner import check_source_unchanged
from csr_vdb.sparse import SparseVectors

log = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], SparseVectors]
Progress = Callable[[int, int], None]

_EXAMPLES = 20  # ids listed per kind of mismatch
_SEARCH_CHUNK = 64
RECALL_K = 10


class VerifyReport(BaseModel):
    """What `verify_migration` checked and found; ``ok`` is False on any mismatch."""

    model_config = ConfigDict(extra="forbid")

    plan_id: str = Field(description="The plan verified.")
    source: str = Field(description="Source collection.")
    target: str = Field(description="Target collection.")
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


def shard_journals_state(plan: MigrationPlan, state_base: str | os.PathLike[str] | None) -> tuple[str, list[str], list[Any], dict[str, Any]]:
    """Read every shard's journal of a split (read-only).

    Returns:
        ``(fingerprint, incomplete shards, skipped invalid ids, per-shard info)``.
    """
    prints, incomplete, skipped, info = [], [], [], {}
    for i in range(plan.shard_count):
        p = plan if i == plan.shard_index else plan.for_shard(i)
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
    split_id = plan.for_shard(0).plan_id if plan.shard_index else plan.plan_id
    fp = hashlib.sha256("|".join([split_id, *prints]).encode()).hexdigest()[:16]
    return fp, incomplete, skipped, info


def _target_pages(store: VectorStore, plan: MigrationPlan) -> Iterator[tuple[Any, np.ndarray, dict]]:
    for page in store.iter_dense(plan.target, plan.batch_size, vector_field=plan.vector_field):
        for n, i in enumerate(page.ids):
            yield i, page.vectors[n], page.payloads[n]


def _add(examples: list, ids) -> None:
    for i in ids:
        if len(examples) >= _EXAMPLES:
            return
        examples.append(i)


def verify_migration(
    store: VectorStore,
    plan: MigrationPlan,
    encode: Encode,
    encode_queries: Encode,
    *,
    state_base: str | os.PathLike[str] | None,
    sample: int = 256,
    min_recall: float = 0.0,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the target against the source (all shards) and write ``verify.json``.

    Checks: every shard's journal complete; row count; id sets (a hash per id range — one
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
        MigrationError: the migration was never run here.
        StoreError: the store failed.
    """
    t0 = time.monotonic()
    folder = state_dir(state_base, plan)
    if not (folder / JOURNAL_FILE).exists():
        raise MigrationError(f"nothing to verify: no journal of '{plan.source}' -> '{plan.target}' in {folder}")
    check_source_unchanged(store, plan)
    fingerprint, incomplete, skipped_list, _ = shard_journals_state(plan, state_base)
    skipped = set(skipped_list)
    problems: list[str] = []
    if incomplete:
        problems.append(f"shards not complete: {', '.join(incomplete)}")

    if not store.has_collection(plan.target):
        raise MigrationError(f"target collection '{plan.target}' does not exist in {plan.uri}")
    tinfo = store.describe(plan.target)
    scan_target = plan.vector_field in tinfo.vector_fields
    source_rows = store.count(plan.source)
    target_rows = store.count(plan.target)

    missing: list[Any] = []
    extra: list[Any] = []
    n_missing = n_extra = 0
    pay_bad: list[Any] = []
    n_pay = 0
    dense_bad: list[Any] = []
    n_dense = dense_checked = 0
    ranges = ranges_bad = 0
    expected_rows = 0
    scanned = 0

    rng = np.random.default_rng(int(plan.plan_id, 16) % 2**32)
    s_ids: list[Any] = []
    s_vecs: list[np.ndarray] = []
    seen = 0

    # The target is read in step with the source (same store, so the same id order) and the two
    # are matched through small "pending" maps, which stay empty while both agree; no comparison
    # of ids by value is needed (Qdrant orders string ids by their uuid5, not alphabetically).
    tgt_rows = _target_pages(store, plan) if scan_target else None
    src_pending: dict[Any, tuple[Any, Any]] = {}
    tgt_pending: dict[Any, tuple[Any, Any]] = {}
    consumed_exp = consumed_tgt = gone = 0
    tgt_done = False

    def compare(i: Any, want: tuple[Any, Any], got: tuple[Any, Any]) -> None:
        nonlocal n_pay, n_dense, dense_checked
        if got[1] != want[1]:
            n_pay += 1
            _add(pay_bad, [i])
        if got[0] is not None:
            dense_checked += 1
            if not np.allclose(got[0], want[0], rtol=1e-5, atol=1e-6):
                n_dense += 1
                _add(dense_bad, [i])

    for page in store.iter_dense(plan.source, plan.batch_size, vector_field=plan.vector_field):
        keep = [n for n, i in enumerate(page.ids) if i not in skipped]
        exp_ids = [page.ids[n] for n in keep]
        expected_rows += len(exp_ids)
        consumed_exp += len(exp_ids)

        got: list[tuple[Any, Any, Any]] = []
        if tgt_rows is not None:
            while consumed_tgt < consumed_exp and not tgt_done:
                row = next(tgt_rows, None)
                if row is None:
                    tgt_done = True
                    break
                got.append(row)
                consumed_tgt += 1
        elif exp_ids:
            got = [(r.id, None, r.payload) for r in store.fetch(plan.target, exp_ids)]
        ranges += 1
        if ids_hash([g[0] for g in got]) != ids_hash(exp_ids):
            ranges_bad += 1
        got_map = {}
        for gid, gvec, gpay in got:
            if gid in src_pending:
                compare(gid, src_pending.pop(gid), (gvec, gpay))
            else:
                got_map[gid] = (gvec, gpay)
        for n in keep:
            i = page.ids[n]
            want = (page.vectors[n], page.payloads[n])
            if i in got_map:
                compare(i, want, got_map.pop(i))
            elif i in tgt_pending:
                compare(i, want, tgt_pending.pop(i))
            elif tgt_rows is None or tgt_done:
                # the target cannot bring this row any more: missing, nothing to keep
                gone += 1
                _add(missing, [i])
            else:
                # kept only while the target may still bring the row (bounded by the mismatches)
                src_pending[i] = (page.vectors[n], page.payloads[n])
        tgt_pending.update(got_map)

        # Reservoir sample over the expected rows, drawn for a whole page at once.
        if keep and sample > 0:
            draws = rng.integers(0, seen + np.arange(len(keep)) + 1)
            for j, (n, d) in enumerate(zip(keep, draws)):
                if seen + j < sample:
                    s_ids.append(page.ids[n])
                    s_vecs.append(np.asarray(page.vectors[n], np.float32))
                elif d < sample:
                    s_ids[d] = page.ids[n]
                    s_vecs[d] = np.asarray(page.vectors[n], np.float32)
            seen += len(keep)
        scanned += len(page)
        if progress is not None:
            progress(scanned, source_rows)

    if tgt_rows is not None:
        for gid, gvec, gpay in tgt_rows:
            if gid in src_pending:
                compare(gid, src_pending.pop(gid), (gvec, gpay))
            else:
                tgt_pending[gid] = (gvec, gpay)
        n_extra = len(tgt_pending)
        _add(extra, list(tgt_pending))
    n_missing = gone + len(src_pending)
    _add(missing, list(src_pending))
    if tgt_rows is None:
        # Without a scannable target, extras show up only as surplus rows.
        n_extra = max(0, target_rows - (expected_rows - n_missing))

    count_ok = target_rows == expected_rows
    if not count_ok:
        problems.append(f"target has {target_rows} rows, expected {expected_rows}")
    if n_missing:
        problems.append(f"{n_missing} ids missing from the target (e.g. {missing[:5]})")
    if n_extra:
        problems.append(f"{n_extra} unexpected ids in the target" + (f" (e.g. {extra[:5]})" if extra else ""))
    if n_pay:
        problems.append(f"{n_pay} payloads differ (e.g. ids {pay_bad[:5]})")
    if n_dense:
        problems.append(f"{n_dense} dense vectors differ (e.g. ids {dense_bad[:5]})")

    # Sampled rows: re-encode and compare with the stored sparse vectors.
    sparse_bad: list[Any] = []
    n_sparse = 0
    recall = None
    if s_ids:
        x = np.stack(s_vecs)
        codes = encode(x)
        want = codes.to_qdrant()
        recs = {r.id: r for r in store.fetch(plan.target, s_ids, with_sparse=True)}
        for i, (wi, wv) in zip(s_ids, want):
            r = recs.get(i)
            if r is None:
                continue  # already counted as missing
            gi, gv = r.sparse or ([], [])
            if list(gi) != list(wi) or not np.allclose(gv, wv, rtol=0.0, atol=1e-5):
                n_sparse += 1
                _add(sparse_bad, [i])
        if n_sparse:
            problems.append(f"{n_sparse} of {len(s_ids)} sampled sparse vectors differ from a re-encode (e.g. ids {sparse_bad[:5]})")
        recall = _recall(store, plan, x, encode_queries)
    quality_ok = recall is None or recall >= min_recall
    if not quality_ok:
        problems.append(f"recall@{RECALL_K} {recall:.4f} below the threshold {min_recall}")

    report = VerifyReport(
        plan_id=plan.plan_id,
        source=plan.source,
        target=plan.target,
        shard_count=plan.shard_count,
        ok=not problems,
        problems=problems,
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - t0, 3),
        journal_state=fingerprint,
        journals_complete=not incomplete,
        incomplete_shards=incomplete,
        source_rows=source_rows,
        skipped_invalid=len(skipped),
        expected_rows=expected_rows,
        target_rows=target_rows,
        count_ok=count_ok,
        ranges_checked=ranges,
        ranges_mismatched=ranges_bad,
        n_missing=n_missing,
        missing_ids=missing,
        n_extra=n_extra,
        extra_ids=extra,
        payload_mismatches=n_pay,
        payload_mismatch_ids=pay_bad,
        dense_checked=dense_checked,
        dense_mismatches=n_dense,
        dense_mismatch_ids=dense_bad,
        sample_size=len(s_ids),
        sparse_mismatches=n_sparse,
        sparse_mismatch_ids=sparse_bad,
        recall_at_10=None if recall is None else round(recall, 4),
        min_recall=min_recall,
        quality_ok=quality_ok,
    )
    try:
        atomic_write_json(folder / VERIFY_FILE, report.model_dump())
    except OSError as exc:
        raise MigrationError(f"cannot write verify report in {folder}: {exc.strerror or exc}") from exc
    log.info("verify %s -> %s: ok=%s", plan.source, plan.target, report.ok)
    return report


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
    import json

    path = folder / VERIFY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
