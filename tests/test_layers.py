"""Import directions of the whole project (STYLE.md §1), checked by parsing every module with `ast`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DB_CLIENTS = {"pymilvus", "milvus_lite", "qdrant_client", "qdrant_edge"}
# the only modules allowed to import a database client (the Haystack Qdrant store builds the client's
# request models that qdrant-haystack's own store sends)
CLIENT_MODULES = {
    "adapters/milvus.py", "adapters/qdrant.py", "adapters/qdrant_edge.py", "csr_vdb/integrations/_haystack_qdrant.py",
}
# csr_vdb/integrations/ sits on top of the core and the adapters (it opens stores for the frameworks)
INTEGRATIONS = "csr_vdb/integrations/"
# what migrations/ may import from the project
MIGRATION_PROJECT_OK = {
    "csr_vdb.store", "csr_vdb.adapters.base", "csr_vdb.errors", "csr_vdb.sparse", "csr_vdb.validation",
    "csr_vdb.fileutil",
}
# the store contract: what every layer imports, so it imports (almost) nothing itself
STORE_MODULE = "csr_vdb/store.py"
STORE_PROJECT_OK = {"csr_vdb.errors", "csr_vdb.sparse"}
STORE_THIRD_PARTY_OK = {"numpy"}
MIGRATION_THIRD_PARTY_OK = {"numpy", "pydantic"}
PACKAGES = ("csr_vdb", "adapters", "migrations", "cli")
BARE_NAMES = {"adapters", "migrations", "cli"}  # never importable bare: installed under csr_vdb.*


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """Absolute names of every import in a file (function-level ones too); relative ones resolved."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from csr_vdb import adapters` imports a module by attribute
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod in ("csr_vdb",)]
    return out


def _installed_package(rel: Path) -> str:
    top = rel.parts[0]
    return "csr_vdb" if top == "csr_vdb" else f"csr_vdb.{top}"


def violations(root: Path) -> list[str]:
    """Every import that breaks a layer rule, as ``file:line: message``."""
    bad: list[str] = []
    stdlib = set(sys.stdlib_module_names)
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            rel = path.relative_to(root)
            relp = rel.as_posix()
            for line, name in imports_of(path, _installed_package(rel)):
                first = name.split(".")[0]
                where = f"{relp}:{line}"
                if first in BARE_NAMES:
                    bad.append(f"{where}: bare import '{name}' (use csr_vdb.{name})")
                if first in DB_CLIENTS and relp not in CLIENT_MODULES:
                    bad.append(f"{where}: only the adapter modules may import DB client '{name}'")
                if relp == STORE_MODULE and first != "__future__" and first not in stdlib:
                    if name not in STORE_PROJECT_OK and first not in STORE_THIRD_PARTY_OK:
                        bad.append(f"{where}: the store contract may not import '{name}'")
                if relp.startswith(INTEGRATIONS):
                    if first == "click" or name.startswith(("csr_vdb.migrations", "csr_vdb.cli")):
                        bad.append(f"{where}: integrations must not import '{name}'")
                elif top == "csr_vdb":
                    if first == "click" or any(
                        name == p or name.startswith(p + ".")
                        for p in ("csr_vdb.adapters", "csr_vdb.migrations", "csr_vdb.cli", "csr_vdb.integrations")
                    ):
                        bad.append(f"{where}: core must not import '{name}'")
                elif top == "migrations":
                    if first == "csr_vdb":
                        if not (name.startswith("csr_vdb.migrations") or name in MIGRATION_PROJECT_OK):
                            bad.append(f"{where}: migrations may not import '{name}'")
                    elif first not in stdlib and first not in MIGRATION_THIRD_PARTY_OK and first != "__future__":
                        bad.append(f"{where}: migrations may not import third-party '{name}'")
                elif top == "adapters":
                    if name.startswith(("csr_vdb.migrations", "csr_vdb.cli")) or first in ("click", "torch"):
                        bad.append(f"{where}: adapters must not import '{name}'")
    return bad


def test_project_respects_the_layers():
    assert violations(REPO) == []


def test_every_package_is_checked():
    for top in PACKAGES:
        assert list((REPO / top).rglob("*.py")), f"no modules found under {top}/"
    assert (REPO / STORE_MODULE).is_file()


