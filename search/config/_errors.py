"""ConfigError, and pydantic's validation errors turned into one ConfigError of one line (the
field's dotted path, the value, the problem, the fix)."""

from __future__ import annotations

import dataclasses
import reprlib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from search.config._fields import bounds_text, extra, field_at, inner, schema_root
from search.errors import InputError


class ConfigError(InputError):
    """A bad config value: names the field, the value and how to fix it (exit 2; a ValueError too).

    The message is ``FIELD: PROBLEM (got VALUE). Fix: FIX``; with ``detail`` (one sentence, e.g. the
    places a path was looked for) ``FIELD: PROBLEM (got VALUE). DETAIL. Fix: FIX``.
    """

    def __init__(self, field_path: str, value: Any, problem: str, fix: str, *, detail: str = "") -> None:
        self.field = field_path
        self.value = value
        self.problem = problem
        self.fix = fix
        self.detail = detail
        middle = f" {detail}." if detail else ""
        super().__init__(f"{field_path}: {problem} (got {short_repr(value)}).{middle} Fix: {fix}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 120, 60, 80


def short_repr(value: Any, limit: int = 200) -> str:
    """A bounded ``repr(value)``: work and length stay small for huge or deeply shared values."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # ints beyond 4300 digits have no repr
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc_path(loc: Sequence[Any]) -> str:
    """A pydantic error location as a path: ``("search", "space", "c1", 0)`` -> ``search.space.c1[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_TYPE_PROBLEMS = {
    "int": "expected an integer",
    "float": "expected a number",
    "finite_number": "expected a finite number",
    "bool": "expected true or false",
    "string": "expected a string",
    "tuple": "expected a list",
    "list": "expected a list",
    "dataclass": "expected a mapping of keys",
    "dict": "expected a mapping of keys",
    "mapping": "expected a mapping of keys",
    "missing": "missing",
    "recursion": "a recursive value",
}


_NO_FIX = "see `search schema`"
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_UNKNOWN_KEY_ERRORS = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")


def _unknown_key(root: str, loc: tuple[Any, ...], value: Any) -> ConfigError:
    path = ".".join(p for p in (root, _loc_path(loc[:-1]), str(loc[-1])) if p)
    section = field_at(loc[:-1])
    cls = inner(section.annotation) if section is not None else schema_root()
    if typing.get_origin(cls) in (Mapping, dict):  # a key inside a mapping's value (a space parameter)
        cls = inner(typing.get_args(cls)[1])
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    fix = f"remove it or use one of: {', '.join(names)}" if names else "remove it"
    return ConfigError(path, value, "unknown key", fix)


def _from_pydantic(exc: ValidationError, root: str = "") -> ConfigError:
    """One ConfigError for the first problem pydantic found: field path, value, problem, fix."""
    err = exc.errors(include_url=False)[0]
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    path = ".".join(p for p in (root, _loc_path(loc)) if p)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # from the config's own validators; its field is relative to loc
        sub = cause.field
        full = path + sub if sub.startswith("[") else ".".join(p for p in (path, sub) if p)
        return ConfigError(full or "config", cause.value, cause.problem, cause.fix)
    if kind in _UNKNOWN_KEY_ERRORS and loc:
        return _unknown_key(root, loc, value)
    path = path or "config"
    info = field_at(loc)
    fix = extra(info, "x-fix") or _NO_FIX
    if kind == "literal_error" and info is not None:
        choices = [str(a) for a in typing.get_args(inner(info.annotation))] or ["a listed value"]
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        fix = fix if fix != _NO_FIX else f"use one of: {', '.join(choices)}"
        return ConfigError(path, value, extra(info, "x-problem") or f"must be {listed}", fix)
    if kind in _BOUND_ERRORS and info is not None:
        if isinstance(loc[-1], int):  # an item of a list field: name the field
            path = path.rsplit("[", 1)[0]
        return ConfigError(path, value, extra(info, "x-problem") or bounds_text(info), fix)
    if kind == "missing" and loc and isinstance(loc[-1], str):
        leaf = loc[-1]
        return ConfigError(path.rpartition(".")[0] or "config", None, f"missing {leaf}", f"add {leaf}")
    problem = next((text for prefix, text in _TYPE_PROBLEMS.items() if kind.startswith(prefix)), None)
    problem = problem or str(err["msg"]).lower()
    if problem == "expected a mapping of keys":
        fix = "write key: value lines"
    elif fix == _NO_FIX and problem.startswith("expected"):
        example = "3" if "integer" in problem else "true" if "true" in problem else "0.5"
        fix = f"write {loc[-1] if loc else 'key'}: {example}"
    return ConfigError(path, value, problem, fix)


ALONE = "alone"  # validation context of build(alone=True): field checks only


def build(cls: type[Any], raw: Any, root: str = "", *, alone: bool = False) -> Any:
    """Validate ``raw`` as config section ``cls``.

    Args:
        cls: a config class (:class:`StudyConfig` or one of its sections).
        raw: its plain mapping (None: all defaults).
        root: the section's dotted path, prefixed to the field a ConfigError names.
        alone: one searched value checked with the other fields at their defaults: checks across
            fields are skipped (``check_space_mixes`` checks the space's real mixes).

    Returns:
        The validated, frozen ``cls`` instance.

    Raises:
        ConfigError: the first problem, as one line naming ``root``.field, the value and the fix.
    """
    try:
        context = {ALONE: True} if alone else None
        return adapter(cls).validate_python({} if raw is None else raw, context=context)
    except ValidationError as exc:
        raise _from_pydantic(exc, root) from None
    except RecursionError as exc:
        raise ConfigError(root or "config", None, "nested too deeply", "flatten the value") from exc


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def adapter(cls: type[Any]) -> TypeAdapter[Any]:
    """pydantic's validator (and JSON Schema writer) of config class ``cls``, made once."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]
