"""The import contract: app.py and views -> tagging -> db, and no two files import each other.

The layer rules live in pyproject.toml (``[tool.importlinter]``); ``make test`` runs
``lint-imports`` and this module runs it too, so a plain ``pytest`` catches a broken layer. File
cycles (even through an import inside a function) are found here with grimp, the graph
import-linter itself builds.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("views", "tagging", "db")


def file_cycles(imports: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a loop (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in imports.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return cycles


def project_imports() -> dict[str, set[str]]:
    graph = grimp.build_graph(*PACKAGES)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def test_the_import_contract_is_kept() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_two_files_import_each_other() -> None:
    imports = project_imports()
    assert "tagging.fixes" in imports, "the graph should cover the library"
    assert file_cycles(imports) == []


def test_the_cycle_check_finds_a_cycle_inside_a_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above could fail: a late import that closes a loop is a cycle too."""
    package = tmp_path / "loopy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from loopy import b\n")
    (package / "b.py").write_text("def late():\n    from loopy import c\n")
    (package / "c.py").write_text("import loopy.a\n")
    (package / "d.py").write_text("import loopy.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loopy")
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert file_cycles(imports) == [["loopy.a", "loopy.b", "loopy.c"]]


def test_app_py_is_the_top_and_nothing_imports_it() -> None:
    tree = ast.parse((ROOT / "app.py").read_text())
    ours = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    } & {"app", *PACKAGES}
    assert ours <= set(PACKAGES)
    importers = [m for m, targets in project_imports().items() if "app" in targets]
    assert importers == []
