"""The search space: parameter specs (:class:`ParamSpec`), the five short names and the default
space, dotted paths of config fields (which may be searched, their values checked by the field
itself), and the mixes of values a space can sample (:func:`space_corners`)."""

from __future__ import annotations

import dataclasses
import decimal
import functools
import itertools
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BeforeValidator, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from search.config._errors import ConfigError, build, short_repr
from search.config._fields import SECTION, field, inner, scalar_kind, schema_root, why_not_searchable
from search.config._types import MAX_INT, Bool, Num, Value, num

if TYPE_CHECKING:
    from search.config._study import StudyConfig

PARAM_NAMES = ("c1", "c2", "l1", "lr", "batch_size")
INT_PARAMS = frozenset({"c1", "c2", "l1", "batch_size"})


@dataclass(frozen=True, config=SECTION)
class ParamSpec:
    """One searched parameter: ``choices``, a ``low``/``high`` range (+ log/step), or a fixed ``value``.

    A bare number is a fixed value: ``lr: 0.001`` is ``lr: {value: 0.001}``.
    """

    choices: tuple[Value, ...] | None = field(
        default=None, doc="values to choose from", fix="list at least one value"
    )
    low: Num | None = field(default=None, doc="lowest value", fix="give both low and high, or choices")
    high: Num | None = field(default=None, doc="highest value", fix="give both low and high, or choices")
    log: Bool = field(default=False, doc="sample on a log scale", fix="write true or false")
    step: Num | None = field(default=None, doc="grid step between low and high", fix="use step > 0")
    value: Value | None = field(default=None, doc="a fixed value (not searched)", fix="give a value")

    @property
    def fixed(self) -> bool:
        """A fixed value, not searched."""
        return self.value is not None

    def as_yaml(self) -> Any:
        """The compact form a user would write."""
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    @model_validator(mode="before")
    @classmethod
    def _compact_forms(cls, raw: Any) -> Any:
        if isinstance(raw, list):
            raise ConfigError("", raw, "a bare list is ambiguous", f"write {{choices: {short_repr(raw)}}}")
        if isinstance(raw, int | float | str):  # true/false too: a fixed value of a bool field
            return {"value": raw}
        if raw is None or (isinstance(raw, Mapping) and "value" in raw and raw["value"] is None):
            raise ConfigError(
                "",
                raw,
                "null is not a parameter spec",
                "give {choices: [...]}, {low: ..., high: ...} or a value, or remove the entry",
            )
        if isinstance(raw, Mapping):
            keys = set(raw)
            unknown = [k for k in raw if k not in SPEC_KEYS]
            if unknown:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ConfigError(
                    str(unknown[0]), raw[unknown[0]], "unknown key", f"remove it or use one of: {names}"
                )
            if "value" in keys and len(keys) > 1:
                raise ConfigError("", dict(raw), "value fixes the parameter", "give value alone")
            if "choices" in keys and (keys & {"low", "high", "step"} or raw.get("log")):
                raise ConfigError("", dict(raw), "choices and a range are exclusive", "keep one of them")
            if not keys & {"value", "choices"}:
                for key in ("low", "high"):
                    if key not in keys:
                        raise ConfigError(
                            "", dict(raw), f"missing {key}", "give both low and high, or choices"
                        )
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.choices is not None:
            if not self.choices:
                raise ConfigError("choices", [], "expected a non-empty list", "list at least one value")
            if len(set(self.choices)) != len(self.choices):
                raise ConfigError(
                    "choices", list(self.choices), _duplicates(self.choices), "list each value once"
                )
        if self.step is not None and self.step <= 0:
            raise ConfigError("step", self.step, "step must be positive", "use step > 0")
        if self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ConfigError(
                    "",
                    self.as_yaml(),
                    f"low ({_fmt_num(self.low)}) > high ({_fmt_num(self.high)})",
                    "swap low and high",
                )
            if self.log and self.step is not None:
                raise ConfigError("", self.as_yaml(), "log and step are exclusive", "drop one of them")
        return self


