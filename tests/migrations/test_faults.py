"""Faults from every side of a migration: the database server killed (and restarted) mid-run, a full or
read-only state folder, a damaged journal, a plan file edited by hand. Each fault ends in one clear
error line and the right exit code, with the target untouched where nothing could be recorded, and
the migration then completes exactly (ids, payloads and codes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from csr_vdb.adapters import open_store
from csr_vdb.adapters._retry import RetryPolicy
from csr_vdb.cli.main import main
from csr_vdb.migrations import MigrationPlan, run_migration, state_dir
from csr_vdb.model import CSREncoder
from tests.helpers import cli_env, cli_process, clustered, journaled_rows, save_tiny_model
from tests.migrations.conftest import export

DIM, ROWS, BATCH = 16, 6000, 50
SLACK_S = 60.0  # process start-up (torch) on a busy machine; a hang would show as minutes


def fill(store, n: int = ROWS, name: str = "docs"):
    """A source of ``n`` rows (str ids, nested payloads); returns (ids, vectors, payloads)."""
    x, labels = clustered(n, DIM, clusters=8, seed=3)
    ids = [f"doc-{i:06d}" for i in range(n)]
    payloads = [{"label": int(labels[i]), "text": f"row {i} é", "meta": {"i": i, "tags": ["a", str(i % 3)]}}
                for i in range(n)]
    store.create_dense_collection(name, DIM, metric="cosine", id_type="str")
    for s in range(0, n, 2000):
        store.insert_dense(name, ids[s : s + 2000], x[s : s + 2000], payloads[s : s + 2000])
    store.flush(name)
    return ids, x, payloads


def assert_exact(uri: str, ids, x, payloads, model_dir, before: str | None = None, batch: int = BATCH) -> None:
    """The target in the Milvus at ``uri`` holds every source row once, its payload, dense vector and
    code (re-encoded page by page as the migration did: same rows, same model); with ``before``,
    the source's checksum is still that (it was never written)."""
    encoder = CSREncoder.load(model_dir, device="cpu")
    store = open_store("milvus", uri)
    try:
        assert store.count("docs_csr") == len(ids)
        order = sorted(range(len(ids)), key=lambda i: ids[i])  # the source's page order (ascending ids)
        for a in range(0, len(order), batch):
            rows = order[a : a + batch]
            want = encoder.encode(x[rows]).to_qdrant()
            got = {r.id: r for r in store.fetch("docs_csr", [ids[i] for i in rows], with_dense=True, with_sparse=True)}
            for i, (wi, wv) in zip(rows, want):
                r = got[ids[i]]
                assert r.payload == payloads[i]
                np.testing.assert_allclose(r.dense, x[i], rtol=1e-5, atol=1e-6)
                gi, gv = r.sparse
                assert list(gi) == list(wi)
                np.testing.assert_allclose(gv, wv, rtol=0, atol=1e-5)
        if before is not None:
            assert export(store, "docs", 2000) == before
    finally:
        store.close()


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def wait_for_rows(proc: subprocess.Popen, state: Path, rows: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while journaled_rows(state) < rows:
        assert proc.poll() is None, f"the migration ended before the fault: {proc.communicate()}"
        assert time.monotonic() < deadline, "the migration made no progress"
        time.sleep(0.02)


@pytest.fixture
def served(milvus_server, tmp_path):
    """A source collection in a `milvus-lite server` and a tiny saved model."""
    store = open_store("milvus", milvus_server.uri)
    try:
        data = fill(store)
        before = export(store, "docs", 2000)
    finally:
        store.close()
    return milvus_server, data, before, save_tiny_model(tmp_path / "model", DIM)


def _migrate(uri: str, model: Path, *extra: str) -> list[str]:
    return ["migrate", "--to", "sparse", "--store", "milvus", "--uri", uri, "--collection", "docs",
            "--model", str(model), "--batch-size", str(BATCH), *extra]


def _status(uri: str) -> list[str]:
    return ["status", "--store", "milvus", "--uri", uri, "--collection", "docs"]


def _cli_json(args: list[str], env: dict[str, str], cwd: Path, code: int = 0):
    proc = cli_process([*args, "--json"], env, cwd)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == code, err
    return json.loads(out)


def _under_way(served, tmp_path: Path, *flags: str):
    """A `migrate` subprocess with ``flags``, once it has journaled 300 rows: (process, state dir, env)."""
    server, _, _, model = served
    state = tmp_path / "state"
    env = cli_env(state)
    proc = cli_process(_migrate(server.uri, model, *flags), env, tmp_path)
    wait_for_rows(proc, state, 300)
    return proc, state, env


# --------------------------------------------------------------------------- database faults
@pytest.mark.slow
def test_server_killed_mid_migration_exits_5_then_resume_is_exact(served, tmp_path):
    server, (ids, x, payloads), before, model = served
    proc, state, env = _under_way(served, tmp_path, "--retries", "2", "--timeout", "3")
    t_kill = time.monotonic()
    server.kill()
    out, err = proc.communicate(timeout=600)
    noticed = time.monotonic() - t_kill
    assert proc.returncode == 5, err
    line = one_error_line(err)
    assert server.uri in line and "gave up after 3 attempts" in line
    assert noticed < 3.0 + RetryPolicy(retries=2, timeout=3.0).budget + SLACK_S
    done = journaled_rows(state)
    assert 300 <= done < ROWS

    server.start()  # the same data folder and port
    status = _cli_json(_status(server.uri), env, tmp_path)
    assert status["state"] == "failed" and status["rows_done"] == done and "gave up" in status["last_error"]
    resumed = cli_process(_migrate(server.uri, model, "--resume"), env, tmp_path)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    verify = _cli_json(["verify", "--store", "milvus", "--uri", server.uri, "--collection", "docs"], env, tmp_path)
    assert verify["ok"] and verify["schema_check"]["ok"]
    assert_exact(server.uri, ids, x, payloads, model, before=before)


@pytest.mark.slow
def test_server_restart_within_the_retry_budget_is_ridden_out(served, tmp_path):
    server, (ids, x, payloads), _, model = served
    proc, state, env = _under_way(served, tmp_path, "--retries", "12", "--timeout", "5")
    server.restart()  # SIGKILL, then up again on the same data while the migrator retries
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    status = _cli_json(_status(server.uri), env, tmp_path)
    assert status["state"] == "complete" and status["rows_done"] == ROWS
    assert_exact(server.uri, ids, x, payloads, model)


# --------------------------------------------------------------------------- local faults
@pytest.mark.slow
def test_full_state_dir_is_refused_before_the_target_is_written(served, tmp_path):
    """A file-size limit (what a full disk or a quota does to the journal): refused up front."""
    server, _, _, model = served
    state = tmp_path / "state"
    env = cli_env(state)
    proc = cli_process(_migrate(server.uri, model), env, tmp_path, file_size_limit=64 * 1024)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 7, err
    line = one_error_line(err)
    assert "cannot take the migration journal" in line and "free space" in line
    store = open_store("milvus", server.uri)
    try:
        assert not store.has_collection("docs_csr")
    finally:
        store.close()
    assert not list(state.glob("*/journal.sqlite"))  # nothing to resume: a plain run starts cleanly
    proc = cli_process(_migrate(server.uri, model), env, tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


@pytest.mark.slow
def test_disk_fills_mid_run_then_resume_is_exact(served, tmp_path):
    """The state folder on a small tmpfs that another writer fills while the migration runs."""
    server, (ids, x, payloads), _, model = served
    state = tmp_path / "state"
    if not _mount_tmpfs(state, "8m"):
        pytest.skip("needs root and a mountable tmpfs to fill a disk")
    try:
        env = cli_env(state)
        proc = cli_process(_migrate(server.uri, model), env, tmp_path)
        wait_for_rows(proc, state, 300)
        filler = state / "filler"
        with open(filler, "wb") as f:  # take every free byte
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 7, err
        line = one_error_line(err)
        assert "cannot record batch in journal" in line and "--resume" in line
        done = journaled_rows(state)
        filler.unlink()
        resumed = cli_process(_migrate(server.uri, model, "--resume"), env, tmp_path)
        out, err = resumed.communicate(timeout=900)
        assert resumed.returncode == 0, err
        assert journaled_rows(state) == ROWS and done < ROWS
        assert_exact(server.uri, ids, x, payloads, model)
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


# Local faults on the embedded Qdrant Edge, in-process (CliRunner): no server needed.
SMALL = 600


@pytest.fixture
def edge(tmp_path, monkeypatch):
    """A Qdrant Edge source, a saved model, a CLI runner with its settings, and a migration stopped
    after 4 batches (its journal "interrupted")."""
    monkeypatch.chdir(tmp_path)
    uri = str(tmp_path / "edge")
    store = open_store("qdrant-edge", uri)
    data = fill(store, SMALL)
    model = save_tiny_model(tmp_path / "model", DIM)
    plan = MigrationPlan.create(store, store_kind="qdrant-edge", uri=uri, source="docs", model_dir=model,
                                batch_size=BATCH)
    encoder = CSREncoder.load(model, device="cpu")

    def stop_after_four(done: int, total: int) -> None:
        if done >= 4 * BATCH:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_migration(store, plan, encoder.encode, state_base=tmp_path / "state", progress=stop_after_four)
    written = store.count("docs_csr")
    store.close()
    env = {"CSR_VDB_STORE": "qdrant-edge", "CSR_VDB_URI": uri, "CSR_VDB_STATE_DIR": str(tmp_path / "state"),
           "CSR_VDB_DEVICE": "cpu", "CSR_VDB_CONFIG": None}

    def cli(*args: str):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return cli, plan, state_dir(tmp_path / "state", plan), model, data, written


def _edge_target_rows(tmp_path: Path) -> int:
    store = open_store("qdrant-edge", str(tmp_path / "edge"))
    try:
        return store.count("docs_csr")
    finally:
        store.close()


def _refused(res, *words: str) -> str:
    assert res.exit_code == 7, res.output
    line = one_error_line(res.stderr)
    for w in words:
        assert w in line, line
    return line


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "header only"])
def test_damaged_journal_is_refused_with_the_way_to_recover(edge, tmp_path, damage):
    cli, plan, folder, model, _, written = edge
    jpath = folder / "journal.sqlite"
    data = jpath.read_bytes()
    assert 4 * BATCH <= written < SMALL and not (folder / "journal.sqlite-wal").exists()
    jpath.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                       "header only": data[:100]}[damage])
    migrate = ["migrate", "--to", "sparse", "--collection", "docs", "--model", str(model), "--batch-size", str(BATCH)]
    line = _refused(cli(*migrate, "--resume"), "damaged", str(folder), "drop the target")
    assert "never rebuilt silently" in line
    assert _edge_target_rows(tmp_path) == written  # nothing written
    _refused(cli(*migrate), "already exists")  # nor started afresh over it
    _refused(cli("status", "--collection", "docs"), "damaged")
    _refused(cli("verify", "--collection", "docs"), "damaged")
    _refused(cli("cutover", "--collection", "docs", "--force"), "damaged")
    assert _edge_target_rows(tmp_path) == written


