"""Concurrency and scale-out: a second run of a running plan is refused (exit 7), so are cutover and
rollback of its target; n `--shard i/n` workers (here `--shard auto`, as a Kubernetes Indexed Job
runs them) migrate one collection in parallel processes against one server, and verify covers the
union."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from csr_vdb.adapters import open_store
from csr_vdb.cli.main import main
from tests.helpers import cli_env, cli_process, save_tiny_model
from tests.migrations.test_faults import BATCH, DIM, _migrate, assert_exact, fill, one_error_line

ROWS = 4000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(milvus_server, tmp_path):
    store = open_store("milvus", milvus_server.uri)
    try:
        data = fill(store, ROWS)
    finally:
        store.close()
    return milvus_server, data, save_tiny_model(tmp_path / "model", DIM)


def _run(args, env, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = cli_process(args, env, cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_a_running_migration_refuses_a_second_run_and_any_alias_move(served, tmp_path):
    server, (ids, x, payloads), model = served
    state, gate = tmp_path / "state", tmp_path / "hold"
    env = cli_env(state)
    gate.touch()  # the first run holds at its first batch until the refusals are checked
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.migrations.held_worker", "milvus", server.uri, str(state), str(model),
         str(BATCH), str(gate)], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not list(state.glob("*/journal.sqlite")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        where = ["--store", "milvus", "--uri", server.uri, "--collection", "docs"]
        status = json.loads(_run(["status", *where, "--json"], env, tmp_path).stdout)
        assert status["state"] == "running"
        for args in (_migrate(server.uri, model), _migrate(server.uri, model, "--resume"),
                     ["cutover", *where, "--force"], ["rollback", *where]):
            res = _run(args, env, tmp_path)
            assert res.returncode == 7, (args, res.stderr)
            line = one_error_line(res.stderr)
            assert "is running" in line and f"pid {first.pid}" in line, line
    finally:
        gate.unlink()
        out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err  # the refusals left the running migration alone
    assert _run(["verify", *where], env, tmp_path).returncode == 0
    res = _run(["cutover", *where, "--json"], env, tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["current"] == "docs_csr"
    assert_exact(server.uri, ids, x, payloads, model)


@pytest.mark.slow
def test_shard_workers_in_parallel_processes_then_verify_covers_the_union(served, tmp_path):
    server, (ids, x, payloads), model = served
    state, n = tmp_path / "state", 3
    # as a Kubernetes Indexed Job runs them: the same command, the shard from the environment
    workers = [
        cli_process(_migrate(server.uri, model, "--shard", "auto"), cli_env(state, JOB_COMPLETION_INDEX=str(i),
                    JOB_COMPLETIONS=str(n)), tmp_path)
        for i in range(n)
    ]  # fmt: skip
    results = [w.communicate(timeout=1200) for w in workers]
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, err
    folders = sorted(p.name for p in state.iterdir())
    assert len(folders) == n and all(f"__{i}of{n}__" in f for i, f in enumerate(folders))
    env = cli_env(state)
    where = ["--store", "milvus", "--uri", server.uri, "--collection", "docs"]
    for i in range(n):  # each shard wrote only its own rows, and together all of them
        status = json.loads(_run(["status", *where, "--shard", f"{i}/{n}", "--json"], env, tmp_path).stdout)
        assert status["state"] == "complete" and 0 < status["rows_done"] < ROWS
    res = _run(["verify", *where, "--shard", f"1/{n}", "--json"], env, tmp_path)
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"] and report["shard_count"] == n and report["target_rows"] == ROWS
    assert_exact(server.uri, ids, x, payloads, model)


def test_shard_auto_takes_i_and_n_from_the_job_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"CSR_VDB_STORE": "qdrant-edge", "CSR_VDB_URI": str(tmp_path / "edge"),
           "CSR_VDB_STATE_DIR": str(tmp_path / "state"), "CSR_VDB_CONFIG": None}
    store = open_store("qdrant-edge", str(tmp_path / "edge"))
    fill(store, 200)
    store.close()
    model = save_tiny_model(tmp_path / "model", DIM)
    migrate = ["migrate", "--to", "sparse", "--collection", "docs", "--model", str(model), "--json"]
    for index in range(2):
        res = CliRunner().invoke(main, [*migrate, "--shard", "auto"],
                                 env={**env, "JOB_COMPLETION_INDEX": str(index), "JOB_COMPLETIONS": "2"})
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["shard"] == f"{index}/2"
    for bad, words in (({}, "JOB_COMPLETION_INDEX and JOB_COMPLETIONS"),
                       ({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "2"}, "0 <= i < n"),
                       ({"JOB_COMPLETION_INDEX": "x", "JOB_COMPLETIONS": "2"}, "i/n")):
        job = {"JOB_COMPLETION_INDEX": None, "JOB_COMPLETIONS": None, **bad}
        res = CliRunner().invoke(main, [*migrate, "--shard", "auto"], env={**env, **job})
        assert res.exit_code == 2, res.output
        assert "--shard auto" in res.stderr and words in res.stderr
    res = CliRunner().invoke(main, ["verify", "--collection", "docs", "--shard", "auto"],
                             env={**env, "JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"})
    assert res.exit_code == 0, res.output  # any shard of the split verifies the union
