"""Demo corpus: stdlib docstrings parsed with ast (never imported), deduplicated, stable ids."""

from __future__ import annotations

from csr_vdb.corpus import first_paragraph, stdlib_passages


def test_first_paragraph():
    assert first_paragraph("\n  Line one\n  continues.\n\n  Second para.") == "Line one continues."
    assert first_paragraph("") == ""


def test_walks_source_without_importing(tmp_path):
    marker = tmp_path / "imported.txt"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text('"""The package docstring is long enough to keep."""\n')
    (tmp_path / "pkg/mod.py").write_text(
        f'"""Module docs that are long enough to be kept here."""\n'
        f'open({str(marker)!r}, "w").write("side effect")\n'
        "class Thing:\n"
        '    """A thing with a docstring of reasonable length.\n\n    Details not kept."""\n'
        "    def act(self):\n"
        '        """Do the action of the thing, described at length."""\n'
        "    def _hidden(self):\n"
        '        """Private helpers are skipped even when documented well."""\n'
        "def dup():\n"
        '    """Module docs that are long enough to be kept here."""\n'
        "def short():\n"
        '    """Too short."""\n'
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test/test_x.py").write_text('"""Tests are skipped although this docstring is long."""\n')
    (tmp_path / "_private.py").write_text('"""Private modules are skipped although long enough."""\n')
    got = stdlib_passages(100, root=tmp_path)
    assert [(p.name, p.kind) for p in got] == [
        ("pkg", "module"),
        ("pkg.mod", "module"),
        ("pkg.mod.Thing", "class"),
        ("pkg.mod.Thing.act", "function"),
    ]
    assert got[2].text == "A thing with a docstring of reasonable length."
    assert not marker.exists()
    assert len({p.id for p in got}) == 4 and all(0 <= p.id < 2**63 for p in got)
    assert got[1].payload() == {"name": "pkg.mod", "kind": "module", "text": got[1].text}
    assert [p.name for p in stdlib_passages(2, root=tmp_path)] == ["pkg", "pkg.mod"]


def test_real_stdlib_is_stable():
    a = stdlib_passages(300)
    assert len(a) == 300
    assert [p.id for p in a] == [p.id for p in stdlib_passages(300)]
    assert len({p.text for p in a}) == 300
