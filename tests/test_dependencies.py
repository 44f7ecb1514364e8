"""Every third-party module that search/ imports is declared in pyproject.toml.

An import at module level runs for every user, so its distribution must be a core dependency; an
import inside a function runs only where that feature is used, so an extra may provide it. The
check reads the source (not what happens to be installed in this venv), so an undeclared import
fails here before it fails a new user's first command.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "search"


@dataclass(frozen=True)
class Found:
    module: str  # top-level import name, e.g. "PIL"
    where: str  # file:line
    module_level: bool


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, spec
    return _norm(match.group(1))


def declared() -> tuple[set[str], set[str]]:
    """(core, core + every extra) distribution names from pyproject.toml, normalised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {_requirement_name(s) for specs in project["optional-dependencies"].values() for s in specs}
    return core, core | extras


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST, path: str, in_function: bool, out: list[Found]) -> None:
    for child in ast.iter_child_nodes(node):
        if _is_type_checking_block(child):
            continue  # never runs: mypy's business, not a user's
        if isinstance(child, ast.Import):
            for alias in child.names:
                out.append(Found(alias.name.split(".")[0], f"{path}:{child.lineno}", not in_function))
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            out.append(Found(child.module.split(".")[0], f"{path}:{child.lineno}", not in_function))
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        _walk(child, path, nested, out)


def third_party_imports() -> list[Found]:
    out: list[Found] = []
    for file in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        _walk(ast.parse(file.read_text(), rel), rel, False, out)
    stdlib = sys.stdlib_module_names
    return [f for f in out if f.module not in stdlib and f.module not in (PACKAGE, "__future__")]


# Import name -> distribution, for the few whose names differ, so the check does not depend on what
# this venv happens to have installed. Anything not listed is looked up in the installed metadata.
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "optuna_dashboard": "optuna-dashboard",
    "annotated_types": "annotated-types",
    "gradio_client": "gradio-client",
}


@functools.cache
def _installed() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed package: once


def distribution_of(module: str) -> str:
    if module in IMPORT_TO_DIST:
        return IMPORT_TO_DIST[module]
    dists = _installed().get(module)
    return _norm(dists[0]) if dists else _norm(module)


def test_the_scan_sees_imports_at_both_levels() -> None:
    found = third_party_imports()
    assert any(f.module == "torch" and f.module_level for f in found)
    assert any(f.module == "pydantic" and f.module_level for f in found)
    assert any(not f.module_level for f in found), "no function-level import found: the scan is broken"


def test_every_module_level_import_is_a_core_dependency() -> None:
    core, _ = declared()
    missing = sorted(
        f"{f.where}: import {f.module} (distribution {distribution_of(f.module)})"
        for f in third_party_imports()
        if f.module_level and distribution_of(f.module) not in core
    )
    assert not missing, "add to [project] dependencies in pyproject.toml:\n" + "\n".join(missing)


def test_every_function_level_import_is_declared_somewhere() -> None:
    _, anywhere = declared()
    missing = sorted(
        f"{f.where}: import {f.module} (distribution {distribution_of(f.module)})"
        for f in third_party_imports()
        if not f.module_level and distribution_of(f.module) not in anywhere
    )
    assert not missing, "declare in pyproject.toml (a dependency or an extra):\n" + "\n".join(missing)


def test_an_undeclared_import_would_be_caught(tmp_path: Path) -> None:
    source = "import yaml\nimport not_a_declared_dist\n\ndef f():\n    import gradio\n"
    out: list[Found] = []
    _walk(ast.parse(source), "x.py", False, out)
    core, anywhere = declared()
    levels = {f.module: f.module_level for f in out}
    assert levels == {"yaml": True, "not_a_declared_dist": True, "gradio": False}
    assert distribution_of("yaml") in core
    assert distribution_of("not_a_declared_dist") not in anywhere
    assert distribution_of("gradio") in anywhere and distribution_of("gradio") not in core
