"""Demo corpus: first paragraphs of the Python standard library's docstrings, read with `ast`.

Every machine that runs csr-vdb has the standard library's source, under the PSF licence, so the
demo needs no download. Modules are parsed, never imported: importing arbitrary stdlib modules
can have side effects (``antigravity`` opens a browser, ``this`` prints).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Trees that are tests, demos or vendored code: their docstrings are noise for a search demo.
_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__",
               "turtledemo", "ensurepip", "venv", "pydoc_data", "config-3"}


@dataclass(frozen=True)
class Passage:
    """One passage of the demo corpus.

    Attributes:
        id: stable integer id (from a hash of ``name``), non-negative and < 2**63.
        name: qualified name, e.g. ``json.decoder.JSONDecoder.decode``.
        kind: "module", "class" or "function".
        text: the docstring's first paragraph, whitespace-normalised.
    """

    id: int
    name: str
    kind: str
    text: str

    def payload(self) -> dict[str, str]:
        """The payload stored with the passage's vector."""
        return {"name": self.name, "kind": self.kind, "text": self.text}


def first_paragraph(doc: str) -> str:
    """The first blank-line-separated paragraph of a docstring, on one line."""
    lines: list[str] = []
    for line in doc.strip().splitlines():
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line.strip())
    return " ".join(lines)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _walk(tree: ast.Module, module: str) -> Iterator[tuple[str, str, str]]:
    doc = ast.get_docstring(tree)
    if doc:
        yield module, "module", doc

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_"):
                    continue  # private helpers: often terse, not what users search for
                name = f"{prefix}.{child.name}"
                d = ast.get_docstring(child)
                if d:
                    yield name, "class" if isinstance(child, ast.ClassDef) else "function", d
                if isinstance(child, ast.ClassDef):
                    yield from visit(child, name)

    yield from visit(tree, module)


def stdlib_root() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_passages(
    limit: int = 3000,
    *,
    min_chars: int = 40,
    max_chars: int = 600,
    root: str | Path | None = None,
) -> list[Passage]:
    """Collect docstring passages from the standard library's source files.

    Files are visited in sorted order and passages deduplicated by text, so the same interpreter
    always gives the same corpus.

    Args:
        limit: maximum number of passages.
        min_chars: drop paragraphs shorter than this (one-word docstrings).
        max_chars: truncate longer paragraphs (the embedding model reads 256 tokens at most).
        root: directory to walk instead of the standard library (tests).

    Returns:
        Up to ``limit`` passages with unique ids, names and texts.
    """
    base = Path(root) if root is not None else stdlib_root()
    seen_text: set[str] = set()
    seen_id: set[int] = set()
    out: list[Passage] = []
    for path in sorted(base.rglob("*.py")):
        if len(out) >= limit:
            break
        rel = path.relative_to(base).parts
        if any(p in _SKIP_PARTS or p.startswith("config-") for p in rel):
            continue
        if any(p.startswith("_") and p != "__init__.py" for p in rel):
            continue  # private modules mostly duplicate public ones (_pydecimal, _collections_abc)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError) as exc:  # a few stdlib files are templates
            logger.debug("skipping %s: %s", path, exc)
            continue
        module = _module_name(path, base)
        for name, kind, doc in _walk(tree, module):
            text = first_paragraph(doc)[:max_chars]
            if len(text) < min_chars or text in seen_text:
                continue
            pid = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
            if pid in seen_id:
                continue
            seen_text.add(text)
            seen_id.add(pid)
            out.append(Passage(pid, name, kind, text))
            if len(out) >= limit:
                break
    logger.info("collected %d passages from %s", len(out), base)
    return out
