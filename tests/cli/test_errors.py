"""Every documented exit code, produced by the bad input it documents (one test per code)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli.conftest import TINY

KIND = "qdrant-edge"  # fast to open; the error paths are the CLI's, not the engine's


@pytest.fixture
def cli(cli_factory):
    c, _ = cli_factory(KIND, rows=120)
    return c


@pytest.fixture
def migrated(cli):
    cli.run("train", "--collection", "docs", "--model", "m", *TINY)
    cli.run("migrate", "--to", "sparse", "--collection", "docs", "--model", "m")
    return cli


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_exit_1_other_error_file_cannot_be_written(cli):
    (cli.cwd / "afile").write_text("not a directory")
    res = cli.run("export", "--collection", "docs", "--out", "afile/x.npy", code=1)
    assert "afile" in _one_error_line(res)
    assert "Traceback" not in res.output


def test_exit_2_config_error(cli):
    res = cli.run("migrate", "--to", "sparse", "--collection", "docs", "--model", "m", "--shard", "3/2", code=2)
    assert "--shard" in _one_error_line(res)
    (cli.cwd / "csr-vdb.toml").write_text('store = "milvus"\nbogus = 1\n')
    res = cli.run("status", "--collection", "docs", env={"CSR_VDB_STORE": None}, code=2)
    assert "bogus" in _one_error_line(res)


def test_exit_2_click_usage_error(cli):
    res = cli.run("migrate", "--collection", "docs", code=2)  # --to and --model missing
    assert "Missing option" in res.output


def test_exit_3_data_error(cli):
    q = np.ones((2, 16), np.float32)
    q[1, 3] = np.nan
    np.save(cli.cwd / "bad.npy", q)
    res = cli.run("search", "--collection", "docs", "--vectors", "bad.npy", "--mode", "dense", code=3)
    assert "NaN" in _one_error_line(res) or "nan" in _one_error_line(res).lower()


def test_exit_3_wrong_dimension(cli):
    np.save(cli.cwd / "wide.npy", np.ones((1, 17), np.float32))
    res = cli.run("search", "--collection", "docs", "--vectors", "wide.npy", "--mode", "dense", code=3)
    assert "17" in _one_error_line(res) or "dim" in _one_error_line(res)


def test_exit_4_model_error(cli):
    res = cli.run("migrate", "--to", "sparse", "--collection", "docs", "--model", "no_such_model", code=4)
    assert "no_such_model" in _one_error_line(res)
    (cli.cwd / "broken").mkdir()
    (cli.cwd / "broken/config.json").write_text("{not json")
    (cli.cwd / "broken/model.safetensors").write_bytes(b"\0" * 10)
    cli.run("migrate", "--to", "sparse", "--collection", "docs", "--model", "broken", code=4)


def test_exit_5_store_error_and_no_secret_echoed(cli):
    (cli.cwd / "afile").write_text("x")
    res = cli.run("status", "--collection", "docs", "--uri", "afile", code=5)
    assert "afile" in _one_error_line(res)
    res = cli.run("status", "--collection", "docs", "--store", "milvus", "--uri", "http://127.0.0.1:9",
                  "--timeout", "1", "--token", "s3cr3t-token", code=5)
    line = _one_error_line(res)
    assert "127.0.0.1:9" in line and "s3cr3t" not in res.output


def test_exit_6_collection_not_found(cli):
    res = cli.run("train", "--collection", "nope", "--model", "m", code=6)
    assert "nope" in _one_error_line(res)
    cli.run("verify", "--collection", "nope", code=6)


def test_exit_7_migration_refused(migrated):
    cli = migrated
    res = cli.run("migrate", "--to", "sparse", "--collection", "docs", "--model", "m", code=7)
    assert "resume" in _one_error_line(res)
    # cutover before a passing verify is refused too
    cli.run("cutover", "--collection", "docs", code=7)


def test_exit_8_verification_failed(migrated):
    cli = migrated
    store = cli.open()
    try:
        rec = store.fetch("docs_csr", [13], with_dense=True, with_sparse=True)[0]
        from csr_vdb.sparse import SparseVectors

        sp = SparseVectors.from_qdrant([rec.sparse], 65)  # h=64 + the recipe's bias latent
        store.upsert("docs_csr", [13], sp, [{"label": -1, "text": "tampered"}], dense=rec.dense[None, :])
        store.flush("docs_csr")
    finally:
        store.close()
    res = cli.run("verify", "--collection", "docs", "--sample", "20", code=8)
    assert "payload" in res.output
    out = cli.json("verify", "--collection", "docs", "--sample", "20", code=8)
    assert out["ok"] is False and 13 in out["payload_mismatch_ids"]


def test_json_errors_keep_stdout_clean(cli):
    res = cli.run("status", "--collection", "nope", "--json", code=6)
    assert res.stdout == ""
    assert res.stderr.startswith("error: ")


def test_debug_shows_the_traceback(cli):
    from csr_vdb.errors import CollectionNotFoundError

    with pytest.raises(CollectionNotFoundError):
        cli.run("status", "--collection", "nope", "--debug", code=6)


def test_exit_1_unexpected_exception_is_one_line(cli, monkeypatch):
    import csr_vdb.cli.ops as ops

    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ops, "export_collection", boom)
    res = cli.run("export", "--collection", "docs", "--out", "x.npy", code=1)
    assert _one_error_line(res) == "error: unexpected RuntimeError: boom second line (run with --debug for the traceback)"


def test_missing_embedded_database_is_a_store_error_and_creates_nothing(tmp_path):
    """A typo in --uri must not create an empty database at the wrong place."""
    from click.testing import CliRunner

    from csr_vdb.cli.main import main

    for store, name in (("milvus", "typo.db"), ("qdrant-edge", "typo_dir")):
        uri = tmp_path / name
        result = CliRunner().invoke(main, ["status", "--store", store, "--uri", str(uri), "--collection", "docs"])
        assert result.exit_code == 5, result.output
        assert "no " in result.output and str(uri) in result.output
        assert not uri.exists()
