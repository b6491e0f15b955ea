"""The migration pipeline: a reader thread pages the source, the calling thread validates and encodes,
a writer thread upserts each batch and journals it once the store acknowledged the write."""

from __future__ import annotations

import functools
import inspect
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from csr_vdb.store import DensePage, VectorStore
from csr_vdb.errors import DataError, MigrationError, describe_rows
from csr_vdb.migrations.journal import Journal
from csr_vdb.migrations.manifest import manifest_rows
from csr_vdb.migrations.plan import MigrationPlan
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import invalid_dense_rows

Encode = Callable[[np.ndarray], SparseVectors]
Progress = Callable[[int, int], None]

_QUEUE_DEPTH = 2  # pages in flight between reader -> encoder -> writer (bounded memory)
_POLL_S = 0.2
_INVALID_IDS_KEPT = 100  # skipped ids listed in a result


@dataclass
class Batch:
    """One source page of this shard, validated and encoded, ready to write.

    Attributes:
        cursor: the page's last id: where the next run continues once this batch is journaled.
        rows_read: rows of the page (all shards).
        ids, vectors, payloads: the rows to write (this shard, invalid rows left out).
        codes: their sparse codes (None when nothing was encoded).
        invalid: ``(id, reason)`` of the rows skipped as invalid.
        manifest: ``(key, vector hash, payload hash)`` of the rows to write, journaled with them.
    """

    cursor: Any
    rows_read: int
    ids: list
    vectors: np.ndarray | None
    payloads: list
    codes: SparseVectors | None
    invalid: list[tuple[Any, str]]
    manifest: list[tuple[str, bytes, bytes]] | None = None


@dataclass
class Tally:
    """What a run (or a dry run) did so far, batch by batch."""

    rows_read: int = 0
    rows_written: int = 0
    rows_invalid: int = 0
    batches: int = 0
    nnz: int = 0
    encoded: int = 0
    invalid_ids: list[Any] = field(default_factory=list)
    flush_s: float = 0.0

    def add(self, batch: Batch) -> None:
        """Count a batch that was written (or, in a dry run, would be)."""
        self.rows_read += batch.rows_read
        self.rows_written += len(batch.ids)
        self.rows_invalid += len(batch.invalid)
        self.batches += 1
        if batch.codes is not None:
            self.nnz += int(batch.codes.nnz().sum())
            self.encoded += len(batch.codes)
        room = max(0, _INVALID_IDS_KEPT - len(self.invalid_ids))
        self.invalid_ids.extend(i for i, _ in batch.invalid[:room])

    @property
    def avg_nnz(self) -> float | None:
        """Mean non-zeros per sparse vector encoded, or None when none was."""
        return round(self.nnz / self.encoded, 2) if self.encoded else None


def checked_encoder(encode: Encode) -> Encode:
    """``encode`` for rows the engine has validated already (dimension, NaN/inf, all-zero).

    An encoder that takes ``validated=`` (`csr_vdb.model.CSREncoder.encode`) is told so, and skips
    its own scan of the rows: each row is validated once on the migrate and sync paths. Any other
    callable is used as it is.
    """
    target = encode.func if isinstance(encode, functools.partial) else encode
    try:
        takes = "validated" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        takes = False
    if not takes or (isinstance(encode, functools.partial) and "validated" in encode.keywords):
        return encode
    return functools.partial(encode, validated=True)


def encode_rows(encode: Encode, vectors: np.ndarray) -> SparseVectors:
    """``encode(vectors)``, refusing an output that is not one `SparseVectors` row per input row.

    Raises:
        DataError: the encoder returned something else, or another number of rows.
    """
    codes = encode(vectors)
    if not isinstance(codes, SparseVectors) or len(codes) != len(vectors):
        got = len(codes) if isinstance(codes, SparseVectors) else type(codes).__name__
        raise DataError(f"encoder returned {got} sparse vectors for {len(vectors)} rows")
    return codes


def prepare_batch(page: DensePage, plan: MigrationPlan, encode: Encode | None, *, check_codes: bool = False) -> Batch:
    """Keep this shard's rows of a page, validate each dense row once, and encode them.

    Args:
        page: a source page.
        plan: the migration plan (shard, dimension, ``skip_invalid``).
        encode: the document encoder, called on validated rows (wrap it in `checked_encoder` so it
            does not scan them again); None leaves ``codes`` empty (dry run past its first batch).
        check_codes: validate the codes here; a real run leaves that to the store's write, which
            validates what it writes anyway.

    Raises:
        DataError: an invalid row (unless ``plan.skip_invalid``), or an encoder output of the wrong
            length (or an invalid one, with ``check_codes``).
    """
    keep = [n for n, inside in enumerate(plan.in_shard(page.ids)) if inside]
    ids = [page.ids[n] for n in keep]
    payloads = [page.payloads[n] for n in keep]
    vectors = np.asarray(page.vectors, dtype=np.float32)[keep] if keep else None
    invalid: list[tuple[Any, str]] = []
    if vectors is not None:
        if vectors.ndim != 2 or vectors.shape[1] != plan.source_schema.dim:
            raise DataError(
                f"source '{plan.source}' returned vectors of shape {vectors.shape}, "
                f"expected dimension {plan.source_schema.dim}"
            )
        problems = invalid_dense_rows(vectors)
        if problems:
            if not plan.skip_invalid:
                reason, rows = next(iter(problems.items()))
                names = [ids[r] for r in rows]
                raise DataError(
                    f"source '{plan.source}' has {reason} vectors at ids {describe_rows(names)}; "
                    "nothing of this batch was written (fix the rows or pass --skip-invalid)",
                    names,
                )
            reasons = {r: reason for reason, rows in problems.items() for r in rows}
            invalid = [(ids[r], reasons[r]) for r in sorted(reasons)]
            good = [r for r in range(len(ids)) if r not in reasons]
            ids = [ids[r] for r in good]
            payloads = [payloads[r] for r in good]
            vectors = vectors[good] if good else None
    codes = None
    if vectors is not None and encode is not None:
        codes = encode_rows(encode, vectors)
        if check_codes:
            codes.validate(ids)
    digests = manifest_rows(ids, vectors, payloads) if vectors is not None else []
    return Batch(page.cursor, len(page), ids, vectors, payloads, codes, invalid, digests)


