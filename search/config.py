"""Typed, frozen study configuration: YAML load, ``--set a.b=v`` overrides and validation.

Everything a study needs is one :class:`StudyConfig`. It is built once at the edge
(:func:`load_config` / :func:`config_from_dict`), validated there, and never mutated. Any
problem raises :class:`ConfigError`, whose message names the field, the bad value and the fix.
Defaults live here and nowhere else. This module knows nothing about torch or optuna.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "gp")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
PARAM_NAMES = ("c1", "c2", "l1", "lr", "batch_size")
INT_PARAMS = frozenset({"c1", "c2", "l1", "batch_size"})
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
STUDY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ConfigError(ValueError):
    """A bad config value: names the field, the value and how to fix it."""

    def __init__(self, field_path: str, value: Any, problem: str, fix: str) -> None:
        self.field = field_path
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field_path}: {problem} (got {_short_repr(value)}). Fix: {fix}")


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, shortened; never raises (huge ints have no repr beyond 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied batched and per sample on the device."""

    hflip: bool = False
    crop_pad: int = 0
    rotate_deg: float = 0.0
    color_jitter: float = 0.0
    hue: float = 0.0


@dataclass(frozen=True)
class NormalizeConfig:
    """Per-channel normalisation; when absent, mean/std are computed from the training split."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class SyntheticConfig:
    """Random, learnable images for tests: class-dependent patterns plus noise."""

    shape: tuple[int, int, int] = (3, 32, 32)
    n_classes: int = 10
    n_samples: int = 512


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    root: str = "storage/data"
    cache_dir: str = "storage/data/cache"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalize: NormalizeConfig | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ModelConfig:
    padding: int = 1
    dropout: tuple[float, float] = (0.1, 0.5)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    patience: int = 3
    min_delta: float = 0.0
    weight_decay: float = 0.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = 1024
    checkpoint_every_s: float = 10.0  # a running trial's resume checkpoint at most this often; 0: every epoch


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: ``choices``, a ``low``/``high`` range (+ log/step), or a fixed ``value``."""

    choices: tuple[float, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: float | None = None

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


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "tpe"
    n_startup_trials: int | None = None


@dataclass(frozen=True)
class PrunerConfig:
    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 2
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3


DEFAULT_SPACE: dict[str, ParamSpec] = {
    "c1": ParamSpec(choices=(8, 16, 32)),
    "c2": ParamSpec(low=16, high=64, step=16),
    "l1": ParamSpec(low=32, high=256, log=True),
    "lr": ParamSpec(low=1.0e-4, high=1.0e-2, log=True),
    "batch_size": ParamSpec(choices=(32, 64, 128)),
}


@dataclass(frozen=True)
class SearchConfig:
    n_trials: int = 20
    timeout_s: float | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    space: Mapping[str, ParamSpec] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    keep_top_k: int = 3
    max_failures: int | None = None
    heartbeat_interval_s: int = 20  # a running trial's worker writes a heartbeat this often
    grace_period_s: int = 60  # no heartbeat for this long: the trial is stale, failed and retried
    max_retry: int = 3  # how often one trial is re-queued after a killed worker or an interrupt


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 40
    lr_scale: float = 0.8
    patience: int = 6


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    seed: int = 0
    storage: str = "sqlite:///storage/studies.db"
    artifacts_dir: str = "storage/artifacts"
    checkpoints_dir: str = "storage/checkpoints"  # per-epoch checkpoints of running trials (resume)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


# --------------------------------------------------------------------------- conversion

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _to_float(value: Any, path: str) -> float:
    # PyYAML reads "1e-4" (no dot) as a string; accept it as the number the user meant.
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, value, "expected a number", f"write {path.rsplit('.', 1)[-1]}: 0.5")
    try:
        out = float(value)
    except OverflowError as exc:
        raise ConfigError(path, value, "number too large", "use a finite value") from exc
    if not math.isfinite(out):
        raise ConfigError(path, value, "expected a finite number", "use a finite value")
    return out


def _to_int(value: Any, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, value, "expected an integer", f"write {path.rsplit('.', 1)[-1]}: 3")
    return value


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(path, value, "expected a list", f"write {path}: [..]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                path, value, f"expected a list of {len(args)} values", f"give {len(args)} values"
            )
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "expected true or false", "write true or false")
        return value
    if tp is int:
        return _to_int(value, path)
    if tp is float:
        return _to_float(value, path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "expected a string", "quote the value")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in this module


