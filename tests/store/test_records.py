"""Every user attribute the tool writes or reads is named once, in search.store.records."""

from __future__ import annotations

import ast
from pathlib import Path

from search.store import records
from tests.conftest import REPO


def _literal_attr_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) of each string literal used as a user attr key: ``set_user_attr("x", ...)``,
    ``.user_attrs.get("x")``, ``.user_attrs["x"]``, ``"x" in ....user_attrs`` and
    ``user_attrs={"x": ...}``."""
    found: list[tuple[int, str]] = []

    def is_attrs(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "user_attrs"

    def literal(node: ast.AST | None) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    for node in ast.walk(tree):
        key: str | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "set_user_attr" and node.args:
                key = literal(node.args[0])
            elif node.func.attr == "set_trial_user_attr" and len(node.args) > 1:
                key = literal(node.args[1])
            elif node.func.attr == "get" and is_attrs(node.func.value) and node.args:
                key = literal(node.args[0])
            for kw in node.keywords:
                if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict):
                    found += [(node.lineno, k) for k in map(literal, kw.value.keys) if k is not None]
        elif isinstance(node, ast.Subscript) and is_attrs(node.value):
            key = literal(node.slice)
        elif isinstance(node, ast.Compare) and any(is_attrs(c) for c in node.comparators):
            key = literal(node.left)
        if key is not None:
            found.append((node.lineno, key))
    return found


def test_no_module_spells_out_a_user_attr_name() -> None:
    offenders = []
    for path in sorted((REPO / "search").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{rel}:{line}: {key!r}" for line, key in _literal_attr_names(tree)]
    assert not offenders, "use the constants of search/store/records.py:\n" + "\n".join(offenders)


def test_the_checker_finds_each_way_of_naming_an_attr() -> None:
    code = """
trial.set_user_attr("a", 1)
storage.set_trial_user_attr(7, "b", 2)
x = t.user_attrs.get("c")
y = t.user_attrs["d"]
z = "e" in t.user_attrs
study.enqueue_trial({}, user_attrs={"f": 1})
trial.set_user_attr(records.EPOCHS_RUN_ATTR, 3)
"""
    assert [k for _, k in _literal_attr_names(ast.parse(code))] == ["a", "b", "c", "d", "e", "f"]


def test_each_name_is_a_distinct_key() -> None:
    names = {k: v for k, v in vars(records).items() if k.isupper() and isinstance(v, str)}
    assert len(names) >= 25 and len(set(names.values())) == len(names)
    assert Path(records.__file__).read_text().count("import ") == 1  # only `from __future__ import`