def _duplicates(written: Sequence[Any], keys: Sequence[Any] | None = None) -> str:
    """``duplicate choices: 8 is listed twice``, or ``2 and 2.0 are the same value``: the first
    choice equal to an earlier one (compared by ``keys``, default the values)."""
    keys = written if keys is None else keys
    for i, key in enumerate(keys):
        j = next((j for j in range(i) if keys[j] == key), None)
        if j is not None:
            a, b = short_repr(written[j]), short_repr(written[i])
            return (
                f"duplicate choices: {a} is listed twice"
                if a == b
                else f"duplicate choices: {a} and {b} are the same value"
            )
    return "duplicate choices"


def _fmt_num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else short_repr(v)


def _typed_spec(name: str, spec: ParamSpec) -> ParamSpec:
    """One of the five parameters: numbers only, ints for the integer ones (integral floats
    allowed), floats for the rest, all positive."""
    changes: dict[str, Any] = {}
    for key in ("choices", "low", "high", "step", "value"):
        raw = getattr(spec, key)
        if raw is None:
            continue
        items = raw if key == "choices" else (raw,)
        out: list[float] = []
        for i, v in enumerate(items):
            sub = f"{name}.{key}[{i}]" if key == "choices" else f"{name}.{key}"
            try:
                number = num(v)
            except ConfigError as exc:
                example = 3 if name in INT_PARAMS else 0.001
                raise ConfigError(sub, v, exc.problem, f"write {name}: {example}") from None
            if name in INT_PARAMS:
                if isinstance(number, float) and not number.is_integer():
                    raise ConfigError(sub, number, "expected an integer", f"write {name}: 3")
                if abs(number) > MAX_INT:  # one rule for every integer the config takes
                    raise ConfigError(
                        sub, number, f"too large: at most {MAX_INT} (2**53)", f"write {name}: 3"
                    )
                out.append(int(number))
            else:
                try:
                    out.append(float(number))
                except OverflowError:
                    raise ConfigError(sub, v, "number too large", "use a finite value") from None
        changes[key] = tuple(out) if key == "choices" else out[0]
    typed = dataclasses.replace(spec, **changes)
    values = [v for v in (typed.value, typed.low, typed.high) if v is not None] + list(typed.choices or ())
    if any(isinstance(v, int | float) and v <= 0 for v in values):
        raise ConfigError(name, typed.as_yaml(), "must be positive", "use values > 0")
    return typed


DEFAULT_SPACE: Mapping[str, ParamSpec] = types.MappingProxyType(
    {
        name: _typed_spec(name, spec)
        for name, spec in {
            "c1": ParamSpec(choices=(8, 16, 32)),
            "c2": ParamSpec(low=16, high=64, step=16),
            "l1": ParamSpec(low=32, high=256, log=True),
            "lr": ParamSpec(low=1.0e-4, high=1.0e-2, log=True),
            "batch_size": ParamSpec(choices=(32, 64, 128)),
        }.items()
    }
)


# --------------------------------------------------------------------------- dotted parameters
# Besides the five names, search.space takes dotted paths of scalar config fields
# (``train.weight_decay``). Which fields qualify is read from the fields' metadata: a scalar
# (number, string, true/false or a fixed set of them) that is neither resumable nor marked
# ``searchable=REASON``, in sections that are neither. Values are checked by the field itself.

SPEC_KEYS = frozenset(f.name for f in dataclasses.fields(ParamSpec))


@dataclasses.dataclass(frozen=True)
class _Target:
    path: str
    kind: type  # int, float, bool or str
    literal: bool  # a fixed set of values (choices only)


@functools.cache
def searchable_fields() -> tuple[str, ...]:
    """Every dotted config field that ``search.space`` may name (besides the five short names)."""

    def walk(cls: Any, prefix: str) -> list[str]:
        out: list[str] = []
        for name, info in getattr(cls, "__pydantic_fields__", {}).items():
            if why_not_searchable(info) is not None:
                continue
            if scalar_kind(info.annotation) is not None:
                out.append(prefix + name)
            else:
                out += walk(inner(info.annotation), f"{prefix}{name}.")
        return out

    return tuple(p for p in walk(schema_root(), "") if "." in p)


