"""Field machinery: how a config field is declared (:func:`field`, every part by keyword) and how
its metadata is read back (its bounds, fix, whether it is resumable or searchable, the field a
dotted path or a pydantic error location points at). Knows nothing of ConfigError."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import ConfigDict, Field
from pydantic.fields import FieldInfo

SECTION = ConfigDict(extra="forbid")
# Why some fields cannot be in search.space (``field(..., searchable=REASON)``).
DATA_FIXED = "it changes which images are loaded or how they are split, which all trials share"
BOOKKEEPING = "it is run bookkeeping, not a hyperparameter"
SPEED = "it is a speed setting, not a hyperparameter"


def field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | None = None,
    doc: str = "",
    fix: str = "",
    problem: str | None = None,
    searchable: bool | str = True,
    resumable: bool = False,
    **bounds: Any,
) -> Any:
    """A config field, every part named.

    Args:
        default: its value when the config leaves it out (or ``default_factory`` for a section).
        doc: what it is, one line (the JSON Schema's and docs/config.md's description).
        fix: the hint a ConfigError about it ends with (``Fix: ...``).
        problem: the problem a bound or choice error states, instead of the bounds themselves.
        searchable: ``True``, or why ``search.space`` may not name this field (or section).
        resumable: it may change between runs of one study (then it is never searchable either).
        bounds: pydantic's ``ge``/``gt``/``le``/``lt``.

    Returns:
        The pydantic ``Field`` carrying the metadata (``x-fix``, ``x-resumable``, ``x-searchable``,
        ``x-problem`` in its JSON Schema).
    """
    meta: dict[str, Any] = {"x-fix": fix}
    if resumable:
        meta["x-resumable"] = True
    if searchable is not True:
        meta["x-searchable"] = searchable or "it is not a hyperparameter"
    if problem is not None:
        meta["x-problem"] = problem
    if default_factory is not None:
        return Field(default_factory=default_factory, description=doc, json_schema_extra=meta, **bounds)
    if default is dataclasses.MISSING:
        return Field(description=doc, json_schema_extra=meta, **bounds)
    return Field(default, description=doc, json_schema_extra=meta, **bounds)


def schema_root() -> type[Any]:
    """:class:`StudyConfig`, where every dotted path and pydantic error location starts.

    Imported on first use: the sections are declared with this module's helpers, so this module
    cannot import them at load time.
    """
    from search.config._study import StudyConfig

    return StudyConfig


def inner(tp: Any) -> Any:
    """The dataclass or mapping value type inside ``tp`` (Optional, Annotated unwrapped)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def extra(info: FieldInfo | None, key: str) -> Any:
    """The field's metadata entry ``key`` (``x-fix``, ``x-resumable``, ...), or None."""
    meta = info.json_schema_extra if info is not None else None
    return meta.get(key) if isinstance(meta, dict) else None


def scalar_kind(tp: Any) -> tuple[type, bool] | None:
    """(value type, is a fixed set) of a scalar field's annotation; None for sections and lists."""
    tp = inner(tp)
    if typing.get_origin(tp) is Literal:
        return type(typing.get_args(tp)[0]), True
    if tp in (bool, int, float, str):
        return tp, False
    return None


def why_not_searchable(info: FieldInfo) -> str | None:
    """Why ``search.space`` may not name this field (or section); None when it may."""
    if extra(info, "x-resumable"):
        return "it is a run setting (it may change between runs of a study), not a hyperparameter"
    reason = extra(info, "x-searchable")
    return str(reason) if reason is not None else None


def bounds_text(info: FieldInfo) -> str:
    """The field's bounds as a ConfigError states them, e.g. ``must be within [0, 1)``."""
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = f"[{m.ge}"
        elif isinstance(m, annotated_types.Gt):
            lo = f"({m.gt}"
        elif isinstance(m, annotated_types.Le):
            hi = f"{m.le}]"
        elif isinstance(m, annotated_types.Lt):
            hi = f"{m.lt})"
    if lo and hi:
        return f"must be within {lo}, {hi}"
    if lo:
        return f"must be {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    return f"must be {'<=' if hi and hi[-1] == ']' else '<'} {(hi or '')[:-1]}"


def field_at(loc: Sequence[Any]) -> FieldInfo | None:
    """The (deepest) field that ``loc``, a pydantic error location, points into."""
    cls: Any = schema_root()
    info: FieldInfo | None = None
    for part in loc:  # list indices and space parameter names are skipped
        fields: dict[str, FieldInfo] = getattr(cls, "__pydantic_fields__", {})
        if isinstance(part, str) and part in fields:
            info = fields[part]
            cls = inner(info.annotation)
            if typing.get_origin(cls) in (Mapping, dict):
                cls = typing.get_args(cls)[1]
    return info


def resumable_fields() -> tuple[str, ...]:
    """Dotted config fields (or whole sections) that may differ between runs of one study."""

    def walk(cls: Any, prefix: str) -> list[str]:
        out: list[str] = []
        for name, info in getattr(cls, "__pydantic_fields__", {}).items():
            path = f"{prefix}{name}"
            if extra(info, "x-resumable"):
                out.append(path)
            else:
                out += walk(inner(info.annotation), path + ".")
        return out

    return tuple(walk(schema_root(), ""))


def default_of(cls: type[Any], name: str) -> Any:
    """A section field's default value (so other modules never copy a default)."""
    info: FieldInfo = cls.__pydantic_fields__[name]
    return info.get_default(call_default_factory=True)