def test_plan_file_edited_by_hand_is_refused_and_restored_from_the_journal(edge, tmp_path):
    cli, plan, folder, model, (ids, x, payloads), written = edge
    path = folder / "plan.json"
    original = json.loads(path.read_text())
    path.write_text(json.dumps({**original, "alias": "somewhere_else", "batch_size": 7}, indent=2))
    migrate = ["migrate", "--to", "sparse", "--collection", "docs", "--model", str(model), "--batch-size", str(BATCH)]
    for args in (["status", "--collection", "docs"], ["verify", "--collection", "docs"],
                 ["cutover", "--collection", "docs", "--force"], [*migrate, "--resume"]):
        _refused(cli(*args), "was changed since the migration started", "alias, batch_size", "--resume")
    assert _edge_target_rows(tmp_path) == written
    path.write_text("{ not json")
    _refused(cli("status", "--collection", "docs"), "cannot be read")
    path.unlink()
    _refused(cli("status", "--collection", "docs"), "is missing", "--resume")
    res = cli(*migrate, "--resume")
    assert res.exit_code == 0, res.output
    assert json.loads(path.read_text()) == original  # restored from the journal's copy
    res = cli("status", "--collection", "docs", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["alias"] == original["alias"]
    assert _edge_target_rows(tmp_path) == SMALL


def _make_read_only(path: Path) -> bool:
    """Make a folder and everything in it unwritable (immutable for root, modes for others); False
    when this machine cannot."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            return False
        res = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True)
        if res.returncode != 0:
            return False
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return True
    (path / ".probe").unlink()
    return False


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o700 if p.is_dir() else 0o600)


def test_read_only_state_dir_is_refused_before_the_target_is_written(edge, tmp_path):
    cli, plan, folder, model, _, written = edge
    base = tmp_path / "state"
    if not _make_read_only(base):
        pytest.skip("cannot make a folder read-only here")
    try:
        migrate = ["migrate", "--to", "sparse", "--collection", "docs", "--model", str(model),
                   "--batch-size", str(BATCH)]
        _refused(cli(*migrate, "--resume"), str(folder), "writable")
        assert _edge_target_rows(tmp_path) == written
        # a fresh migration into another target: no state folder can be made, no target is created
        _refused(cli(*migrate, "--target", "docs_other"), "cannot create state folder", "writable --state-dir")
        store = open_store("qdrant-edge", str(tmp_path / "edge"))
        try:
            assert not store.has_collection("docs_other")
        finally:
            store.close()
    finally:
        _make_writable(base)
    res = cli(*migrate, "--resume")
    assert res.exit_code == 0, res.output
    assert _edge_target_rows(tmp_path) == SMALL