class _Stop(Exception):
    """Internal: the writer failed; unwind quietly and raise its error."""


class Pipeline:
    """Reader thread -> validate and encode (calling thread) -> writer thread, with bounded queues.

    The writer records a batch in the journal only after the store acknowledged its upsert, so a
    crash in between repeats at most that batch on resume (upserts are idempotent by id).
    """

    def __init__(
        self,
        store: VectorStore,
        plan: MigrationPlan,
        encode: Encode,
        journal: Journal,
        run: int,
        tally: Tally,
        *,
        scanned: int,
        total: int,
        progress: Progress | None,
    ) -> None:
        self.store, self.plan, self.encode = store, plan, checked_encoder(encode)
        self.journal, self.run_id, self.tally = journal, run, tally
        self.scanned, self.total, self.progress = scanned, total, progress
        self._pages: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._batches: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._stop_read = threading.Event()
        self._abort_write = threading.Event()
        self._write_error: list[BaseException] = []

    def run(self, cursor: Any) -> None:
        """Migrate every page after ``cursor``; returns once each batch is written and journaled.

        Raises:
            DataError: an invalid row; the batches before it are written and journaled, so a
                resume after fixing the data continues right before the offending batch.
            KeyboardInterrupt, StoreError, MigrationError...: whatever stopped a stage.
        """
        reader = threading.Thread(target=self._read, args=(cursor,), name="csr-vdb-reader", daemon=True)
        writer = threading.Thread(target=self._write, name="csr-vdb-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            while (page := self._get()) is not None:
                if isinstance(page, BaseException):
                    raise page
                self._put(prepare_batch(page, self.plan, self.encode), writer)
            self._put(None, writer)  # the writer finishes every queued batch, then ends
            writer.join()
            if self._write_error:
                raise self._write_error[0]
        except _Stop:
            self._stop_read.set()
            writer.join()
            raise self._write_error[0] from None
        except DataError as exc:
            self._stop_read.set()
            self._end_after_queued(writer)
            writer.join()
            if self._write_error:
                raise self._write_error[0] from exc
            raise
        except BaseException:
            self._stop_read.set()
            self._abort_write.set()
            writer.join()
            raise
        finally:
            self._stop_read.set()
            reader.join(timeout=5)

    # ------------------------------------------------------------------ threads
    def _read(self, cursor: Any) -> None:
        """Prefetch source pages; ends with None, or with the exception it met."""
        item: Any = None
        try:
            pages = self.store.iter_dense(
                self.plan.source, self.plan.batch_size, cursor=cursor, vector_field=self.plan.vector_field
            )
            for page in pages:
                if not self._offer(page):
                    return
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            item = exc
        self._offer(item)

    def _offer(self, item: Any) -> bool:
        """Queue ``item`` for the encoder unless reading was stopped; False when it was."""
        while not self._stop_read.is_set():
            try:
                self._pages.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _write(self) -> None:
        while True:
            try:
                batch = self._batches.get(timeout=_POLL_S)
            except queue.Empty:
                if self._abort_write.is_set():
                    return
                continue
            if batch is None or self._abort_write.is_set():
                return
            try:
                self._write_batch(batch)
            except BaseException as exc:  # incl. KeyboardInterrupt from a progress callback
                self._write_error.append(exc)
                return

    def _write_batch(self, b: Batch) -> None:
        if b.ids:
            dense = b.vectors if self.plan.keep_dense else None
            # the rows were validated by prepare_batch: the store checks ids, payloads and codes only
            self.store.upsert(self.plan.target, b.ids, b.codes, b.payloads, dense=dense, validated=True)
        # Only now, after the store acknowledged the write, is the batch recorded.
        self.journal.record_batch(
            run=self.run_id, cursor=b.cursor, written_ids=b.ids, rows_read=b.rows_read, invalid=b.invalid,
            manifest=b.manifest,
        )
        self.tally.add(b)
        self.scanned += b.rows_read
        if self.progress is not None:
            self.progress(self.scanned, self.total)

    # ------------------------------------------------------------------ queues
    def _get(self) -> Any:
        while True:
            if self._write_error:
                raise _Stop()
            try:
                return self._pages.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _put(self, item: Any, writer: threading.Thread) -> None:
        while True:
            if self._write_error:
                raise _Stop()
            if not writer.is_alive():
                raise MigrationError("the writer thread ended unexpectedly")
            try:
                self._batches.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _end_after_queued(self, writer: threading.Thread) -> None:
        """Queue the end marker behind the batches already waiting (the writer drains them)."""
        while writer.is_alive():
            try:
                self._batches.put(None, timeout=_POLL_S)
                return
            except queue.Full:
                continue
