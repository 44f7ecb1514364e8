"""The house as DESIGN.md maps it: the layers are subpackages, and no module or function grows past
what a reader can hold (500 lines a module, 60 a function, 150 a CLI command)."""

from __future__ import annotations

import ast
from pathlib import Path

import search

PACKAGE = Path(search.__file__).resolve().parent
SUBPACKAGES = {"config", "engine", "store", "study", "results", "serve", "cli"}
TOP_MODULES = {"__init__.py", "__main__.py", "errors.py"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_COMMAND_LINES = 150


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_tree_shows_the_layers() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    dirs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == TOP_MODULES
    assert dirs == SUBPACKAGES
    assert all((PACKAGE / d / "__init__.py").is_file() for d in SUBPACKAGES)


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _long_functions(limit: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > limit:
                    out[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = size
    return out


def test_no_function_over_60_lines() -> None:
    assert not _long_functions(MAX_FUNCTION_LINES)


def test_each_command_module_is_thin() -> None:
    commands = [p for p in (PACKAGE / "cli").glob("*.py") if not p.name.startswith("_")]
    assert len(commands) >= 13
    long = {p.name: n for p in commands if (n := len(p.read_text().splitlines())) > MAX_COMMAND_LINES}
    assert not long, f"cli modules over {MAX_COMMAND_LINES} lines: {long}"


def test_the_size_check_sees_a_long_function() -> None:
    assert _long_functions(3), "every package has a function over 3 lines: the scan is broken"


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by basename (no __init__.py): two of one name stop the whole run."""
    tests = Path(__file__).parent
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) > 50
    assert sorted({n for n in names if names.count(n) > 1}) == []
