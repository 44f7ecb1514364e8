"""Typed, frozen study configuration, declared once with pydantic: YAML load, overrides, errors.

Everything a study needs is one :class:`StudyConfig`. It is built once at the edge
(:func:`load_config` / :func:`config_from_dict`), validated there, and never mutated; changed
copies come from :func:`with_overrides` / :func:`replace`, which validate again. Each field
declares its type, bounds, description, the fix shown when it is wrong (``x-fix``) and whether
it may change when a study resumes (``x-resumable``). Any problem raises :class:`ConfigError`,
whose message names the field, the bad value and the fix. Defaults live here and nowhere else.
This module knows nothing about torch or optuna.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import reprlib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from search.errors import InputError

Dataset = Literal["digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic"]
SamplerName = Literal["tpe", "random", "grid", "cmaes", "qmc", "gp"]
OptimizerName = Literal["adam", "adamw", "sgd"]
LrScheduleName = Literal["constant", "cosine", "onecycle"]
PrunerName = Literal["median", "percentile", "successive_halving", "hyperband", "none"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerName)
PRUNERS: tuple[str, ...] = typing.get_args(PrunerName)
PARAM_NAMES = ("c1", "c2", "l1", "lr", "batch_size")
INT_PARAMS = frozenset({"c1", "c2", "l1", "batch_size"})
DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda|cuda:\d+)")
STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # used with fullmatch
MAX_SEED = 2**32 - 1  # numpy's seed range; samplers reduce seed + offset modulo 2**32
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused unread
MAX_CONFIG_NODES = 100_000  # values in a config once YAML aliases are expanded


class ConfigError(InputError):
    """A bad config value: names the field, the value and how to fix it."""

    def __init__(self, field_path: str, value: Any, problem: str, fix: str) -> None:
        self.field = field_path
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field_path}: {problem} (got {_short_repr(value)}). Fix: {fix}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 120, 60, 80


def _short_repr(value: Any, limit: int = 200) -> str:
    """A bounded ``repr(value)``: work and length stay small for huge or deeply shared values."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # ints beyond 4300 digits have no repr
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- field types


def _field(default: Any = dataclasses.MISSING, fix: str = "", description: str = "", **kw: Any) -> Any:
    """A config field: its default, bounds, description, the fix hint and, with ``resumable=True``,
    whether it may change between runs of one study. ``problem=`` overrides the bound message.
    ``searchable="reason"`` keeps a field (or a whole section) out of ``search.space``; resumable
    fields are never searchable either."""
    extra: dict[str, Any] = {"x-fix": fix}
    if kw.pop("resumable", False):
        extra["x-resumable"] = True
    searchable = kw.pop("searchable", True)
    if searchable is not True:  # why ``search.space`` may not name this field (or section)
        extra["x-searchable"] = searchable or "it is not a hyperparameter"
    if "problem" in kw:
        extra["x-problem"] = kw.pop("problem")
    if "default_factory" in kw:
        return Field(description=description, json_schema_extra=extra, **kw)
    if default is dataclasses.MISSING:
        return Field(description=description, json_schema_extra=extra, **kw)
    return Field(default, description=description, json_schema_extra=extra, **kw)