def _fields_hint(prefix: str) -> str:
    names = [p for p in searchable_fields() if p.startswith(prefix)] or list(searchable_fields())
    return "search one of: " + ", ".join(names)


def _target(path: str, shown: Any) -> _Target:
    """The scalar field ``path`` names; ConfigError (field: ``path``) when it cannot be searched."""
    cls: Any = schema_root()
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields: dict[str, FieldInfo] = getattr(cls, "__pydantic_fields__", {})
        parent = ".".join(parts[:i])
        if part not in fields:
            if i == 0 and len(parts) == 1:
                raise ConfigError(
                    path,
                    shown,
                    "unknown parameter",
                    f"search one of: {', '.join(PARAM_NAMES)}, or a config field such as train.weight_decay",
                )
            where = "" if fields else f" ({parent} is a value, not a section)"
            hint = _fields_hint(parent + "." if fields and parent else "")
            raise ConfigError(path, shown, f"unknown config field{where}", hint)
        info = fields[part]
        reason = why_not_searchable(info)
        if reason is not None:
            where = ".".join(parts[: i + 1])
            what = f"{where} cannot be searched" if where != path else "cannot be searched"
            raise ConfigError(
                path, shown, f"{what}: {reason}", f"set it outside search.space, or {_fields_hint('')}"
            )
        cls = inner(info.annotation)
    kind = scalar_kind(cls)
    if kind is None:
        if dataclasses.is_dataclass(cls):
            raise ConfigError(path, shown, "is a section, not a value", _fields_hint(path + "."))
        raise ConfigError(
            path,
            shown,
            "is not a single value (only scalar fields can be searched)",
            f"set {path} outside search.space, or {_fields_hint('')}",
        )
    return _Target(path, kind[0], kind[1])


