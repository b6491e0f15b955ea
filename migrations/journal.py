"""The sqlite journal of a migration: one row per batch, written only after the store acknowledged it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csr_vdb.errors import MigrationError
from csr_vdb.fileutil import private_file

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    cursor TEXT NOT NULL,          -- JSON id: the source page's last id (exclusive resume point)
    first_id TEXT,                 -- JSON id of the first row written (NULL when none)
    rows_read INTEGER NOT NULL,    -- source rows scanned (all shards)
    rows_written INTEGER NOT NULL, -- rows upserted into the target
    rows_invalid INTEGER NOT NULL, -- rows skipped as invalid
    ids_sha256 TEXT NOT NULL,      -- hash of the written ids in order
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS invalid (id TEXT PRIMARY KEY, reason TEXT NOT NULL, seq INTEGER NOT NULL);
-- what the target holds per source row, as written (`csr_vdb.migrations.manifest`): sync compares with it
CREATE TABLE IF NOT EXISTS manifest (
    id TEXT PRIMARY KEY,           -- JSON id
    vector_sha BLOB NOT NULL,      -- hash of the dense vector's float32 bytes
    payload_sha BLOB NOT NULL      -- hash of the canonical payload JSON
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    mode TEXT NOT NULL,
    outcome TEXT,
    message TEXT
);
"""


_TABLES = {"meta", "batches", "invalid", "runs"}
_SQLITE_HEADER = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")


def damaged(path: Path, reason: str) -> MigrationError:
    """The refusal to use a damaged journal: what is wrong and how to recover, in one line."""
    return MigrationError(
        f"migration journal {path} is damaged ({reason}); nothing was written. Restore it from a backup, "
        f"or start over: move the folder {path.parent} away and drop the target collection "
        "(a journal is never rebuilt silently)"
    )


def ids_hash(ids: list) -> str:
    """sha256 of a list of ids (JSON, in order); equal lists of ints/strs give equal hashes."""
    return hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class JournalTotals:
    """Sums over a journal's batches."""

    batches: int
    rows_read: int
    rows_written: int
    rows_invalid: int
    cursor: Any  # last cursor (an id) or None when no batch is recorded
    first_at: float | None
    last_at: float | None


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Raise the `damaged` refusal unless SQLite's quick check passes and the journal's tables and
    plan id are there."""
    try:
        result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise _unusable(path, exc) from exc
    if result != ["ok"]:
        raise damaged(path, f"SQLite integrity check: {result[0] if result else 'no answer'}")
    if _TABLES - tables:
        raise damaged(path, f"tables {', '.join(sorted(_TABLES - tables))} missing")
    if conn.execute("SELECT value FROM meta WHERE key='plan_id'").fetchone() is None:
        raise damaged(path, "no plan id recorded")


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> MigrationError:
    """A journal SQLite cannot use: damaged (malformed, not a database) or not writable here."""
    text = str(exc)
    if any(w in text for w in ("malformed", "not a database", "file is encrypted")):
        return damaged(path, text)
    return MigrationError(
        f"cannot open migration journal {path}: {text} (make {path.parent} writable and with free space, then run again)"
    )


def _remove(path: Path) -> None:
    """Delete a journal file and SQLite's side files (a journal that was never completed)."""
    for p in (path, *(path.with_name(path.name + s) for s in _SIDE_FILES)):
        try:
            p.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", p, exc)


