"""Secrets: a Milvus token, the password in a server URL and a Qdrant API key never reach plan files,
journals, reports, logs or any output (`--json`, `--debug` tracebacks and logs, failures included);
state files are readable by their owner only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from csr_vdb.adapters import open_store
from tests.helpers import cli_env, cli_process, free_port, save_tiny_model
from tests.migrations.test_faults import DIM, fill

TOKEN = "tok-S3CR3T-7f3a90"
PASSWORD = "pw-S3CR3T-91c2e4"
API_KEY = "key-S3CR3T-55d0b1"
QUERY_TOKEN = "qs-S3CR3T-0a9b8c"
SECRETS = (TOKEN, PASSWORD, API_KEY, QUERY_TOKEN)


def _run(args, env, cwd) -> str:
    """What a command printed (stdout and stderr), after its exit code: ``-> N``."""
    proc = cli_process(args, env, cwd)
    out, err = proc.communicate(timeout=900)
    return f"-> {proc.returncode}\n{out}\n{err}"


@pytest.mark.slow
def test_secrets_never_reach_state_files_or_output(milvus_server, tmp_path):
    store = open_store("milvus", milvus_server.uri)
    try:
        fill(store, 300)
    finally:
        store.close()
    model = save_tiny_model(tmp_path / "model", DIM)
    state = tmp_path / "state"
    # the password in the URL's user-info, a token in its query string, and the token setting
    uri = milvus_server.uri.replace("http://", f"http://csr:{PASSWORD}@") + f"?token={QUERY_TOKEN}"
    env = cli_env(state, CSR_VDB_STORE="milvus", CSR_VDB_MILVUS_URI=uri, CSR_VDB_MILVUS_TOKEN=TOKEN)
    where = ["--collection", "docs"]
    outputs = [
        _run(["migrate", "--to", "sparse", *where, "--model", model, "--batch-size", "100", "--debug"], env, tmp_path),
        _run(["status", *where, "--json"], env, tmp_path),
        _run(["verify", *where, "--json", "--debug"], env, tmp_path),
        _run(["verify", *where], env, tmp_path),
        _run(["cutover", *where, "--json"], env, tmp_path),
        _run(["rollback", *where, "--debug"], env, tmp_path),
        _run(["status", *where], env, tmp_path),
        _run(["show-config"], env, tmp_path),
        _run(["show-config", "--json", "--token", TOKEN], env, tmp_path),
        _run(["migrate", "--to", "sparse", *where, "--model", model, "--resume", "--json"], env, tmp_path),
    ]
    assert "-> 0" in outputs[0] and "-> 0" in outputs[2] and "-> 0" in outputs[4]
    # failures: the same secrets on a server that is gone, with tracebacks and client logs on
    dead = f"http://csr:{PASSWORD}@127.0.0.1:{free_port()}?token={QUERY_TOKEN}"
    for code, args in ((1, ["status", *where, "--uri", dead, "--token", TOKEN, "--retries", "1", "--debug"]),
                       (5, ["status", *where, "--uri", dead, "--token", TOKEN, "--retries", "1", "--json"]),
                       (1, ["status", *where, "--store", "qdrant", "--uri", f"http://127.0.0.1:{free_port()}",
                            "--retries", "1", "--debug"])):
        text = _run(args, {**env, "CSR_VDB_QDRANT_API_KEY": API_KEY}, tmp_path)
        assert text.startswith(f"-> {code}\n") and "gave up after 2 attempts" in text, text  # --debug: a traceback
        outputs.append(text)
    # a config file holding them too
    (tmp_path / "csr-vdb.toml").write_text(f'store = "qdrant"\nqdrant_api_key = "{API_KEY}"\nmilvus_token = "{TOKEN}"\n')
    outputs.append(_run(["show-config", "--json"], cli_env(state), tmp_path))

    files = [p for p in state.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"plan.json", "journal.sqlite", "verify.json", "cutover.json", "run.lock"}
    for secret in SECRETS:
        for text in outputs:
            assert secret not in text, f"{secret} leaked:\n{text}"
        for p in files:
            assert secret.encode() not in p.read_bytes(), f"{secret} in {p}"
    for p in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is readable by others ({oct(mode)})"
    assert "127.0.0.1" in Path(next(state.glob("*/plan.json"))).read_text()  # the server is still named
