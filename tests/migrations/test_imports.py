"""migrations/ imports only the store contract, errors, sparse, validation, fileutil, pydantic, sqlite3, numpy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "migrations"
ALLOWED_CSR = {
    "csr_vdb.errors",
    "csr_vdb.sparse",
    "csr_vdb.validation",
    "csr_vdb.fileutil",
    "csr_vdb.store",  # the store contract
}
BANNED_TOP = {"torch", "pymilvus", "qdrant_client", "qdrant_edge", "milvus_lite", "click", "tqdm", "scipy"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_migrations_import_only_what_they_may():
    files = sorted(ROOT.glob("*.py"))
    assert files
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            assert top not in BANNED_TOP, f"{f.name} imports {name}"
            if name.startswith("csr_vdb.") and not name.startswith("csr_vdb.migrations"):
                assert name in ALLOWED_CSR, f"{f.name} imports {name}"
            assert not name.startswith(("adapters", "migrations", "cli")), f"{f.name}: import via csr_vdb.*"


def test_importing_migrations_loads_no_torch_or_client():
    code = (
        "import sys, csr_vdb.migrations; "
        "bad = [m for m in ('torch', 'pymilvus', 'qdrant_client', 'qdrant_edge', 'click') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
