"""Settings precedence (flags > CSR_VDB_* env > csr-vdb.toml > defaults), secrets, the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from csr_vdb.cli.main import main
from csr_vdb.cli.settings import DEFAULT_URIS, resolve_settings
from csr_vdb.errors import ConfigError


def test_defaults(tmp_path):
    s = resolve_settings({}, env={}, cwd=tmp_path)
    assert (s.store, s.uri, str(s.state_dir), s.token, s.device) == ("milvus", "./csr_vdb.db", ".csr-vdb", None, None)
    assert resolve_settings({"store": "qdrant-edge"}, env={}, cwd=tmp_path).uri == "./csr_vdb_qdrant"
    assert resolve_settings({"store": "qdrant"}, env={}, cwd=tmp_path).uri == DEFAULT_URIS["qdrant"]


def test_precedence_flag_env_file_default(tmp_path):
    (tmp_path / "csr-vdb.toml").write_text(
        'store = "qdrant-edge"\nuri = "file_uri"\nstate_dir = "file_state"\ndevice = "cpu"\n'
    )
    f = resolve_settings({}, env={}, cwd=tmp_path)
    assert (f.store, f.uri, str(f.state_dir), f.device) == ("qdrant-edge", "file_uri", "file_state", "cpu")
    assert f.config_file == tmp_path / "csr-vdb.toml"
    env = {"CSR_VDB_URI": "env_uri", "CSR_VDB_STATE_DIR": "env_state"}
    e = resolve_settings({}, env=env, cwd=tmp_path)
    assert (e.store, e.uri, str(e.state_dir)) == ("qdrant-edge", "env_uri", "env_state")
    fl = resolve_settings({"uri": "flag_uri", "store": "milvus"}, env=env, cwd=tmp_path)
    assert (fl.store, fl.uri, str(fl.state_dir)) == ("milvus", "flag_uri", "env_state")


def test_store_specific_env_and_tokens(tmp_path):
    env = {"CSR_VDB_MILVUS_URI": "http://m:19530", "CSR_VDB_MILVUS_TOKEN": "mtok",
           "CSR_VDB_QDRANT_URL": "http://q:6333", "CSR_VDB_QDRANT_API_KEY": "qkey"}
    m = resolve_settings({}, env=env, cwd=tmp_path)
    assert (m.uri, m.token.get_secret_value()) == ("http://m:19530", "mtok")
    q = resolve_settings({"store": "qdrant"}, env=env, cwd=tmp_path)
    assert (q.uri, q.token.get_secret_value()) == ("http://q:6333", "qkey")
    edge = resolve_settings({"store": "qdrant-edge"}, env=env, cwd=tmp_path)
    assert edge.token is None and edge.uri == "./csr_vdb_qdrant"
    # the generic URI beats the store-specific one; a flag beats both
    assert resolve_settings({}, env={**env, "CSR_VDB_URI": "g.db"}, cwd=tmp_path).uri == "g.db"
    assert resolve_settings({"token": "flagtok"}, env=env, cwd=tmp_path).token.get_secret_value() == "flagtok"
    assert "mtok" not in repr(m) and "mtok" not in json.dumps(m.public())
    creds = resolve_settings({"uri": "https://user:pa55w0rd@milvus.example:19530/db"}, env={}, cwd=tmp_path)
    assert creds.public()["uri"] == "https://user:***@milvus.example:19530/db"
    assert "pa55w0rd" not in json.dumps(creds.public())


@pytest.mark.parametrize(
    "flags, env, toml, match",
    [
        ({"store": "redis"}, {}, None, "unknown store"),
        ({}, {"CSR_VDB_STORE": "nope"}, None, "unknown store"),
        ({}, {}, "store = [", "cannot read config file"),
        ({}, {}, "colour = 'red'", "unknown key"),
        ({"device": "tpu"}, {}, None, "invalid device"),
        ({"timeout": -1}, {}, None, "timeout"),
    ],
)
def test_invalid_settings_raise_config_error(tmp_path, flags, env, toml, match):
    if toml is not None:
        (tmp_path / "csr-vdb.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match):
        resolve_settings(flags, env=env, cwd=tmp_path)


def test_explicit_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_settings({}, env={}, config_path=tmp_path / "missing.toml", cwd=tmp_path)


def test_cli_precedence_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "csr-vdb.toml").write_text('store = "qdrant-edge"\nuri = "from_file"\n')
    r = CliRunner()
    env = {"CSR_VDB_STORE": None, "CSR_VDB_URI": None, "CSR_VDB_CONFIG": None, "CSR_VDB_STATE_DIR": None}

    def show(*args, **extra):
        res = r.invoke(main, ["show-config", "--json", *args], env={**env, **extra}, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert show()["uri"] == "from_file" and show()["store"] == "qdrant-edge"
    assert show(CSR_VDB_URI="from_env")["uri"] == "from_env"
    assert show("--uri", "from_flag", CSR_VDB_URI="from_env")["uri"] == "from_flag"
    other = tmp_path / "other.toml"
    other.write_text('store = "milvus"\n')
    got = show("--config", str(other))
    assert (got["store"], got["uri"]) == ("milvus", "./csr_vdb.db")
    secret = show("--token", "hunter2-secret")
    assert secret["token_set"] is True and "hunter2" not in json.dumps(secret)


def test_installed_entry_point(tmp_path):
    exe = Path(sys.executable).with_name("csr-vdb")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSR_VDB_")}
    run = lambda *a: subprocess.run([str(exe), *a], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)  # noqa: E731
    help_ = run("--help")
    assert help_.returncode == 0 and "migrate" in help_.stdout and "Exit codes" in help_.stdout
    for cmd in ("export", "train", "migrate", "verify", "cutover", "rollback", "status", "search", "eval", "demo"):
        h = run(cmd, "--help")
        assert h.returncode == 0 and "Example:" in h.stdout, cmd
    (tmp_path / "q").mkdir()  # an existing (empty) Qdrant Edge store: the collection is what is missing
    miss = run("status", "--store", "qdrant-edge", "--uri", str(tmp_path / "q"), "--collection", "nope", "--json")
    assert miss.returncode == 6 and miss.stdout == "" and miss.stderr.startswith("error: ")
    assert run("--version").stdout.strip().endswith("0.1.0")


@pytest.mark.slow
def test_entry_point_workflow_across_processes(tmp_path):
    """Each command is its own process: stores must be released between them (Milvus Lite locks its file)."""
    kind = "milvus"
    from tests.cli.conftest import TINY, make_source, uri_for

    exe = Path(sys.executable).with_name("csr-vdb")
    if not exe.exists():
        pytest.skip("console script not available")
    uri = uri_for(kind, tmp_path)
    make_source(kind, uri, rows=100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSR_VDB_")}
    env.update(CSR_VDB_STORE=kind, CSR_VDB_URI=uri, CSR_VDB_STATE_DIR=str(tmp_path / "st"))

    def run(*args):
        p = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    run("train", "--collection", "docs", "--model", "m", *TINY)
    assert run("migrate", "--to", "sparse", "--collection", "docs", "--model", "m")["rows_done"] == 100
    assert run("verify", "--collection", "docs", "--sample", "20")["ok"] is True
    assert run("cutover", "--collection", "docs")["current"] == "docs_csr"


def test_cli_overrides_of_the_bias_latent():
    from csr_vdb.cli.ops import build_configs

    assert build_configs(384, 5000)[0].bias_latent
    # TopK queries never score the bias latent: asking for them turns it off unless asked for
    assert not build_configs(384, 5000, query_projection="encoder")[0].bias_latent
    assert build_configs(384, 5000, query_projection="encoder", bias_latent=True)[0].bias_latent
    assert not build_configs(384, 5000, bias_latent=False)[0].bias_latent
    assert build_configs(384, 5000, query_projection="decoder")[0].bias_latent
