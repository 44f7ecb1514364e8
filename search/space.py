"""The search space as data, and the one function that samples it.

``suggest(trial, space)`` is used by the objective; ``params_of(trial_params, space)``
rebuilds the same five hyperparameters from a finished trial (fixed values included), so the
best config can be re-created without re-sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from search.config import INT_PARAMS, PARAM_NAMES, ParamSpec


class SuggestsParams(Protocol):
    """What ``suggest`` needs from a trial (``optuna.Trial`` satisfies it)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


def _cast(name: str, value: Any) -> int | float:
    return int(value) if name in INT_PARAMS else float(value)


def suggest(trial: SuggestsParams, space: Mapping[str, ParamSpec]) -> dict[str, int | float]:
    """Sample every searched parameter from ``trial``; fixed parameters are returned as given."""
    params: dict[str, int | float] = {}
    for name in PARAM_NAMES:
        spec = space[name]
        if spec.value is not None:
            params[name] = _cast(name, spec.value)
        elif spec.choices is not None:
            choices = [_cast(name, c) for c in spec.choices]
            params[name] = _cast(name, trial.suggest_categorical(name, choices))
        elif name in INT_PARAMS:
            assert spec.low is not None and spec.high is not None
            step = 1 if spec.step is None else int(spec.step)
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_float(
                name, float(spec.low), float(spec.high), step=spec.step, log=spec.log
            )
    return params


def params_of(trial_params: Mapping[str, Any], space: Mapping[str, ParamSpec]) -> dict[str, int | float]:
    """The five hyperparameters of a finished trial: its sampled params plus the space's fixed values."""
    out: dict[str, int | float] = {}
    for name in PARAM_NAMES:
        spec = space[name]
        if spec.value is not None:
            out[name] = _cast(name, spec.value)
        elif name in trial_params:
            out[name] = _cast(name, trial_params[name])
        else:
            raise KeyError(f"trial has no value for searched parameter {name!r}")
    return out


def grid_values(space: Mapping[str, ParamSpec]) -> dict[str, list[int | float]]:
    """Every value of each searched parameter, for the grid sampler (fixed parameters left out)."""
    grid: dict[str, list[int | float]] = {}
    for name in PARAM_NAMES:
        spec = space[name]
        if spec.value is not None:
            continue
        if spec.choices is not None:
            grid[name] = [_cast(name, c) for c in spec.choices]
            continue
        assert spec.low is not None and spec.high is not None
        step = spec.step if spec.step is not None else 1
        n = round((spec.high - spec.low) / step) + 1
        grid[name] = [_cast(name, spec.low + i * step) for i in range(n)]
    return grid


def grid_size(space: Mapping[str, ParamSpec]) -> int:
    """How many distinct configurations the grid sampler will visit."""
    size = 1
    for values in grid_values(space).values():
        size *= len(values)
    return size
