"""Warm start: enqueue another study's top COMPLETE param sets into a study before any sampling.

:func:`plan_warm_start` reads the source study and keeps the param sets valid in this space (the
rest are skipped, with the reason); :func:`apply_warm_start` enqueues those this study does not hold
yet (user attr ``warm_start_from: "<study>#<trial>"``), so a resumed run enqueues nothing twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.config import INT_PARAMS, PARAM_NAMES, ConfigError, ParamSpec, StudyConfig
from search.store.records import WARM_START_ATTR
from search.store.urls import same_database
from search.study.space import ParamValue, params_of
from search.study.stored import open_existing, study_config, top_trials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartPlan:
    source: str
    candidates: list[tuple[int, dict[str, ParamValue]]]  # (source trial, params searched here)
    skipped: list[tuple[int, str]]  # (source trial, why)


def fit_to_space(name: str, spec: ParamSpec, value: float) -> int | float | None:
    """``value`` as this space's parameter ``name`` takes it (a choice exactly), or None if outside."""
    if name in INT_PARAMS and not float(value).is_integer():
        return None
    cast: Callable[[float], int | float] = int if name in INT_PARAMS else float
    if spec.value is not None:
        fixed = float(spec.value)
        return cast(fixed) if math.isclose(value, fixed, rel_tol=1e-9) else None
    if spec.choices is not None:
        match = [float(c) for c in spec.choices if math.isclose(value, float(c), rel_tol=1e-9)]
        return cast(match[0]) if match else None
    assert spec.low is not None and spec.high is not None
    tol = 1e-9 * max(abs(spec.low), abs(spec.high))
    if not spec.low - tol <= value <= spec.high + tol:
        return None
    if spec.step is not None:
        k = (value - spec.low) / spec.step
        if not math.isclose(k, round(k), abs_tol=1e-6):
            return None
    return cast(min(max(value, spec.low), spec.high))


def _fit_dotted(spec: ParamSpec, value: Any) -> ParamValue | None:
    """A dotted parameter's ``value`` as this space takes it: a listed choice or fixed value
    (same type), or a number inside a range; None when it does not fit."""
    allowed = [spec.value] if spec.value is not None else list(spec.choices or ())
    if allowed:
        match = [a for a in allowed if a == value and type(a) is type(value)]
        return match[0] if match else None
    if isinstance(value, bool) or not isinstance(value, int | float) or spec.low is None:
        return None
    fitted = fit_to_space("", spec, float(value))
    if fitted is None:
        return None
    return int(fitted) if isinstance(spec.low, int) and float(fitted).is_integer() else fitted


def _describe(spec: ParamSpec) -> str:
    if spec.value is not None:
        return f"fixed at {spec.value:g}"
    if spec.choices is not None:
        return "not in choices [" + ", ".join(f"{c:g}" for c in spec.choices) + "]"
    assert spec.low is not None and spec.high is not None
    step = "" if spec.step is None else f" step {spec.step:g}"
    return f"outside [{spec.low:g}, {spec.high:g}]{step}"


def _source_params(trial: FrozenTrial, source_cfg: StudyConfig | None) -> dict[str, Any]:
    if source_cfg is None:
        return dict(trial.params)
    try:
        return dict(params_of(trial.params, source_cfg.search.space))
    except KeyError:
        return dict(trial.params)


def _fit_params(
    space: Mapping[str, ParamSpec], params: Mapping[str, Any]
) -> tuple[dict[str, ParamValue], list[str]]:
    """A source trial's params as this space searches them, and why any does not fit."""
    problems = [f"{name} is not a parameter here" for name in params if name not in space]
    searched: dict[str, ParamValue] = {}
    for name, spec in space.items():
        if name not in params:
            if not spec.fixed:
                problems.append(f"{name} has no value")
            continue
        if name not in PARAM_NAMES:  # a dotted config field: the value as this space takes it
            value = _fit_dotted(spec, params[name])
            why = f"{name}={params[name]!r} is not in this space"
        else:
            value = fit_to_space(name, spec, float(params[name]))
            why = f"{name}={float(params[name]):g} {_describe(spec)}"
        if value is None:
            problems.append(why)
        elif not spec.fixed:
            searched[name] = value
    return searched, problems


def plan_warm_start(cfg: StudyConfig, source: str, storage: str, top: int) -> WarmStartPlan:
    """The source study's top-``top`` COMPLETE param sets that are valid in ``cfg``'s space.

    Reads only (the source must exist: StorageError otherwise); a set with a parameter outside
    this space (or unknown to it) is skipped, with the reason.
    """
    if top < 1:
        raise ConfigError("--warm-start-top", top, "must be >= 1", "use e.g. 5")
    if source == cfg.name and same_database(storage, cfg.storage):  # however either URL spells it
        raise ConfigError(
            "--warm-start", source, "a study cannot warm-start from itself", "name another study"
        )
    study = open_existing(source, storage)
    source_cfg: StudyConfig | None = None
    try:
        source_cfg = study_config(study)  # its fixed values complete a trial's params
    except ConfigError:
        source_cfg = None
    space = cfg.search.space
    candidates: list[tuple[int, dict[str, ParamValue]]] = []
    skipped: list[tuple[int, str]] = []
    for t in top_trials(study, top):
        searched, problems = _fit_params(space, _source_params(t, source_cfg))
        if problems:
            skipped.append((t.number, "; ".join(problems)))
            continue
        candidates.append((t.number, searched))
    return WarmStartPlan(source, candidates, skipped)


@dataclass(frozen=True)
class WarmStartResult:
    enqueued: list[int]  # source trial numbers enqueued by this call
    already: list[int]  # enqueued by an earlier run
    skipped: list[tuple[int, str]]


def apply_warm_start(study: optuna.Study, plan: WarmStartPlan) -> WarmStartResult:
    """Enqueue the plan's param sets that this study does not hold yet (by ``warm_start_from``)."""
    existing = {
        str(t.user_attrs[WARM_START_ATTR])
        for t in study.get_trials(deepcopy=False)
        if WARM_START_ATTR in t.user_attrs
    }
    enqueued, already = [], []
    for number, params in plan.candidates:
        tag = f"{plan.source}#{number}"
        if tag in existing:
            already.append(number)
            continue
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: tag})
        enqueued.append(number)
    if plan.skipped:
        log.warning(
            "warm start from %s: skipped %s",
            plan.source,
            "; ".join(f"{plan.source}#{n} ({why})" for n, why in plan.skipped),
        )
    log.info(
        "warm start from %s: enqueued %s%s",
        plan.source,
        ", ".join(f"#{n}" for n in enqueued) or "none",
        f" (already enqueued: {', '.join(f'#{n}' for n in already)})" if already else "",
    )
    return WarmStartResult(enqueued, already, plan.skipped)
