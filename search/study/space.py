"""The search space as data, and the one function that samples it.

``suggest(trial, space)`` is used by the objective; ``params_of(trial_params, space)``
rebuilds the same parameters from a finished trial (fixed values included), so the best config
can be re-created without re-sampling. Both return every parameter keyed by its Optuna name:
the five short names (c1, c2, l1, lr, batch_size) and the dotted config fields of the space
(``train.weight_decay``; the Optuna name is the dotted path). ``config.trial_config`` turns the
dotted ones into the trial's config.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from search.config import INT_PARAMS, PARAM_NAMES, ParamSpec, is_int_range, sampled_high

if TYPE_CHECKING:
    from search.config import StudyConfig

ParamValue = int | float | str | bool


class SuggestsParams(Protocol):
    """What ``suggest`` needs from a trial (``optuna.Trial`` satisfies it)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


def _cast(name: str, value: Any) -> ParamValue:
    """A value as parameter ``name`` takes it: the five names cast; dotted values as validated."""
    if name not in PARAM_NAMES:
        return value  # type: ignore[no-any-return]
    return int(value) if name in INT_PARAMS else float(value)


def names(space: Mapping[str, ParamSpec]) -> list[str]:
    """The space's parameter names: the five short names first, then the dotted ones as written."""
    return [*PARAM_NAMES, *(k for k in space if k not in PARAM_NAMES)]


def suggest(trial: SuggestsParams, space: Mapping[str, ParamSpec]) -> dict[str, ParamValue]:
    """Sample every searched parameter from ``trial``; fixed parameters are returned as given."""
    params: dict[str, ParamValue] = {}
    for name in names(space):
        spec = space[name]
        if spec.value is not None:
            params[name] = _cast(name, spec.value)
        elif spec.choices is not None:
            choices = [_cast(name, c) for c in spec.choices]
            params[name] = _cast(name, trial.suggest_categorical(name, choices))
        elif name in INT_PARAMS or is_int_range(spec):
            assert spec.low is not None and spec.high is not None
            step = 1 if spec.step is None else int(spec.step)
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_float(
                name, float(spec.low), float(spec.high), step=spec.step, log=spec.log
            )
    return params


def params_of(trial_params: Mapping[str, Any], space: Mapping[str, ParamSpec]) -> dict[str, ParamValue]:
    """A finished trial's parameters: its sampled params plus the space's fixed values."""
    out: dict[str, ParamValue] = {}
    for name in names(space):
        spec = space[name]
        if spec.value is not None:
            out[name] = _cast(name, spec.value)
        elif name in trial_params:
            out[name] = _cast(name, trial_params[name])
        else:
            raise KeyError(f"trial has no value for searched parameter {name!r}")
    return out


