"""CLI plumbing: the deprecated option spellings, the --shard check, JSON rendering, tables."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click
import numpy as np
from click.testing import CliRunner

from csr_vdb.cli.render import _label, render_alias
from csr_vdb.cli.ui import AliasedChoice, kv, renamed_option, table, to_jsonable
from csr_vdb.migrations import AliasResult
from tests.cli.conftest import TINY


def test_old_option_spellings_still_work(cli_factory, tmp_path):
    cli, _ = cli_factory("qdrant-edge", rows=60)
    old = cli.run("export", "--collection", "docs", "--out", str(tmp_path / "a.npy"), "--field", "emb", code=2)
    assert "The option 'field' is deprecated. Use --vector-field." in old.stderr
    assert "no vector field 'emb'" in old.stderr  # it reached the library as vector_field
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32))
    trained = cli.json("train", "--from-npy", str(tmp_path / "x.npy"), "--model", str(tmp_path / "m"),
                       "--hidden", "48", *TINY[2:])
    assert trained["hidden_dim"] == 48
    assert "--hidden " not in cli.run("train", "--help").stdout and "--hidden-dim" in cli.run("train", "--help").stdout


def test_new_spelling_wins_over_the_old():
    @click.command()
    @click.option("--hidden-dim", type=int, default=None)
    @renamed_option("--hidden", "hidden_dim", type=int)
    def cmd(hidden_dim):
        click.echo(repr(hidden_dim))

    assert CliRunner().invoke(cmd, ["--hidden", "3"]).stdout == "3\n"
    assert CliRunner().invoke(cmd, ["--hidden", "3", "--hidden-dim", "5"]).stdout == "5\n"
    assert CliRunner().invoke(cmd, []).stdout == "None\n"


def test_aliased_choice():
    @click.command()
    @click.option("--mode", type=AliasedChoice(["a", "b"], {"old": "b"}), default="a")
    def cmd(mode):
        click.echo(mode)

    r = CliRunner()
    assert r.invoke(cmd, ["--mode", "b"]).stdout == "b\n"
    old = r.invoke(cmd, ["--mode", "old"])
    assert old.stdout == "old\n" and "--mode old is deprecated; use --mode b" in old.stderr
    bad = r.invoke(cmd, ["--mode", "c"])
    assert bad.exit_code == 2 and "Invalid value for '--mode'" in bad.output
    assert "old" not in r.invoke(cmd, ["--help"]).stdout


def test_shard_is_checked_as_it_is_parsed(cli_factory):
    cli, _ = cli_factory("qdrant-edge", rows=60)
    for cmd in ("status", "verify", "cutover", "rollback"):
        res = cli.run(cmd, "--collection", "docs", "--shard", "1/1", code=2)
        assert res.stderr.strip() == "error: --shard 1/1: need n >= 1 and 0 <= i < n"


def test_to_jsonable():
    @dataclasses.dataclass
    class D:
        p: Path
        v: float

    res = AliasResult(action="cutover", alias="a", previous=None, current="c")
    assert to_jsonable({"r": res, 1: (np.int64(3), np.float32(0.5)), "d": D(Path("/x"), math.nan)}) == {
        "r": {"action": "cutover", "alias": "a", "previous": None, "current": "c", "forced": False,
              "verified_at": None, "synced": None},
        "1": [3, 0.5],
        "d": {"p": "/x", "v": None},
    }
    assert render_alias(res) == "alias 'a': (new) -> c"


def test_text_rendering():
    assert kv({"a": 1.0, "long key": None, "n": 123456.0}) == "a         1.0000\nlong key  -\nn         123,456"
    lines = [ln.rstrip() for ln in table([["x", 2]], ["name", "count"]).splitlines()]
    assert lines == ["name  count", "----  -----", "x     2"]
    assert _label({"text": "t" * 100}, None, width=10) == "t" * 9 + "…"
    assert _label({"other": 5}, None) == "5" and _label({"text": "a", "n": "b"}, "n") == "b"
    assert _label(None, None) == ""