def _build(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "config", raw, "expected a mapping of keys", "write key: value lines")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(sub, value, "unknown key", f"remove it or use one of: {', '.join(names)}")
        if cls is SearchConfig and key == "space":
            kwargs[key] = _build_space(value, sub)
        else:
            kwargs[key] = _convert(hints[key], value, sub)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [n for n in names if n not in kwargs]
        raise ConfigError(path, dict(raw), f"missing {missing}", f"add {missing}") from exc


def _build_space(raw: Any, path: str) -> dict[str, ParamSpec]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, raw, "expected a mapping of parameters", "write c1: {choices: [8, 16]}")
    space = dict(DEFAULT_SPACE)
    for name, spec in raw.items():
        sub = f"{path}.{name}"
        if name not in PARAM_NAMES:
            raise ConfigError(sub, spec, "unknown parameter", f"search one of: {', '.join(PARAM_NAMES)}")
        space[name] = _param_spec(name, spec, sub)
    return space


def _param_spec(name: str, raw: Any, path: str) -> ParamSpec:
    number = _to_int if name in INT_PARAMS else _to_float
    if not isinstance(raw, Mapping):
        if isinstance(raw, list):
            raise ConfigError(path, raw, "a bare list is ambiguous", f"write {name}: {{choices: {raw}}}")
        return _check_spec(name, ParamSpec(value=number(raw, path)), path)
    allowed = {"choices", "low", "high", "log", "step", "value"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}",
                raw[key],
                "unknown key",
                f"use one of: {', '.join(sorted(allowed))}",
            )
    if "value" in raw and len(raw) > 1:
        raise ConfigError(path, dict(raw), "value fixes the parameter", "give value alone")
    if "choices" in raw and ({"low", "high", "step"} & set(raw) or raw.get("log")):
        raise ConfigError(path, dict(raw), "choices and a range are exclusive", "keep one of them")
    if "value" in raw:
        spec = ParamSpec(value=number(raw["value"], f"{path}.value"))
    elif "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{path}.choices", choices, "expected a non-empty list", "list at least one value"
            )
        values = tuple(number(v, f"{path}.choices[{i}]") for i, v in enumerate(choices))
        if len(set(values)) != len(values):
            raise ConfigError(f"{path}.choices", choices, "duplicate choices", "list each value once")
        spec = ParamSpec(choices=values)
    else:
        for key in ("low", "high"):
            if key not in raw:
                raise ConfigError(path, dict(raw), f"missing {key}", "give both low and high, or choices")
        step = raw.get("step")
        spec = ParamSpec(
            low=number(raw["low"], f"{path}.low"),
            high=number(raw["high"], f"{path}.high"),
            log=_convert(bool, raw.get("log", False), f"{path}.log"),
            step=None if step is None else number(step, f"{path}.step"),
        )
    return _check_spec(name, spec, path)


def _fmt_num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else _short_repr(v)


def _check_spec(name: str, spec: ParamSpec, path: str) -> ParamSpec:
    values = [v for v in (spec.value, spec.low, spec.high) if v is not None] + list(spec.choices or ())
    for v in values:
        if v <= 0:
            raise ConfigError(path, spec.as_yaml(), f"{name} must be positive", "use values > 0")
    if spec.low is not None and spec.high is not None:
        if spec.low > spec.high:
            raise ConfigError(
                path,
                spec.as_yaml(),
                f"low ({_fmt_num(spec.low)}) > high ({_fmt_num(spec.high)})",
                "swap low and high",
            )
        if spec.log and spec.step is not None:
            raise ConfigError(path, spec.as_yaml(), "log and step are exclusive", "drop one of them")
        if spec.step is not None and spec.step <= 0:
            raise ConfigError(f"{path}.step", spec.step, "step must be positive", "use step > 0")
    return spec


# --------------------------------------------------------------------------- validation