def read_dotted(cfg: Any, path: str) -> Any:
    """The value of dotted field ``path`` (``train.weight_decay``) in config ``cfg``."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _field_value(target: _Target, sub: str, value: Any) -> Any:
    """``value`` as the field ``target`` takes it (its own type and bounds), or ConfigError."""
    raw: dict[str, Any] = {}
    set_dotted(raw, target.path, value)
    try:
        built = build(schema_root(), raw, alone=True)  # the other fields at their defaults
    except ConfigError as exc:
        raise ConfigError(".".join(p for p in (target.path, sub) if p), value, exc.problem, exc.fix) from None
    return read_dotted(built, target.path)


def _kind_name(target: _Target) -> str:
    if target.literal:
        return "a fixed set of values"
    return {bool: "true or false", str: "a string", int: "an integer", float: "a number"}[target.kind]


def _dotted_spec(path: str, spec: ParamSpec) -> ParamSpec:
    """``spec`` for config field ``path``, its values checked and typed by that field."""
    target = _target(path, spec.as_yaml())
    if spec.value is not None:
        return dataclasses.replace(spec, value=_field_value(target, "", spec.value))
    if spec.choices is not None:
        choices = tuple(_field_value(target, f"choices[{i}]", v) for i, v in enumerate(spec.choices))
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(
                f"{path}.choices",
                list(spec.choices),
                _duplicates(spec.choices, [repr(c) for c in choices]),
                "list each value once",
            )
        return dataclasses.replace(spec, choices=choices)
    if target.literal or target.kind not in (int, float):
        raise ConfigError(
            path,
            spec.as_yaml(),
            f"a range needs a number field, and {path} takes {_kind_name(target)}",
            f"give {{choices: [...]}} with values {path} accepts",
        )
    low, high = _field_value(target, "low", spec.low), _field_value(target, "high", spec.high)
    step = spec.step
    if step is not None and target.kind is int:
        if not float(step).is_integer():
            raise ConfigError(f"{path}.step", step, "expected an integer", "use e.g. step: 1")
        step = int(step)
    elif step is not None:
        step = float(step)
    if spec.log and low <= 0:
        raise ConfigError(path, spec.as_yaml(), "a log scale needs low > 0", "raise low above 0 or drop log")
    return dataclasses.replace(spec, low=low, high=high, step=step)


def _flat_space(raw: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections (``train: {weight_decay: {...}}``, what ``--set search.space.train.x=`` writes)
    flattened to dotted keys."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        section = name not in PARAM_NAMES and name not in searchable_fields()
        if section and isinstance(value, Mapping) and value and not set(value) & SPEC_KEYS:
            inner_space = _flat_space(value, name + ".")
        else:
            inner_space = {name: value}
        for param, spec in inner_space.items():
            if param in out:
                raise ConfigError(
                    param,
                    spec,
                    "the parameter is given twice (as a dotted key and in nested sections)",
                    "keep one of them",
                )
            out[param] = spec
    return out


def _space_in(raw: Any) -> Any:
    """The default space with the given parameters replaced or added; unknown names are errors."""
    if raw is None:
        return dict(DEFAULT_SPACE)
    if not isinstance(raw, Mapping):
        raise ConfigError("", raw, "expected a mapping of parameters", "write c1: {choices: [8, 16]}")
    flat = _flat_space(raw)
    for name, value in flat.items():
        if name not in PARAM_NAMES:
            _target(name, value)
    return {**DEFAULT_SPACE, **flat}


def _space_out(space: Mapping[str, ParamSpec]) -> Mapping[str, ParamSpec]:
    """Every spec typed and checked: the five names by :func:`_typed_spec`, dotted ones by their field."""
    return types.MappingProxyType(
        {
            name: _typed_spec(name, spec) if name in PARAM_NAMES else _dotted_spec(name, spec)
            for name, spec in space.items()
        }
    )


def is_int_range(spec: ParamSpec) -> bool:
    """A ``low``/``high`` range of integers (the five names' integer ones, or an integer field)."""
    return (
        spec.choices is None
        and spec.value is None
        and type(spec.low) is int  # not isinstance: true/false are ints too, and never a range
        and type(spec.high) is int
    )


Space = Annotated[
    Mapping[str, ParamSpec],
    BeforeValidator(_space_in),
    AfterValidator(_space_out),
]


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in the raw mapping ``raw`` (sections made as needed); ConfigError when a
    part of the path is a value, not a section."""
    node = raw
    parts = key.split(".")
    i = 0
    while True:
        # a key written dotted in the file (a space entry ``train.weight_decay: {...}``) is the
        # same path as nested sections: the longest such key present is followed
        j = next((j for j in range(len(parts), i + 1, -1) if ".".join(parts[i:j]) in node), i + 1)
        part = ".".join(parts[i:j])
        if j == len(parts):
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[:j])
            raise ConfigError(
                where, child, "is a value, not a section", f"set {where} itself, e.g. --set {where}=..."
            )
        node, i = child, j


def sampled_high(spec: ParamSpec) -> Any:
    """The highest value a ``low``/``high`` range samples: ``high``, or the last step below it when
    the step does not divide the range (Optuna's rule, counted in decimals as Optuna does:
    ``model.stages: {low: 2, high: 3, step: 2}`` samples 2 only)."""
    assert spec.low is not None and spec.high is not None
    if spec.step is None:
        return spec.high
    low, high, step = (decimal.Decimal(str(v)) for v in (spec.low, spec.high, spec.step))
    top = low + (high - low) // step * step
    return int(top) if type(spec.low) is int else float(top)


def space_corners(cfg: StudyConfig, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every mix of the values the dotted config fields ``paths`` can take in ``cfg``'s space:
    a searched field's choices, fixed value or a range's two ends (the top one :func:`sampled_high`,
    a value the range can sample); an unsearched one its value in
    ``cfg``. For checks across fields, which each searched value passed alone; a range's ends
    suffice where the check is monotone in the field (momentum 0, the net's depth)."""
    values: list[tuple[Any, ...]] = []
    for path in paths:
        spec = cfg.search.space.get(path)
        if spec is None:
            values.append((read_dotted(cfg, path),))
        elif spec.value is not None:
            values.append((spec.value,))
        elif spec.choices is not None:
            values.append(tuple(spec.choices))
        else:
            values.append(tuple(dict.fromkeys((spec.low, sampled_high(spec)))))
    for mix in itertools.product(*values):
        yield dict(zip(paths, mix, strict=True))
