"""The sqlite journal: batches and runs recorded atomically, totals, fingerprint, read-only opening."""

from __future__ import annotations

import pytest

from csr_vdb.errors import MigrationError
from csr_vdb.migrations.journal import Journal, ids_hash

META = {"plan_id": "abc", "model_sha256": "f00", "source_schema": {"dim": 4}, "source_count": 10}


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_batches_runs_and_totals(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal.create(path, META) as j:
        assert j.meta() == META
        t = j.totals()
        assert (t.batches, t.rows_read, t.rows_written, t.cursor, t.last_at) == (0, 0, 0, None, None)
        assert j.run_rate() == (0, 0.0)
        run = j.start_run("fresh")
        assert j.record_batch(run=run, cursor=3, written_ids=[1, 2, 3], rows_read=3, invalid=[]) == 1
        j.record_batch(run=run, cursor="doc-9", written_ids=["doc-5"], rows_read=4,
                       invalid=[("doc-7", "NaN or inf"), ("doc-6", "all-zero vector")])
        j.end_run(run, "interrupted", "ctrl-c")
        t = j.totals()
        assert (t.batches, t.rows_read, t.rows_written, t.rows_invalid, t.cursor) == (2, 7, 4, 2, "doc-9")
        assert t.first_at <= t.last_at
        assert j.invalid_ids() == ["doc-7", "doc-6"]
        assert j.invalid_rows(limit=1) == [("doc-7", "NaN or inf")]
        read, secs = j.run_rate()
        assert read == 7 and secs >= 0.0
        runs = j.runs()
        assert [(r["run"], r["mode"], r["outcome"], r["message"]) for r in runs] == [
            (1, "fresh", "interrupted", "ctrl-c")]
        j.set_meta(completed_at=123.0)
        assert j.meta()["completed_at"] == 123.0
    # closing leaves one self-contained file behind
    assert _files(tmp_path) == ["journal.sqlite"]


def test_fingerprint_follows_the_state(tmp_path):
    with Journal.create(tmp_path / "j.sqlite", META) as j:
        empty = j.fingerprint()
        assert j.fingerprint() == empty
        j.record_batch(run=j.start_run("fresh"), cursor=1, written_ids=[1], rows_read=1, invalid=[])
        one = j.fingerprint()
        j.set_meta(completed_at=1.0)
        assert len({empty, one, j.fingerprint()}) == 3


def test_read_only_opening_writes_nothing(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal.create(path, META) as j:
        j.record_batch(run=j.start_run("fresh"), cursor=1, written_ids=[1], rows_read=1, invalid=[])
    before = path.read_bytes()
    with Journal.open(path, readonly=True) as j:
        assert j.totals().batches == 1
        with pytest.raises(MigrationError, match="open read-only"):
            j.set_meta(x=1)
    assert path.read_bytes() == before and _files(tmp_path) == ["j.sqlite"]
    with pytest.raises(MigrationError, match="no migration journal"):
        Journal.open(tmp_path / "missing.sqlite")


def test_a_failed_write_records_nothing(tmp_path):
    with Journal.create(tmp_path / "j.sqlite", META) as j:
        run = j.start_run("fresh")

        def half_then_fail(c):
            c.execute("INSERT INTO runs(started_at, mode) VALUES (0, 'x')")
            raise OSError(28, "No space left on device")

        with pytest.raises(MigrationError, match="cannot record batch .* No space left"):
            j._write("batch", half_then_fail)
        assert [r["run"] for r in j.runs()] == [run] and j.totals().batches == 0


def test_unwritable_journal_is_a_migration_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MigrationError, match="cannot open migration journal"):
        Journal.create(tmp_path / "afile" / "j.sqlite", META)


def test_ids_hash():
    assert ids_hash([1, 2, 3]) == ids_hash([1, 2, 3])
    assert len({ids_hash([1, 2, 3]), ids_hash([3, 2, 1]), ids_hash(["1", "2", "3"]), ids_hash([])}) == 4