class Journal:
    """A migration's sqlite journal (WAL, synchronous=FULL while writing).

    Every method that writes runs in one transaction and turns sqlite/OS failures into
    `MigrationError`, so a failed write leaves the journal exactly as before.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self._conn = conn
        self.readonly = readonly

    # ------------------------------------------------------------------ open
    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any]) -> Journal:
        """Create a new journal (readable by its owner only) with its meta (plan id, model checksum,
        source schema...); on failure nothing of it is left behind."""
        path = Path(path)
        try:
            private_file(path)
            j = cls._open(path, readonly=False, new=True)
        except (MigrationError, OSError) as exc:
            _remove(path)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise MigrationError(f"cannot open migration journal {path}: {reason}") from exc
        try:
            with j._conn:
                j._conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in meta.items()],
                )
        except (sqlite3.Error, OSError) as exc:
            j._conn.close()
            _remove(path)
            raise MigrationError(f"cannot write journal {path}: {exc}") from exc
        return j

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = False) -> Journal:
        """Open an existing journal; ``readonly`` never modifies the file (status, verify).

        Raises:
            MigrationError: no journal there, or a damaged one (empty, truncated, not SQLite, failing
                SQLite's integrity check, or without the tables and plan id every journal has), with
                the way to recover; a damaged journal is never continued or re-created.
        """
        path = Path(path)
        if not path.exists():
            raise MigrationError(f"no migration journal at {path}")
        try:
            with open(path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise MigrationError(f"cannot read migration journal {path}: {exc.strerror or exc}") from exc
        if not header:
            raise damaged(path, "the file is empty")
        if header != _SQLITE_HEADER:
            raise damaged(path, "not an SQLite file" if len(header) == len(_SQLITE_HEADER) else "truncated")
        return cls._open(path, readonly=readonly)

    @classmethod
    def _open(cls, path: Path, readonly: bool, new: bool = False) -> Journal:
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            else:
                # The runner writes from its writer thread; access is serialised by the runner.
                conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise MigrationError(f"cannot open migration journal {path}: {exc}") from exc
        try:
            if not new:
                _check_integrity(conn, path)
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                conn.isolation_level = ""  # back to implicit transactions for `with conn:`
        except sqlite3.DatabaseError as exc:
            conn.close()
            if new:
                raise MigrationError(f"cannot open migration journal {path}: {exc}") from exc
            raise _unusable(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, readonly)

    def close(self) -> None:
        """Close; a writable journal is checkpointed back to a single file first."""
        try:
            if not self.readonly:
                # Leave one self-contained file behind so read-only openers create nothing.
                self._conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:  # still consistent: WAL is replayed on the next open
            log.info("could not checkpoint journal %s: %s", self.path, exc)
        finally:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def meta(self) -> dict[str, Any]:
        """All meta keys (JSON-decoded)."""
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def totals(self) -> JournalTotals:
        """Sums over all recorded batches and the resume cursor."""
        n, read, written, invalid, first_at, last_at = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(rows_read),0), COALESCE(SUM(rows_written),0),"
            " COALESCE(SUM(rows_invalid),0), MIN(finished_at), MAX(finished_at) FROM batches"
        ).fetchone()
        row = self._conn.execute("SELECT cursor FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return JournalTotals(
            batches=int(n),
            rows_read=int(read),
            rows_written=int(written),
            rows_invalid=int(invalid),
            cursor=json.loads(row[0]) if row else None,
            first_at=first_at,
            last_at=last_at,
        )

    def invalid_ids(self) -> list[Any]:
        """Ids skipped as invalid, in the order they were met."""
        rows = self._conn.execute("SELECT id FROM invalid ORDER BY seq, rowid").fetchall()
        return [json.loads(r[0]) for r in rows]

    def invalid_rows(self, limit: int | None = None) -> list[tuple[Any, str]]:
        """``(id, reason)`` of skipped rows."""
        sql = "SELECT id, reason FROM invalid ORDER BY seq, rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(json.loads(i), r) for i, r in self._conn.execute(sql).fetchall()]

    def runs(self) -> list[dict[str, Any]]:
        """Every run (start, end, mode, outcome), oldest first."""
        cur = self._conn.execute("SELECT run, started_at, ended_at, mode, outcome, message FROM runs ORDER BY run")
        keys = ("run", "started_at", "ended_at", "mode", "outcome", "message")
        return [dict(zip(keys, r)) for r in cur.fetchall()]

    def run_rate(self) -> tuple[int, float]:
        """``(rows_read, seconds)`` over the latest run's batches, for a rows/s estimate."""
        row = self._conn.execute("SELECT MAX(run) FROM batches").fetchone()
        if row is None or row[0] is None:
            return 0, 0.0
        run = row[0]
        started = self._conn.execute("SELECT started_at FROM runs WHERE run=?", (run,)).fetchone()
        read, last = self._conn.execute(
            "SELECT SUM(rows_read), MAX(finished_at) FROM batches WHERE run=?", (run,)
        ).fetchone()
        if not started or last is None:
            return 0, 0.0
        return int(read or 0), max(float(last) - float(started[0]), 0.0)

    def fingerprint(self) -> str:
        """A hash of the journal's state (meta + batch totals + last cursor + rows changed by syncs):
        what verify vouched for."""
        t = self.totals()
        m = self.meta()
        state = [m.get("plan_id"), m.get("model_sha256"), m.get("completed_at"), t.batches, t.rows_written,
                 t.rows_invalid, t.cursor]
        if m.get("sync_writes"):  # journals never synced keep the fingerprint they always had
            state.append(m["sync_writes"])
        blob = json.dumps(state, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- writes
    def _write(self, what: str, fn) -> Any:
        if self.readonly:
            raise MigrationError(f"journal {self.path} is open read-only")
        try:
            with self._conn:  # one transaction: committed entirely or not at all
                return fn(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise MigrationError(
                f"cannot record {what} in journal {self.path}: {exc} (free space or make {self.path.parent} "
                "writable, then run again with --resume: everything recorded so far is kept)"
            ) from exc

    def set_meta(self, **values: Any) -> None:
        """Set meta keys (JSON-encoded)."""
        self._write(
            "meta",
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            ),
        )

    def start_run(self, mode: str) -> int:
        """Record a run's start; returns its number."""
        return self._write(
            "run start",
            lambda c: c.execute("INSERT INTO runs(started_at, mode) VALUES (?, ?)", (time.time(), mode)).lastrowid,
        )

    def end_run(self, run: int, outcome: str, message: str | None = None) -> None:
        """Record a run's end (complete / failed / interrupted)."""
        self._write(
            "run end",
            lambda c: c.execute(
                "UPDATE runs SET ended_at=?, outcome=?, message=? WHERE run=?",
                (time.time(), outcome, message, run),
            ),
        )

    def record_batch(
        self,
        *,
        run: int,
        cursor: Any,
        written_ids: list,
        rows_read: int,
        invalid: list[tuple[Any, str]],
        manifest: list[tuple[str, bytes, bytes]] | None = None,
    ) -> int:
        """Record one acknowledged batch (and its skipped rows) in a single transaction.

        Args:
            run: the current run number.
            cursor: the source page's last id; the next run continues after it.
            written_ids: ids upserted into the target, in order.
            rows_read: source rows scanned for this batch.
            invalid: ``(id, reason)`` of rows skipped as invalid.
            manifest: ``(JSON id, vector hash, payload hash)`` of the written rows, recorded in the
                same transaction (`csr_vdb.migrations.manifest.manifest_rows`).

        Returns:
            The batch's sequence number.

        Raises:
            MigrationError: the journal could not be written (nothing was recorded).
        """

        def tx(c: sqlite3.Connection) -> int:
            seq = c.execute(
                "INSERT INTO batches(run, cursor, first_id, rows_read, rows_written, rows_invalid,"
                " ids_sha256, finished_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    run,
                    json.dumps(cursor),
                    json.dumps(written_ids[0]) if written_ids else None,
                    rows_read,
                    len(written_ids),
                    len(invalid),
                    ids_hash(written_ids),
                    time.time(),
                ),
            ).lastrowid
            if invalid:
                c.executemany(
                    "INSERT OR REPLACE INTO invalid(id, reason, seq) VALUES (?, ?, ?)",
                    [(json.dumps(i), r, seq) for i, r in invalid],
                )
            if manifest:
                c.executemany("INSERT OR REPLACE INTO manifest(id, vector_sha, payload_sha) VALUES (?,?,?)", manifest)
            return int(seq)

        return self._write("batch", tx)

    # ----------------------------------------------------------------- sync
    def read(self, sql: str, params: Any = ()) -> list[tuple]:
        """Rows of a read-only query (`csr_vdb.migrations.manifest` reads the manifest through it)."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise MigrationError(f"cannot read journal {self.path}: {exc}") from exc

    def scratch(self, sql: str, params: Any = (), many: bool = False) -> None:
        """Write to the connection's TEMP tables (allowed read-only too; never touches the file)."""
        try:
            with self._conn:  # committed at once, apart from the journal's own transactions
                (self._conn.executemany if many else self._conn.execute)(sql, params)
        except sqlite3.Error as exc:
            raise MigrationError(f"cannot use a scratch table of journal {self.path}: {exc}") from exc

    def record_sync(
        self,
        *,
        put: list[tuple[str, bytes, bytes]] = (),  # type: ignore[assignment]
        drop: list[str] = (),  # type: ignore[assignment]
        invalid: list[tuple[Any, str]] = (),  # type: ignore[assignment]
        valid_again: list[str] = (),  # type: ignore[assignment]
        changed: int = 0,
    ) -> None:
        """Record acknowledged sync writes in one transaction: manifest rows written or removed,
        rows newly skipped as invalid and rows no longer skipped, and ``changed`` (rows written,
        added to meta ``sync_writes`` so that the fingerprint moves)."""

        def tx(c: sqlite3.Connection) -> None:
            if put:
                c.executemany("INSERT OR REPLACE INTO manifest(id, vector_sha, payload_sha) VALUES (?,?,?)", put)
            if drop:
                c.executemany("DELETE FROM manifest WHERE id=?", [(k,) for k in drop])
            if invalid:
                c.executemany(
                    "INSERT OR REPLACE INTO invalid(id, reason, seq) VALUES (?, ?, ?)",
                    [(json.dumps(i), r, 0) for i, r in invalid],
                )
            if valid_again:
                c.executemany("DELETE FROM invalid WHERE id=?", [(k,) for k in valid_again])
            if changed:
                c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('sync_writes', '0')")
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='sync_writes'", (changed,))

        self._write("sync", tx)