def _check(ok: bool, path: str, value: Any, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(path, value, problem, fix)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs, tables and messages)."""
    return re.sub(r"((?:^|://)[^/:@\s]*:)[^/\s]*@", r"\1***@", url)


def check_study_name(name: str, field_path: str = "name") -> str:
    """``name`` if it is safe as a folder name (no ``..``, no separators); ConfigError otherwise."""
    _check(
        isinstance(name, str) and bool(STUDY_NAME_PATTERN.match(name)) and ".." not in name,
        field_path,
        name,
        "not a safe study name",
        "use letters, digits, '.', '_' and '-' only, no '..' (it names folders under storage/)",
    )
    return name


def validate(cfg: StudyConfig) -> StudyConfig:
    """Semantic checks that the types alone cannot express."""
    check_study_name(cfg.name)
    _check(
        "://" in cfg.storage,
        "storage",
        mask_url(cfg.storage),
        "not a database URL",
        "use sqlite:///storage/studies.db or postgresql+psycopg://user:pw@host/db",
    )
    d = cfg.data
    _check(
        d.dataset in DATASETS,
        "data.dataset",
        d.dataset,
        "unknown dataset",
        f"use one of: {', '.join(DATASETS)}",
    )
    _check(
        0 < d.val_fraction < 1,
        "data.val_fraction",
        d.val_fraction,
        "must be between 0 and 1",
        "use e.g. 0.1",
    )
    _check(
        0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
        "data.test_fraction",
        d.test_fraction,
        "must be between 0 and 1 and leave room for training",
        "use e.g. 0.2",
    )
    _check(
        d.image_size is None or d.image_size >= 1,
        "data.image_size",
        d.image_size,
        "must be positive",
        "use e.g. 32, or null to keep the images' own size",
    )
    a = d.augment
    _check(a.crop_pad >= 0, "data.augment.crop_pad", a.crop_pad, "must be >= 0", "use 0 to disable")
    _check(
        0 <= a.rotate_deg <= 180,
        "data.augment.rotate_deg",
        a.rotate_deg,
        "must be within [0, 180]",
        "use e.g. 20",
    )
    _check(
        0 <= a.color_jitter < 1,
        "data.augment.color_jitter",
        a.color_jitter,
        "must be within [0, 1)",
        "use e.g. 0.2",
    )
    _check(0 <= a.hue <= 0.5, "data.augment.hue", a.hue, "must be within [0, 0.5]", "use e.g. 0.1")
    if d.normalize is not None:
        n = d.normalize
        _check(
            len(n.mean) == len(n.std) and len(n.mean) > 0,
            "data.normalize",
            dataclasses.asdict(n),
            "mean and std need one value per channel",
            "give equally long lists",
        )
        _check(
            all(s > 0 for s in n.std),
            "data.normalize.std",
            n.std,
            "must be positive",
            "use e.g. [0.5, 0.5, 0.5]",
        )
    s = d.synthetic
    _check(
        all(v >= 1 for v in s.shape) and s.shape[0] in (1, 3),
        "data.synthetic.shape",
        s.shape,
        "expected [channels (1 or 3), height, width]",
        "use e.g. [3, 32, 32]",
    )
    _check(
        s.n_classes >= 2,
        "data.synthetic.n_classes",
        s.n_classes,
        "need at least 2 classes",
        "use e.g. 10",
    )
    _check(
        s.n_samples >= 10 * s.n_classes,
        "data.synthetic.n_samples",
        s.n_samples,
        f"too few for {s.n_classes} classes",
        f"use at least {10 * s.n_classes}",
    )
    m = cfg.model
    _check(
        m.padding in (0, 1, 2),
        "model.padding",
        m.padding,
        "must be 0, 1 or 2",
        "use 0 for the seed's net, 1 to keep sizes",
    )
    _check(
        all(0 <= p < 1 for p in m.dropout),
        "model.dropout",
        m.dropout,
        "must be within [0, 1)",
        "use e.g. [0.1, 0.5]",
    )
    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1", "use e.g. 10")
    _check(t.patience >= 1, "train.patience", t.patience, "must be >= 1", "use e.g. 3")
    _check(t.min_delta >= 0, "train.min_delta", t.min_delta, "must be >= 0", "use 0.0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0", "use 0.0")
    _check(
        t.checkpoint_every_s >= 0,
        "train.checkpoint_every_s",
        t.checkpoint_every_s,
        "must be >= 0",
        "use e.g. 10 (seconds), or 0 to checkpoint after every epoch",
    )
    _check(
        t.eval_batch_size >= 1,
        "train.eval_batch_size",
        t.eval_batch_size,
        "must be >= 1",
        "use e.g. 1024",
    )
    se = cfg.search
    _check(se.n_trials >= 1, "search.n_trials", se.n_trials, "must be >= 1", "use e.g. 20")
    _check(
        se.timeout_s is None or se.timeout_s > 0,
        "search.timeout_s",
        se.timeout_s,
        "must be positive",
        "use null for no limit",
    )
    _check(se.keep_top_k >= 0, "search.keep_top_k", se.keep_top_k, "must be >= 0", "use e.g. 3")
    _check(
        se.max_failures is None or se.max_failures >= 1,
        "search.max_failures",
        se.max_failures,
        "must be >= 1",
        "use e.g. 5, or null (a run stops only after as many failures as search.n_trials)",
    )
    _check(
        se.heartbeat_interval_s >= 1,
        "search.heartbeat_interval_s",
        se.heartbeat_interval_s,
        "must be >= 1",
        "use e.g. 20",
    )
    _check(
        se.grace_period_s > se.heartbeat_interval_s,
        "search.grace_period_s",
        se.grace_period_s,
        f"must exceed search.heartbeat_interval_s ({se.heartbeat_interval_s})",
        f"use e.g. {3 * se.heartbeat_interval_s}",
    )
    _check(se.max_retry >= 0, "search.max_retry", se.max_retry, "must be >= 0", "use e.g. 3")
    _check(
        se.sampler.name in SAMPLERS,
        "search.sampler.name",
        se.sampler.name,
        "unknown sampler",
        f"use one of: {', '.join(SAMPLERS)}",
    )
    _check(
        se.pruner.name in PRUNERS,
        "search.pruner.name",
        se.pruner.name,
        "unknown pruner",
        f"use one of: {', '.join(PRUNERS)}",
    )
    _check(
        0 < se.pruner.percentile < 100,
        "search.pruner.percentile",
        se.pruner.percentile,
        "must be within (0, 100)",
        "use e.g. 25",
    )
    _check(
        se.pruner.reduction_factor >= 2,
        "search.pruner.reduction_factor",
        se.pruner.reduction_factor,
        "must be >= 2",
        "use 3",
    )
    if se.sampler.name == "grid":
        for name, spec in se.space.items():
            _check(
                spec.fixed or spec.choices is not None or (name in INT_PARAMS) or spec.step is not None,
                f"search.space.{name}",
                spec.as_yaml(),
                "the grid sampler needs a finite set of values",
                "give choices, a fixed value, or a step",
            )
    f = cfg.finetune
    _check(f.epochs >= 1, "finetune.epochs", f.epochs, "must be >= 1", "use e.g. 40")
    _check(
        0 < f.lr_scale <= 10,
        "finetune.lr_scale",
        f.lr_scale,
        "must be within (0, 10]",
        "use e.g. 0.8",
    )
    _check(f.patience >= 1, "finetune.patience", f.patience, "must be >= 1", "use e.g. 6")
    return cfg


# --------------------------------------------------------------------------- entry points

# PyYAML raises more than YAMLError on bad input: ValueError for impossible dates ("2001-13-01"),
# "!!float abc" or ints over 4300 digits, RecursionError for very deep nesting.
YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)


def apply_overrides(raw: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides (values parsed as YAML) to a raw config mapping, in place."""
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "expected KEY=VALUE", "write e.g. --set train.epochs=2")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except YAML_ERRORS as exc:
            raise ConfigError(
                key,
                text,
                f"not valid YAML ({exc.__class__.__name__})",
                "quote strings, e.g. --set name='my-study'",
            ) from exc
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    where,
                    child,
                    "is a value, not a section",
                    f"set {where} itself, e.g. --set {where}=...",
                )
            node = child
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: Mapping[str, Any], *, default_name: str = "study") -> StudyConfig:
    """Build and validate a config from a plain mapping (a parsed YAML file or a study's stored config)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config", raw, "the top level must be a mapping", "write key: value lines")
    data = dict(raw)
    data.setdefault("name", default_name)
    cfg = _build(StudyConfig, data, "")
    return validate(cfg)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a YAML study config, apply ``--set`` overrides, validate. Raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("config", str(p), "file not found", "check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", str(p), f"unreadable ({exc})", "give a UTF-8 YAML file") from exc
    try:
        raw = yaml.safe_load(text)
    except YAML_ERRORS as exc:
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


def to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """A JSON/YAML-safe mapping that :func:`config_from_dict` turns back into the same config."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, ParamSpec):
            return obj.as_yaml()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Mapping):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    out: dict[str, Any] = plain(cfg)
    return out


def replace(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """A validated copy of ``cfg`` with top-level fields changed."""
    return validate(dataclasses.replace(cfg, **changes))