def _int_in(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _number_in(value: Any) -> Any:
    if isinstance(value, bool):
        raise ConfigError("", value, "expected a number", "write a number, e.g. 0.5")
    return value


def _num(value: Any) -> int | float:
    """A parameter's number as written (ints stay ints); "1e-4" text (PyYAML reads it so) is a number."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("", value, "expected a number", "write a number, e.g. 0.5")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("", value, "expected a finite number", "use a finite value")
    return value


def _value(value: Any) -> bool | int | float | str:
    """A searched value as written: a number (finite), a string or true/false; the field decides."""
    if isinstance(value, bool | str):
        return value
    return _num(value)


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
Int = Annotated[int, Strict(), BeforeValidator(_int_in)]
Num = Annotated[float, PlainValidator(_num), WithJsonSchema({"type": "number"})]
Value = Annotated[
    bool | int | float | str,
    PlainValidator(_value),
    WithJsonSchema({"type": ["number", "string", "boolean"]}),
]
Float = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_number_in)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _list_of(n: int) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != n:
            raise ConfigError("", value, f"expected a list of {n} values", f"give {n} values")
        return value

    return BeforeValidator(check)


SECTION = ConfigDict(extra="forbid")
# Why some fields cannot be in search.space (``_field(..., searchable=REASON)``).
_DATA_FIXED = "it changes which images are loaded or how they are split, which all trials share"
_BOOKKEEPING = "it is run bookkeeping, not a hyperparameter"
_SPEED = "it is a speed setting, not a hyperparameter"


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True, config=SECTION)
class AugmentConfig:
    """Training-time augmentation, applied batched and per sample on the device."""

    hflip: Bool = _field(False, "write true or false", "random horizontal flip, p=0.5 per sample")
    crop_pad: Int = _field(0, "use 0 to disable", "reflect-pad by this many px, then crop back", ge=0)
    rotate_deg: Float = _field(
        0.0, "use e.g. 20", "rotation uniform in [-rotate_deg, rotate_deg]", ge=0, le=180
    )
    color_jitter: Float = _field(
        0.0, "use e.g. 0.2", "brightness/contrast/saturation factors in [1-j, 1+j]", ge=0, lt=1
    )
    hue: Float = _field(0.0, "use e.g. 0.1", "hue shift in [-hue, hue] turns (3-channel only)", ge=0, le=0.5)

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is active."""
        return self.hflip or self.crop_pad > 0 or self.rotate_deg > 0 or self.color_jitter > 0 or self.hue > 0


@dataclass(frozen=True, config=SECTION)
class NormalizeConfig:
    """Per-channel normalisation; when absent, mean/std are computed from the training split."""

    mean: tuple[Float, ...] = _field(fix="give one value per channel, e.g. [0.5, 0.5, 0.5]")
    std: tuple[Annotated[float, annotated_types.Gt(0)], ...] = _field(
        fix="use e.g. [0.5, 0.5, 0.5]", problem="must be positive"
    )

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeConfig:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(
                "",
                {"mean": list(self.mean), "std": list(self.std)},
                "mean and std need one value per channel",
                "give equally long lists",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class SyntheticConfig:
    """Random, learnable images for tests: class-dependent patterns plus noise."""

    shape: Annotated[tuple[Int, Int, Int], _list_of(3)] = _field(
        (3, 32, 32), "use e.g. [3, 32, 32]", "[channels (1 or 3), height, width]"
    )
    n_classes: Int = _field(10, "use e.g. 10", "number of classes", ge=2, problem="need at least 2 classes")
    n_samples: Int = _field(512, "use at least 10 per class", "images in all splits together", ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        if not (all(v >= 1 for v in self.shape) and self.shape[0] in (1, 3)):
            raise ConfigError(
                "shape", self.shape, "expected [channels (1 or 3), height, width]", "use e.g. [3, 32, 32]"
            )
        if self.n_samples < 10 * self.n_classes:
            raise ConfigError(
                "n_samples",
                self.n_samples,
                f"too few for {self.n_classes} classes",
                f"use at least {10 * self.n_classes}",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class DataConfig:
    """Which images, where they live, and how they are split and augmented."""

    dataset: Dataset = _field(
        "digits", description="the dataset", problem="unknown dataset", searchable=_DATA_FIXED
    )
    root: Str = _field(
        "storage/data",
        "give a folder",
        "dataset folder (an imagefolder: one folder per class)",
        searchable=_DATA_FIXED,
    )
    cache_dir: Str = _field("storage/data/cache", "give a folder", "decoded-tensor cache", resumable=True)
    val_fraction: Float = _field(
        0.1,
        "use e.g. 0.1",
        "validation share",
        gt=0,
        lt=1,
        problem="must be between 0 and 1",
        searchable=_DATA_FIXED,
    )
    test_fraction: Float = _field(
        0.2,
        "use e.g. 0.2",
        "test share (held out until finetune)",
        gt=0,
        lt=1,
        problem="must be between 0 and 1 and leave room for training",
        searchable=_DATA_FIXED,
    )
    image_size: Int | None = _field(
        None,
        "use e.g. 32, or null to keep the images' own size",
        "resize images to this square size",
        ge=1,
        searchable=_DATA_FIXED,
    )
    augment: AugmentConfig = _field(default_factory=AugmentConfig, description="training augmentation")
    normalize: NormalizeConfig | None = _field(
        None, description="fixed mean/std (default: measured)", searchable=_DATA_FIXED
    )
    synthetic: SyntheticConfig = _field(
        default_factory=SyntheticConfig, description="dataset: synthetic", searchable=_DATA_FIXED
    )

    @model_validator(mode="after")
    def _room_for_training(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                "test_fraction",
                self.test_fraction,
                "must be between 0 and 1 and leave room for training",
                "use e.g. 0.2",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class ModelConfig:
    """The ConvNet's fixed settings (the searched widths are in search.space)."""

    padding: Literal[0, 1, 2] = _field(1, "use 0 for the seed's net, 1 to keep sizes", "conv padding")
    dropout: Annotated[
        tuple[
            Annotated[float, annotated_types.Ge(0), annotated_types.Lt(1)],
            Annotated[float, annotated_types.Ge(0), annotated_types.Lt(1)],
        ],
        _list_of(2),
    ] = _field(
        (0.1, 0.5),
        "use e.g. [0.1, 0.5]",
        "dropout probabilities [p0, p1]: p0 after every stage but the last, p1 after the last",
        problem="must be within [0, 1)",
    )
    stages: Int = _field(
        2,
        "use e.g. 2 (the seed's net) to 4 for 64-224 px images",
        "conv stages, each two convs then pooling and dropout (widths c1, c2, then doubling)",
        ge=2,
        le=6,
    )
    kernel_size: Literal[1, 3, 5, 7] = _field(3, "use 3 (or 1, 5, 7)", "conv kernel size (odd)")
    pool: Literal["none", "max", "avg"] = _field(
        "none", "use none, max or avg", "2x2 pooling at the end of each stage (halves the size)"
    )
    head: Literal["flatten", "global_avg"] = _field(
        "flatten",
        "use flatten (the seed's net) or global_avg (size-independent head)",
        "classifier input: all features flattened, or global average pooling to one value per channel",
    )
    batchnorm: Bool = _field(False, "write true or false", "BatchNorm2d after each conv")
    residual: Bool = _field(
        False,
        "write true or false",
        "each stage a residual block: its two convs plus a 1x1 projection shortcut",
    )


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    """One trial's training loop."""

    epochs: Int = _field(
        10,
        "use e.g. 10",
        "maximum epochs per trial",
        ge=1,
        searchable="it is the pruners' and the report's epoch budget; search train.patience instead",
    )
    patience: Int = _field(3, "use e.g. 3", "early-stopping patience (epochs)", ge=1)
    min_delta: Float = _field(0.0, "use 0.0", "smallest improvement that resets patience", ge=0)
    weight_decay: Float = _field(
        0.0, "use 0.0", "weight decay (adam, sgd: L2 in the gradient; adamw: decoupled)", ge=0
    )
    optimizer: OptimizerName = _field("adam", description="the optimizer", problem="unknown optimizer")
    momentum: Float = _field(0.9, "use e.g. 0.9", "SGD momentum (sgd only)", ge=0, lt=1)
    nesterov: Bool = _field(False, "write true or false", "Nesterov momentum (sgd only; needs momentum > 0)")
    label_smoothing: Float = _field(
        0.0, "use e.g. 0.1", "label smoothing of the training loss (validation loss: plain)", ge=0, lt=1
    )
    lr_schedule: LrScheduleName = _field(
        "constant",
        description="lr over the epochs, per step: constant, cosine (to 0 at train.epochs), onecycle",
        problem="unknown lr schedule",
    )
    warmup_epochs: Int = _field(
        0,
        "use e.g. 1, or 0 for no warm-up",
        "linear lr warm-up from 0 (constant, cosine); onecycle: its rising phase (0: 30% of epochs)",
        ge=0,
    )
    amp: Bool = _field(True, "write true or false", "mixed precision on CUDA", searchable=_SPEED)
    channels_last: Bool = _field(
        True, "write true or false", "channels-last memory format on CUDA", searchable=_SPEED
    )
    compile: Bool = _field(False, "write true or false", "torch.compile the model", resumable=True)
    eval_batch_size: Int = _field(1024, "use e.g. 1024", "batch size for evaluation", ge=1, resumable=True)
    checkpoint_every_s: Float = _field(
        10.0,
        "use e.g. 10 (seconds), or 0 to checkpoint after every epoch",
        "a running trial's resume checkpoint at most this often; 0: every epoch",
        ge=0,
        resumable=True,
    )
    tensorboard: Bool = _field(
        False,
        "write true or false",
        "TensorBoard scalars per epoch and hparams per trial (extra [tensorboard])",
        resumable=True,
    )
    threads: Int | None = _field(
        None,
        "use e.g. 2, or null for free cores // local workers",
        "torch CPU threads per process (null: free cores (usable less busy) // local workers)",
        ge=1,
        resumable=True,
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainConfig:
        if _nesterov_without_momentum(self.optimizer, self.nesterov, self.momentum):
            raise ConfigError(
                "nesterov", True, "Nesterov momentum needs momentum > 0", "set train.momentum: 0.9"
            )
        return self


def _nesterov_without_momentum(optimizer: Any, nesterov: Any, momentum: Any) -> bool:
    return bool(optimizer == "sgd" and nesterov and momentum == 0)


@dataclass(frozen=True, config=SECTION)
class ParamSpec:
    """One searched parameter: ``choices``, a ``low``/``high`` range (+ log/step), or a fixed ``value``.

    A bare number is a fixed value: ``lr: 0.001`` is ``lr: {value: 0.001}``.
    """

    choices: tuple[Value, ...] | None = _field(None, "list at least one value", "values to choose from")
    low: Num | None = _field(None, "give both low and high, or choices", "lowest value")
    high: Num | None = _field(None, "give both low and high, or choices", "highest value")
    log: Bool = _field(False, "write true or false", "sample on a log scale")
    step: Num | None = _field(None, "use step > 0", "grid step between low and high")
    value: Value | None = _field(None, "give a value", "a fixed value (not searched)")

    @property
    def fixed(self) -> bool:
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
            raise ConfigError("", raw, "a bare list is ambiguous", f"write {{choices: {_short_repr(raw)}}}")
        if isinstance(raw, int | float | str):  # true/false too: a fixed value of a bool field
            return {"value": raw}
        if isinstance(raw, Mapping):
            keys = set(raw)
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
                raise ConfigError("choices", list(self.choices), "duplicate choices", "list each value once")
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


def _fmt_num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else _short_repr(v)


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
                num = _num(v)
            except ConfigError as exc:
                example = 3 if name in INT_PARAMS else 0.001
                raise ConfigError(sub, v, exc.problem, f"write {name}: {example}") from None
            if name in INT_PARAMS:
                if isinstance(num, float) and not num.is_integer():
                    raise ConfigError(sub, num, "expected an integer", f"write {name}: 3")
                out.append(int(num))
            else:
                try:
                    out.append(float(num))
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

_SPEC_KEYS = frozenset(f.name for f in dataclasses.fields(ParamSpec))
SPACE_KEY_PATTERN = r"^(" + "|".join(PARAM_NAMES) + r"|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$"


@dataclasses.dataclass(frozen=True)
class _Target:
    path: str
    kind: type  # int, float, bool or str
    literal: bool  # a fixed set of values (choices only)


def _scalar_kind(tp: Any) -> tuple[type, bool] | None:
    """(value type, is a fixed set) of a scalar field's annotation; None for sections and lists."""
    tp = _inner(tp)
    if typing.get_origin(tp) is Literal:
        return type(typing.get_args(tp)[0]), True
    if tp in (bool, int, float, str):
        return tp, False
    return None


def _why_not_searchable(info: FieldInfo) -> str | None:
    if _extra(info, "x-resumable"):
        return "it is a run setting (it may change between runs of a study), not a hyperparameter"
    reason = _extra(info, "x-searchable")
    return str(reason) if reason is not None else None


def searchable_fields() -> tuple[str, ...]:
    """Every dotted config field that ``search.space`` may name (besides the five short names)."""

    def walk(cls: Any, prefix: str) -> list[str]:
        out: list[str] = []
        for name, info in getattr(cls, "__pydantic_fields__", {}).items():
            if _why_not_searchable(info) is not None:
                continue
            if _scalar_kind(info.annotation) is not None:
                out.append(prefix + name)
            else:
                out += walk(_inner(info.annotation), f"{prefix}{name}.")
        return out

    return tuple(p for p in walk(StudyConfig, "") if "." in p)


def _fields_hint(prefix: str) -> str:
    names = [p for p in searchable_fields() if p.startswith(prefix)] or list(searchable_fields())
    return "search one of: " + ", ".join(names)


def _target(path: str, shown: Any) -> _Target:
    """The scalar field ``path`` names; ConfigError (field: ``path``) when it cannot be searched."""
    cls: Any = StudyConfig
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
        reason = _why_not_searchable(info)
        if reason is not None:
            where = ".".join(parts[: i + 1])
            what = f"{where} cannot be searched" if where != path else "cannot be searched"
            raise ConfigError(
                path, shown, f"{what}: {reason}", f"set it outside search.space, or {_fields_hint('')}"
            )
        cls = _inner(info.annotation)
    kind = _scalar_kind(cls)
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


def _read(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _field_value(target: _Target, sub: str, value: Any) -> Any:
    """``value`` as the field ``target`` takes it (its own type and bounds), or ConfigError."""
    raw: dict[str, Any] = {}
    _set_dotted(raw, target.path, value)
    try:
        built = build(StudyConfig, raw)  # the other fields at their defaults; the space the default one
    except ConfigError as exc:
        raise ConfigError(".".join(p for p in (target.path, sub) if p), value, exc.problem, exc.fix) from None
    return _read(built, target.path)


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
                f"{path}.choices", list(spec.choices), "duplicate choices", "list each value once"
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
        if name not in PARAM_NAMES and isinstance(value, Mapping) and value and not set(value) & _SPEC_KEYS:
            out.update(_flat_space(value, name + "."))
        else:
            out[name] = value
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
    Field(json_schema_extra={"propertyNames": {"pattern": SPACE_KEY_PATTERN}}),
]


@dataclass(frozen=True, config=SECTION)
class SamplerConfig:
    """Optuna's sampler."""

    name: SamplerName = _field("tpe", description="the sampler", problem="unknown sampler")
    n_startup_trials: Int | None = _field(
        None, "use e.g. 10, or null for the sampler's default", "random trials first", ge=0
    )
    startup: Literal["random", "sobol"] = _field(
        "random",
        "use random or sobol",
        "how TPE / CMA-ES / GP draw their start-up trials: at random, or as scrambled Sobol points "
        "(QMC, spread evenly over the space)",
        problem="must be random or sobol",
    )


@dataclass(frozen=True, config=SECTION)
class PrunerConfig:
    """Optuna's pruner (stops unpromising trials early)."""

    name: PrunerName = _field("median", description="the pruner", problem="unknown pruner")
    n_startup_trials: Int = _field(5, "use e.g. 5", "trials before pruning starts", ge=0)
    n_warmup_steps: Int = _field(2, "use e.g. 2", "epochs before a trial can be pruned", ge=0)
    percentile: Float = _field(25.0, "use e.g. 25", "percentile pruner's cut", gt=0, lt=100)
    min_resource: Int = _field(1, "use 1", "successive halving / hyperband minimum epochs", ge=1)
    reduction_factor: Int = _field(3, "use 3", "successive halving / hyperband reduction factor", ge=2)


@dataclass(frozen=True, config=SECTION)
class ConstraintsConfig:
    """Budgets the model of a trial must fit: a trial over one is recorded PRUNED before training.

    Not resumable: the trials already in a study were judged (and the samplers learnt) against
    the budgets it started with; a study under other budgets is another experiment.
    """

    max_params: Int | None = _field(
        None,
        "use e.g. 1000000, or null for no limit",
        "most trainable parameters a trial's model may have (null: no limit)",
        ge=1,
    )
    max_latency_ms: Float | None = _field(
        None,
        "use e.g. 5.0 (milliseconds), or null for no limit",
        "most milliseconds of a batch-1 forward pass on the trial's device, median after warm-up "
        "(null: no limit, not measured)",
        gt=0,
        problem="must be positive",
    )

    @property
    def enabled(self) -> bool:
        """True when at least one budget is set."""
        return self.max_params is not None or self.max_latency_ms is not None


@dataclass(frozen=True, config=SECTION)
class SearchConfig:
    """The search: how many trials, the sampler, the pruner, the space and the budgets."""

    n_trials: Int = _field(
        20, "use e.g. 20", "total finished trials over all runs and workers", ge=1, resumable=True
    )
    timeout_s: Float | None = _field(
        None,
        "use null for no limit",
        "stop starting trials after this many seconds",
        gt=0,
        resumable=True,
        problem="must be positive",
    )
    sampler: SamplerConfig = _field(default_factory=SamplerConfig, description="the sampler", resumable=True)
    pruner: PrunerConfig = _field(default_factory=PrunerConfig, description="the pruner", resumable=True)
    space: Space = _field(
        default_factory=lambda: DEFAULT_SPACE,
        description="searched parameters: a number (fixed), {choices: [...]}, or {low, high, log, step}",
    )
    enqueue_default: Bool = _field(
        True,
        "write true or false",
        "a new study's trial 0 is the space's log-midpoint (each of c1/c2/l1/lr/batch_size at its geometric "
        "middle, snapped to its choices or step; lr 1e-4..1e-2 gives 1e-3); not with the grid sampler "
        "or a --warm-start. On by default: it reached the hand grid's best in 0.12-0.13x the grid's "
        "epochs on every benchmark dataset and seed (docs/BENCHMARKS.md)",
        resumable=True,
    )
    keep_top_k: Int = _field(3, "use e.g. 3", "weights kept for the best k trials", ge=0, resumable=True)
    max_failures: Int | None = _field(
        None,
        "use e.g. 5, or null (a run stops only after as many failures as search.n_trials)",
        "failed trials after which a run stops",
        ge=1,
        resumable=True,
    )
    heartbeat_interval_s: Int = _field(
        20, "use e.g. 20", "a running trial's worker writes a heartbeat this often", ge=1
    )
    grace_period_s: Int = _field(
        60, "use e.g. 60", "no heartbeat for this long: the trial is stale and retried", ge=1
    )
    max_retry: Int = _field(3, "use e.g. 3", "how often one trial is re-queued after a killed worker", ge=0)
    constraints: ConstraintsConfig = _field(
        default_factory=ConstraintsConfig,
        description="budgets (max_params, max_latency_ms): the best model that fits",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ConfigError(
                "grace_period_s",
                self.grace_period_s,
                f"must exceed search.heartbeat_interval_s ({self.heartbeat_interval_s})",
                f"use e.g. {3 * self.heartbeat_interval_s}",
            )
        if self.sampler.name == "grid":
            for name, spec in self.space.items():
                if not (
                    spec.fixed or spec.choices is not None or is_int_range(spec) or spec.step is not None
                ):
                    raise ConfigError(
                        f"space.{name}",
                        spec.as_yaml(),
                        "the grid sampler needs a finite set of values",
                        "give choices, a fixed value, or a step",
                    )
        return self


@dataclass(frozen=True, config=SECTION)
class FinetuneConfig:
    """``search finetune``: continue the best trial from its weights, then test once."""

    epochs: Int = _field(40, "use e.g. 40", "maximum fine-tuning epochs", ge=1)
    lr_scale: Float = _field(0.8, "use e.g. 0.8", "lr = the best trial's lr x this", gt=0, le=10)
    patience: Int = _field(6, "use e.g. 6", "early-stopping patience (epochs)", ge=1)


def _name_in(value: Any) -> Any:
    if isinstance(value, str):
        check_study_name(value, "")
    return value


def _storage_in(value: Any) -> Any:
    if isinstance(value, str) and "://" not in value:
        raise ConfigError(
            "",
            mask_url(value),
            "not a database URL",
            "use sqlite:///storage/studies.db or postgresql+psycopg://user:pw@host/db",
        )
    return value


@dataclass(frozen=True, config=SECTION)
class ConfirmConfig:
    """``search confirm``: re-train the top trials with new seeds (or on folds of train+val)."""

    top: Int = _field(3, "use e.g. 3", "how many of the best COMPLETE trials to re-train", ge=1)
    seeds: Int = _field(3, "use e.g. 3", "new seeds per trial (ignored with folds)", ge=1)
    folds: Int = _field(
        0,
        "use 0, or e.g. 5 for 5-fold cross-validation",
        "0: new seeds on the study's own split; F >= 2: F-fold cross-validation of train+val",
        ge=0,
    )

    @model_validator(mode="after")
    def _not_one_fold(self) -> ConfirmConfig:
        if self.folds == 1:
            raise ConfigError(
                "folds",
                self.folds,
                "must be 0 (new seeds on the study's split) or at least 2",
                "use 0, or e.g. 5 for 5-fold cross-validation",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class StudyConfig:
    """A study: its name, seed, storage, data, model, training, search and fine-tuning."""

    name: Annotated[Str, BeforeValidator(_name_in)] = _field(
        "study", description="study name (default: the config file's name); names folders", resumable=True
    )
    seed: Int = _field(
        0,
        f"use an integer in [0, {MAX_SEED}]",
        "seed of splits, sampler and training",
        ge=0,
        le=MAX_SEED,
        searchable="it fixes the splits and the sampler (each trial trains with seed + its number)",
    )
    storage: Annotated[Str, BeforeValidator(_storage_in)] = _field(
        "sqlite:///storage/studies.db",
        "use sqlite:///storage/studies.db",
        "Optuna storage URL",
        resumable=True,
    )
    artifacts_dir: Str = _field(
        "storage/artifacts", "give a folder", "the best trials' weights", resumable=True
    )
    checkpoints_dir: Str = _field(
        "storage/checkpoints",
        "give a folder",
        "per-epoch checkpoints of running trials (resume)",
        searchable=_BOOKKEEPING,
    )
    tensorboard_dir: Str = _field(
        "storage/tensorboard",
        "give a folder",
        "TensorBoard runs, <study>/trial-<n>/, when train.tensorboard is on",
        resumable=True,
    )
    data: DataConfig = _field(default_factory=DataConfig, description="the data")
    model: ModelConfig = _field(default_factory=ModelConfig, description="the model")
    train: TrainConfig = _field(default_factory=TrainConfig, description="training")
    search: SearchConfig = _field(
        default_factory=SearchConfig, description="the search", searchable="it configures the search itself"
    )
    finetune: FinetuneConfig = _field(
        default_factory=FinetuneConfig, description="fine-tuning", resumable=True
    )
    confirm: ConfirmConfig = _field(
        default_factory=ConfirmConfig, description="`search confirm` defaults", resumable=True
    )

    @model_validator(mode="after")
    def _space_keeps_train_valid(self) -> StudyConfig:
        """Every mix of the searched ``train.optimizer``/``nesterov``/``momentum`` values passes
        train's own check: each value was checked alone (the other fields at their defaults), so
        ``nesterov: {choices: [true, false]}`` with ``train.momentum: 0`` would fail trials one by one."""
        paths = ("train.optimizer", "train.nesterov", "train.momentum")
        searched = [p for p in paths if p in self.search.space]
        if not searched:
            return self
        for mix in space_corners(self, paths):
            if _nesterov_without_momentum(*(mix[p] for p in paths)):
                raise ConfigError(
                    f"search.space.{searched[0]}",
                    ", ".join(f"{k}={v}" for k, v in mix.items()),
                    "this space can sample sgd with Nesterov momentum at momentum 0, which torch refuses",
                    "keep train.momentum above 0 (e.g. 0.9) or train.nesterov false",
                )
        return self


def space_corners(cfg: StudyConfig, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every mix of the values the dotted config fields ``paths`` can take in ``cfg``'s space:
    a searched field's choices, fixed value or a range's two ends; an unsearched one its value in
    ``cfg``. For checks across fields, which each searched value passed alone; a range's ends
    suffice where the check is monotone in the field (momentum 0, the net's depth)."""
    values: list[tuple[Any, ...]] = []
    for path in paths:
        spec = cfg.search.space.get(path)
        if spec is None:
            values.append((_read(cfg, path),))
        elif spec.value is not None:
            values.append((spec.value,))
        elif spec.choices is not None:
            values.append(tuple(spec.choices))
        else:
            values.append((spec.low, spec.high))
    for mix in itertools.product(*values):
        yield dict(zip(paths, mix, strict=True))


# --------------------------------------------------------------------------- errors


def _loc_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _inner(tp: Any) -> Any:
    """The dataclass or mapping value type inside ``tp`` (Optional, Annotated unwrapped)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _field_at(loc: Sequence[Any]) -> FieldInfo | None:
    """The (deepest) field that ``loc``, a pydantic error location, points into."""
    cls: Any = StudyConfig
    info: FieldInfo | None = None
    for part in loc:  # list indices and space parameter names are skipped
        fields: dict[str, FieldInfo] = getattr(cls, "__pydantic_fields__", {})
        if isinstance(part, str) and part in fields:
            info = fields[part]
            cls = _inner(info.annotation)
            if typing.get_origin(cls) in (Mapping, dict):
                cls = typing.get_args(cls)[1]
    return info


def _bounds(info: FieldInfo) -> str:
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


def _extra(info: FieldInfo | None, key: str) -> Any:
    extra = info.json_schema_extra if info is not None else None
    return extra.get(key) if isinstance(extra, dict) else None


_NO_FIX = "see `search schema`"
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_UNKNOWN_KEY_ERRORS = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")


def _unknown_key(root: str, loc: tuple[Any, ...], value: Any) -> ConfigError:
    path = ".".join(p for p in (root, _loc_path(loc[:-1]), str(loc[-1])) if p)
    section = _field_at(loc[:-1])
    cls = _inner(section.annotation) if section is not None else StudyConfig
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    return ConfigError(path, value, "unknown key", f"remove it or use one of: {', '.join(names)}")


def _from_pydantic(exc: ValidationError, root: str = "") -> ConfigError:
    """One ConfigError for the first problem pydantic found: field path, value, problem, fix."""
    err = exc.errors(include_url=False)[0]
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    path = ".".join(p for p in (root, _loc_path(loc)) if p)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # from this module's validators; its field is relative to loc
        sub = cause.field
        full = path + sub if sub.startswith("[") else ".".join(p for p in (path, sub) if p)
        return ConfigError(full or "config", cause.value, cause.problem, cause.fix)
    if kind in _UNKNOWN_KEY_ERRORS and loc:
        return _unknown_key(root, loc, value)
    path = path or "config"
    info = _field_at(loc)
    fix = _extra(info, "x-fix") or _NO_FIX
    if kind == "literal_error" and info is not None:
        choices = [str(a) for a in typing.get_args(_inner(info.annotation))]
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        fix = fix if fix != _NO_FIX else f"use one of: {', '.join(choices)}"
        return ConfigError(path, value, _extra(info, "x-problem") or f"must be {listed}", fix)
    if kind in _BOUND_ERRORS and info is not None:
        if isinstance(loc[-1], int):  # an item of a list field: name the field
            path = path.rsplit("[", 1)[0]
        return ConfigError(path, value, _extra(info, "x-problem") or _bounds(info), fix)
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


def build(cls: type[Any], raw: Any, root: str = "") -> Any:
    """Validate ``raw`` as config section ``cls``; ConfigError names ``root``.field on failure."""
    try:
        return _adapter(cls).validate_python({} if raw is None else raw)
    except ValidationError as exc:
        raise _from_pydantic(exc, root) from None
    except RecursionError as exc:
        raise ConfigError(root or "config", None, "nested too deeply", "flatten the value") from exc


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


# --------------------------------------------------------------------------- checks


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs, tables and messages)."""
    return re.sub(r"((?:^|://)[^/:@\s]*:)[^/\s]*@", r"\1***@", url)


def check_study_name(name: str, field_path: str = "name") -> str:
    """``name`` if it is safe as a folder name (no ``..``, no separators); ConfigError otherwise."""
    if not (isinstance(name, str) and STUDY_NAME_PATTERN.fullmatch(name) and ".." not in name):
        raise ConfigError(
            field_path,
            name,
            "not a safe study name",
            "use letters, digits, '.', '_' and '-' only, no '..' (it names folders under storage/)",
        )
    return name


def check_inputs(cfg: StudyConfig) -> None:
    """What can be checked about the config's inputs without reading data: folders that must exist."""
    if cfg.data.dataset == "imagefolder" and not Path(cfg.data.root).is_dir():
        raise ConfigError(
            "data.root",
            cfg.data.root,
            "folder not found",
            "point data.root at a folder with one sub-folder of images per class",
        )


def resumable_fields() -> tuple[str, ...]:
    """Dotted config fields (or whole sections) that may differ between runs of one study."""

    def walk(cls: Any, prefix: str) -> list[str]:
        out: list[str] = []
        for name, info in getattr(cls, "__pydantic_fields__", {}).items():
            path = f"{prefix}{name}"
            if _extra(info, "x-resumable"):
                out.append(path)
            else:
                out += walk(_inner(info.annotation), path + ".")
        return out

    return tuple(walk(StudyConfig, ""))


def default_of(cls: type[Any], name: str) -> Any:
    """A section field's default value (so other modules never copy a default)."""
    info: FieldInfo = cls.__pydantic_fields__[name]
    return info.get_default(call_default_factory=True)


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema (what ``search schema`` prints and editors check against)."""
    schema = _adapter(StudyConfig).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convnet-search study config"
    space = schema["$defs"]["SearchConfig"]["properties"]["space"]
    space["additionalProperties"] = {  # a fixed value, or a spec
        "anyOf": [{"type": ["number", "string", "boolean"]}, space["additionalProperties"]]
    }
    _json_bounds(schema)
    return schema


# pydantic writes a nullable integer's bounds under their Python names (``{"ge": 1, "type":
# "integer"}`` for ``max_params: Int | None``), which JSON Schema (and so an editor) ignores
_JSON_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _json_bounds(node: Any) -> None:
    if isinstance(node, dict):
        if "type" in node:
            for name, keyword in _JSON_BOUNDS.items():
                if name in node:
                    node[keyword] = node.pop(name)
        for value in node.values():
            _json_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _json_bounds(value)


# --------------------------------------------------------------------------- YAML and entry points

# PyYAML raises more than YAMLError on bad input: ValueError for impossible dates ("2001-13-01"),
# "!!float abc" or ints over 4300 digits, RecursionError for very deep nesting.
YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)


def _check_size(raw: Any, path: str, shown: Any = None) -> None:
    """Refuse values that expand (YAML aliases share nodes) to more than MAX_CONFIG_NODES, or recurse.

    Counts the expanded size with memoisation by identity, so a "billion laughs" costs little."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, list | dict):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise ConfigError(
                path, shown, "a value contains itself (recursive YAML alias)", "remove the alias"
            )
        busy.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    path,
                    shown,
                    f"more than {MAX_CONFIG_NODES} values once aliases are expanded",
                    "write a smaller config",
                )
        busy.discard(key)
        sizes[key] = total
        return total

    try:
        size(raw)
    except RecursionError as exc:
        raise ConfigError(path, shown, "nested too deeply", "flatten the config") from exc


def _parse_yaml(text: str, path: str, shown: Any) -> Any:
    raw = yaml.safe_load(text)
    _check_size(raw, path, shown)
    return raw


def apply_overrides(raw: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides (values parsed as YAML) to a raw config mapping, in place."""
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "expected KEY=VALUE", "write e.g. --set train.epochs=2")
        try:
            value = _parse_yaml(text, key, text) if text.strip() else None
        except YAML_ERRORS as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                key,
                text,
                f"not valid YAML ({exc.__class__.__name__})",
                "quote strings, e.g. --set name='my-study'",
            ) from exc
        _set_dotted(raw, key, value)
    return raw


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                where, child, "is a value, not a section", f"set {where} itself, e.g. --set {where}=..."
            )
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: Mapping[str, Any], *, default_name: str = "study") -> StudyConfig:
    """Build and validate a config from a plain mapping (a parsed YAML file or a study's stored config)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config", raw, "the top level must be a mapping", "write key: value lines")
    _check_size(raw, "config")
    data = dict(raw)
    data.setdefault("name", default_name)
    cfg: StudyConfig = build(StudyConfig, data)
    return cfg


def _read_text(p: Path) -> str:
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError("config", str(p), "file not found", "check the path") from exc
    except OSError as exc:
        raise ConfigError("config", str(p), f"unreadable ({exc})", "give a UTF-8 YAML file") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "config", str(p), f"larger than {MAX_CONFIG_BYTES} bytes", "give a study config (YAML)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", str(p), f"unreadable ({exc})", "give a UTF-8 YAML file") from exc


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a YAML study config, apply ``--set`` overrides, validate. Raises ConfigError."""
    p = Path(path)
    text = _read_text(p)
    try:
        raw = _parse_yaml(text, "config", str(p))
    except YAML_ERRORS as exc:
        if isinstance(exc, ConfigError):
            raise
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"invalid YAML{where}" if isinstance(exc, yaml.YAMLError) else f"invalid YAML value ({exc})"
        raise ConfigError("config", str(p), problem, "fix the YAML syntax") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config", raw, "the top level must be a mapping", "write key: value lines")
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, default_name=p.stem)


def _plain(obj: Any) -> Any:
    if isinstance(obj, ParamSpec):
        return obj.as_yaml()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """A JSON/YAML-safe mapping that :func:`config_from_dict` turns back into the same config."""
    out: dict[str, Any] = _plain(cfg)
    return out


def with_overrides(cfg: StudyConfig, changes: Mapping[str, Any]) -> StudyConfig:
    """A validated copy of ``cfg`` with dotted fields changed, e.g. ``{"search.n_trials": 5}``."""
    raw = to_dict(cfg)
    for key, value in changes.items():
        _set_dotted(raw, key, _plain(value))
    return config_from_dict(raw)


def trial_config(cfg: StudyConfig, params: Mapping[str, Any]) -> StudyConfig:
    """The config a trial trains with: ``cfg`` with the trial's dotted parameters applied
    (``train.weight_decay``, ...; the space's fixed dotted values too) and validated again.

    The five short names (c1, c2, l1, lr, batch_size) are not config fields and are ignored here;
    the same ``cfg`` comes back when nothing dotted is searched.
    """
    fixed = {k: s.value for k, s in cfg.search.space.items() if "." in k and s.value is not None}
    dotted = {**fixed, **{k: v for k, v in params.items() if "." in k}}
    changed = {k: v for k, v in dotted.items() if _read(cfg, k) != v or type(_read(cfg, k)) is not type(v)}
    return with_overrides(cfg, changed) if changed else cfg


def replace(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """A validated copy of ``cfg`` with top-level fields (values or whole sections) changed."""
    return with_overrides(cfg, changes)
