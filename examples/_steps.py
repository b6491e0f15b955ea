"""What the framework examples share: their command line, a fresh working folder, and the operator's
two steps (``csr-vdb train``, then ``csr-vdb migrate --to sparse``) run through the CLI, as in
production. Each example keeps only what the framework itself does."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    """An example's files: the qdrant-client local-mode folder, the encoder and the migration state."""

    qdrant: str
    model: Path
    state: Path


def parse_args(doc: str, workdir: str, argv: list[str] | None) -> argparse.Namespace:
    """The examples' command line: a question, the working folder, the collection's size, epochs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("question", nargs="?", default="How do I read a JSON document from a file?")
    ap.add_argument("--dir", default=workdir, help="working directory (database, model, state)")
    ap.add_argument("--limit", type=int, default=1000, help="passages in the collection")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    return ap.parse_args(argv)


def fresh_workdir(folder: str) -> Workdir:
    """The folders under ``folder``, emptied: each run starts from nothing."""
    root = Path(folder)
    work = Workdir(str(root / "qdrant"), root / "model", root / "state")
    for old in (Path(work.qdrant), work.model, work.state):
        shutil.rmtree(old, ignore_errors=True)
    return work


def train_and_migrate(work: Workdir, collection: str, epochs: int | None = None) -> None:
    """Train an encoder on ``collection`` and migrate it to ``<collection>_csr`` with the CLI."""
    where = ["--store", "qdrant", "--uri", work.qdrant, "--state-dir", str(work.state), "--collection", collection]
    more = ["--epochs", str(epochs)] if epochs else []
    cli = [sys.executable, "-m", "csr_vdb.cli.main"]
    for step in (["train", *more], ["migrate", "--to", "sparse"]):
        subprocess.run([*cli, *step, *where, "--model", str(work.model)], check=True)
