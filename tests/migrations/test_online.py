"""Online migration: `migrate` while a writer inserts, updates (vector only, payload only, both) and deletes
in the source, then `sync`: verify passes and the target equals the source row for row. The writer is a
thread of the test for the embedded engines (their files admit one process) and a process of its own
against a `milvus-lite server` (the server code path). Also: cutover's final sync, and its refusal while
writes still arrive."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from csr_vdb.adapters import open_store
from csr_vdb.errors import MigrationError
from csr_vdb.migrations import MigrationPlan, cutover, run_migration, sync_migration, verify_migration
from tests.adapters.conftest import milvus_lite_server  # noqa: F401 - the session fixture, used below
from tests.migrations.conftest import (
    ProjectionEncoder,
    assert_target_equals_source,
    fill_source,
    spawn,
    store_uri,
)
from tests.migrations.online_writer import SourceWriter

DIM, BURST = 16, 24
ROWS = {"milvus": 1500, "qdrant-edge": 1500, "qdrant": 500, "milvus-server": 1500}
BATCH = {"milvus": 150, "qdrant-edge": 150, "qdrant": 50, "milvus-server": 150}


class ThreadWriter:
    """Runs one burst of source writes in a thread of its own each time `burst` is called, and waits
    for it: the migration's reader and writer threads keep going meanwhile."""

    def __init__(self, store, collection: str, id_type: str) -> None:
        self.writer = SourceWriter(store, collection, id_type, seed=11)
        self.bursts = 0

    def burst(self, n: int) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.writer.burst(n)
            except BaseException as exc:  # handed back to the test
                errors.append(exc)

        t = threading.Thread(target=run, name="source-writer")
        t.start()
        t.join()
        if errors:
            raise errors[0]
        self.bursts += 1

    def close(self) -> None:
        pass


class ProcessWriter:
    """The same writes from another process, connected to the same Milvus server."""

    def __init__(self, uri: str, collection: str, id_type: str) -> None:
        self.proc = spawn("tests.migrations.online_writer", uri, collection, id_type, "11",
                          stdin=subprocess.PIPE, stderr=None, text=True)
        assert self._line() == "ready"
        self.bursts = 0

    def _line(self) -> str:
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"source writer process ended (exit {self.proc.poll()})")
        return line

    def burst(self, n: int) -> None:
        self.proc.stdin.write(f"burst {n}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        assert self._line() == f"done {n}"
        self.bursts += 1

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


def _open(kind: str, tmp_path: Path, request) -> tuple:
    if kind == "milvus-server":
        uri = request.getfixturevalue("milvus_lite_server")
        return open_store("milvus", uri), "milvus", uri
    uri = store_uri(kind, tmp_path)
    return open_store(kind, uri), kind, uri


def _writes_while_encoding(writer, encoder):
    """The document encoder of the migration: each batch lets a burst of source writes land first."""

    def encode(x):
        writer.burst(BURST)
        return encoder(x)

    return encode


@pytest.mark.slow
@pytest.mark.parametrize("id_type", ["int", "str"])
@pytest.mark.parametrize("kind", ["milvus", "qdrant-edge", "qdrant", "milvus-server"])
def test_migrate_under_writes_then_sync_converges(kind, id_type, tmp_path, model_dir, request):
    store, store_kind, uri = _open(kind, tmp_path, request)
    source = f"docs_{uuid.uuid4().hex[:8]}"  # the Milvus server is shared by the session
    try:
        fill_source(store, source, ROWS[kind], DIM, id_type=id_type)
        writer = ProcessWriter(uri, source, id_type) if kind == "milvus-server" else ThreadWriter(store, source, id_type)
        enc = ProjectionEncoder(DIM)
        try:
            plan = MigrationPlan.create(store, store_kind=store_kind, uri=uri, source=source, model_dir=model_dir,
                                        batch_size=BATCH[kind])
            run_migration(store, plan, _writes_while_encoding(writer, enc), state_base=tmp_path / "state")
            assert writer.bursts >= ROWS[kind] // BATCH[kind]  # writes landed throughout the migration
        finally:
            writer.close()
        res = sync_migration(store, plan, enc, state_base=tmp_path / "state")
        assert res.status == "synced" and res.inserts and res.reencodes and res.payload_updates and res.deletes
        rep = verify_migration(store, plan, enc, enc, state_base=tmp_path / "state", sample=30)
        assert rep.ok, rep.problems
        assert_target_equals_source(store, plan)
        assert sync_migration(store, plan, enc, state_base=tmp_path / "state").status == "nothing to do"
    finally:
        for name in (f"{source}_live", ):
            store.drop_alias(name)
        for name in (source, f"{source}_csr"):
            store.drop(name)
        store.close()


@pytest.mark.parametrize("kind", ["milvus", "qdrant-edge"])
def test_cutover_syncs_and_refuses_while_writes_arrive(kind, tmp_path, model_dir, request):
    store, store_kind, uri = _open(kind, tmp_path, request)
    base = tmp_path / "state"
    try:
        fill_source(store, "docs", 600, DIM, id_type="str")
        enc = ProjectionEncoder(DIM)
        plan = MigrationPlan.create(store, store_kind=store_kind, uri=uri, source="docs", model_dir=model_dir,
                                    batch_size=100)
        run_migration(store, plan, enc, state_base=base)
        assert verify_migration(store, plan, enc, enc, state_base=base, sample=20).ok
        writer = ThreadWriter(store, "docs", "str")
        writer.burst(BURST)  # writes after the verify: the final sync takes them in
        res = cutover(store, plan, state_base=base, encode=enc)
        assert res.current == "docs_csr" and res.synced >= BURST // 2
        assert_target_equals_source(store, plan)

        writer.burst(BURST)
        assert sync_migration(store, plan, enc, state_base=base).changes
        assert verify_migration(store, plan, enc, enc, state_base=base, sample=20).ok
        writer.burst(BURST)
        # writes keep arriving while the final sync runs: refused, the alias stays where it was
        store.drop_alias(plan.alias)
        with pytest.raises(MigrationError, match="still differ after a final sync .*writes are still arriving"):
            cutover(store, plan, state_base=base, encode=_writes_while_encoding(writer, enc))
        assert store.get_alias(plan.alias) is None
        # the writes stopped: sync, verify, cut over
        assert sync_migration(store, plan, enc, state_base=base).changes
        assert verify_migration(store, plan, enc, enc, state_base=base, sample=20).ok
        assert cutover(store, plan, state_base=base, encode=enc).synced == 0
        assert cutover(store, plan, state_base=base, force=True).forced
    finally:
        store.close()