def _steps(spec: ParamSpec) -> tuple[decimal.Decimal, decimal.Decimal, int]:
    """A range's low and step as decimals (Optuna counts steps so) and its count of whole steps."""
    assert spec.low is not None and spec.high is not None
    low, high = decimal.Decimal(str(spec.low)), decimal.Decimal(str(spec.high))
    step = decimal.Decimal(str(spec.step if spec.step is not None else 1))
    return low, step, int((high - low) // step)


def range_values(spec: ParamSpec, integer: bool) -> list[int | float]:
    """A stepped range's values ``low, low + step, ... <= high``: exactly what the samplers draw.

    Optuna lowers ``high`` onto the last step below it when the step does not divide the range
    (16..60 step 16 samples 16, 32, 48); the values are counted in decimals as Optuna does, so
    0.1 + 2 * 0.1 is 0.3 and float steps never creep past ``high``."""
    low, step, n = _steps(spec)
    if integer:
        return [int(low + i * step) for i in range(n + 1)]
    return [float(low + i * step) for i in range(n + 1)]


def highest_value(spec: ParamSpec, integer: bool) -> int | float | None:
    """The largest value a stepped range samples when its step does not divide it (else None)."""
    if spec.step is None or spec.low is None or spec.high is None:
        return None
    last = sampled_high(spec)
    last = int(last) if integer else float(last)
    return None if last == spec.high else last


def space_warnings(cfg: StudyConfig) -> list[str]:
    """What ``validate`` and ``run`` warn about the space: each stepped range whose step does not
    divide it (every sampler, the grid too, stops at the last step below ``high``), a grid
    smaller than ``search.n_trials`` (the run ends when every point is tried once), and choices
    under CMA-ES (sampled at random: said once here, not by Optuna in every trial)."""
    space = cfg.search.space
    out = []
    chosen = [n for n in names(space) if space[n].choices is not None and len(space[n].choices or ()) > 1]
    if cfg.search.sampler.name == "cmaes" and chosen:
        out.append(
            f"search.sampler cmaes models number ranges only: {', '.join(chosen)} (choices) "
            f"{'is' if len(chosen) == 1 else 'are'} sampled at random in every trial. "
            f"Fix: give {'it a range' if len(chosen) == 1 else 'them ranges'}, or use the tpe or gp sampler"
        )
    if cfg.search.sampler.name == "grid" and grid_size(space) < cfg.search.n_trials:
        size = grid_size(space)
        out.append(
            f"search.n_trials {cfg.search.n_trials} is more than the grid's {size} points: the run "
            f"ends after {size} trials (no point is trained twice). Fix: set search.n_trials to {size}"
        )
    for name in names(space):
        spec = space[name]
        last = highest_value(spec, name in INT_PARAMS or is_int_range(spec))
        if last is not None:
            out.append(
                f"search.space.{name}: step {_num(spec.step)} does not divide {_num(spec.low)}.."
                f"{_num(spec.high)}, so the highest value tried is {_num(last)}. "
                f"Fix: set high: {_num(last)}, or a step that divides the range"
            )
    return out


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_values(space: Mapping[str, ParamSpec]) -> dict[str, list[ParamValue]]:
    """Every value of each searched parameter, for the grid sampler (fixed parameters left out).

    Finite sets only (the config refuses a grid over a continuous range): choices, integer
    ranges, and ranges with a step (:func:`range_values`: never a value above ``high``).
    """
    grid: dict[str, list[ParamValue]] = {}
    for name in names(space):
        spec = space[name]
        if spec.value is not None:
            continue
        if spec.choices is not None:
            grid[name] = [_cast(name, c) for c in spec.choices]
            continue
        grid[name] = [v for v in range_values(spec, name in INT_PARAMS or is_int_range(spec))]
    return grid


def grid_size(space: Mapping[str, ParamSpec]) -> int:
    """How many distinct configurations the grid sampler will visit."""
    size = 1
    for values in grid_values(space).values():
        size *= len(values)
    return size


def log_midpoint(space: Mapping[str, ParamSpec]) -> dict[str, int | float]:
    """The five searched parameters' log-midpoints (fixed and dotted ones left out: the sampler
    draws those): each range's geometric middle ``sqrt(low * high)``, rounded to an integer or
    onto its step; for choices, the choice nearest the middle of the smallest and largest on a
    log scale (the smaller one on a tie). ``lr`` in 1e-4..1e-2 gives 1e-3; the default space
    gives c1 16, c2 32, l1 91, batch 64."""
    out: dict[str, int | float] = {}
    for name in PARAM_NAMES:
        spec = space[name]
        if spec.value is not None:
            continue
        if spec.choices is not None:
            values = [float(c) for c in spec.choices if isinstance(c, int | float)]
            mid = math.sqrt(min(values) * max(values))
            pick = min(values, key=lambda c: (round(abs(math.log(c / mid)), 9), c))
            out[name] = round(pick) if name in INT_PARAMS else pick
            continue
        assert spec.low is not None and spec.high is not None
        low, high = float(spec.low), float(spec.high)
        mid = math.sqrt(low * high)
        if spec.step is not None:  # onto the step, never past the last value the range samples
            step = float(spec.step)
            mid = low + min(round((mid - low) / step), _steps(spec)[2]) * step
        out[name] = round(mid) if name in INT_PARAMS else mid
    return out