def test_the_store_contract_is_light_and_everyone_can_import_it():
    """csr_vdb/store.py: stdlib, numpy and two core modules; migrations may import it."""
    names = {name for _, name in imports_of(REPO / STORE_MODULE, "csr_vdb")}
    project = {n for n in names if n.startswith("csr_vdb")}
    assert project <= STORE_PROJECT_OK, project
    assert not {n.split(".")[0] for n in names} & (DB_CLIENTS | {"click", "torch"})
    assert "csr_vdb.store" in MIGRATION_PROJECT_OK


@pytest.mark.parametrize(
    "rel, source, expect",
    [
        ("csr_vdb/x.py", "import click\n", "core must not import 'click'"),
        ("csr_vdb/x.py", "def f():\n    from csr_vdb.adapters.memory import MemoryStore\n", "core must not import"),
        ("csr_vdb/x.py", "from csr_vdb import migrations\n", "core must not import 'csr_vdb.migrations'"),
        ("csr_vdb/x.py", "import pymilvus\n", "only the adapter modules"),
        ("migrations/x.py", "import torch\n", "third-party 'torch'"),
        ("migrations/x.py", "from csr_vdb.model import CSREncoder\n", "may not import 'csr_vdb.model'"),
        ("migrations/x.py", "from csr_vdb.adapters.milvus import MilvusStore\n", "may not import"),
        ("migrations/x.py", "import qdrant_client\n", "only the adapter modules"),
        ("cli/x.py", "import qdrant_edge\n", "only the adapter modules"),
        ("cli/x.py", "from migrations import plan\n", "bare import"),
        ("adapters/memory.py", "import qdrant_client\n", "only the adapter modules"),
        ("adapters/x.py", "from csr_vdb.cli.main import main\n", "adapters must not import"),
        ("csr_vdb/store.py", "import torch\n", "the store contract may not import 'torch'"),
        ("csr_vdb/store.py", "from csr_vdb.model import CSREncoder\n", "may not import 'csr_vdb.model'"),
        ("csr_vdb/store.py", "import qdrant_client\n", "only the adapter modules"),
        ("csr_vdb/store.py", "from csr_vdb.adapters.base import Hit\n", "core must not import"),
        ("csr_vdb/x.py", "from csr_vdb.integrations.langchain import CSRRetriever\n", "core must not import"),
        ("csr_vdb/integrations/x.py", "from csr_vdb.migrations import run_migration\n", "integrations must not"),
        ("csr_vdb/integrations/x.py", "import pymilvus\n", "only the adapter modules"),
    ],
)
def test_checker_catches_violations(tmp_path, rel, source, expect):
    for top in PACKAGES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(source)
    found = violations(tmp_path)
    assert any(expect in v for v in found), found


def test_checker_accepts_allowed_imports(tmp_path):
    for top in PACKAGES:
        (tmp_path / top).mkdir()
    (tmp_path / "migrations/ok.py").write_text(
        "import sqlite3, json\nimport numpy as np\nfrom pydantic import BaseModel\n"
        "from csr_vdb.adapters.base import VectorStore\nfrom csr_vdb.errors import MigrationError\n"
        "from .plan import MigrationPlan\n"
    )
    (tmp_path / "adapters/milvus.py").write_text("from pymilvus import MilvusClient\n")
    (tmp_path / "cli/ok.py").write_text("import click\nfrom csr_vdb.migrations import run_migration\n")
    (tmp_path / "csr_vdb/ok.py").write_text("import torch\nfrom csr_vdb.sparse import SparseVectors\n")
    (tmp_path / "csr_vdb/store.py").write_text(
        "import json, warnings\nimport numpy as np\nfrom csr_vdb.errors import DataError\n"
        "from csr_vdb.sparse import SparseVectors\n"
    )
    (tmp_path / "migrations/uses_store.py").write_text("from csr_vdb.store import VectorStore, check_ids\n")
    (tmp_path / "csr_vdb/integrations").mkdir()
    (tmp_path / "csr_vdb/integrations/ok.py").write_text(
        "import langchain_core\nfrom csr_vdb.adapters import open_store\nfrom csr_vdb.retriever import Retriever\n"
    )
    assert violations(tmp_path) == []
