"""Sampling and pruning: the configured sampler (seeded per trial, Sobol start-up), the pruner,
and the space's log-midpoint enqueued as a new study's first trial. This module logs; it never prints.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, ParamSpec, StudyConfig
from search.store.records import ENQUEUED_ATTR
from search.study.budgets import FINISHED_STATES
from search.study.cached import FinishedView
from search.study.space import grid_size, grid_values, log_midpoint, suggest

log = logging.getLogger(__name__)
# samplers that read unfinished trials only through explicit states or as a search-space cache barrier
_FRESH_SNAPSHOT_EXACT = (optuna.samplers.TPESampler, optuna.samplers.RandomSampler)


class _Delegating(optuna.samplers.BaseSampler):
    """A sampler that hands every call to ``self._inner`` (subclasses choose it per trial), with
    the study as a :class:`search.study.cached.FinishedView`: the sampler's reads of finished
    trials go to the storage as asked for, once per trial, and no RUNNING trial is read unless the
    sampler asks for it."""

    _inner: optuna.samplers.BaseSampler
    _view: FinishedView | None = None

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        """The study as the sampler reads it during ``trial``."""
        view: FinishedView
        if isinstance(study, FinishedView):  # a delegating sampler inside another one
            view = study
        elif self._view is None or self._view.study is not study or self._view.number != trial.number:
            view = self._view = FinishedView(study, trial.number)
        else:
            view = self._view
        if self._fresh_snapshot_exact():
            view.finished_snapshot = True
        return view  # type: ignore[return-value]

    def _fresh_snapshot_exact(self) -> bool:
        """Whether a snapshot of every state may be served by the finished trials (see
        :class:`FinishedView`): only a sampler built fresh each trial says so."""
        return False

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(self._seen(study, trial), trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(self._seen(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(self._seen(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(self._seen(study, trial), trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._view = None
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


class TrialSeeded(_Delegating):
    """A sampler built afresh for each trial with seed ``(seed + trial number) mod 2**32``.

    Trial numbers are unique in a study, so concurrent runs and workers on one study never draw
    from the same random state (two copies of one command used to sample identical params), a
    resumed study never replays the first run's draws, and one run stays reproducible. The
    samplers keep everything else they learn in the storage, so a fresh instance loses nothing.

    With ``fits`` (whether sampled params build a model within ``search.constraints.max_params``),
    a relative proposal over that budget is dropped and the trial's params come from the
    sampler's independent (random) sampling instead. GPSampler (and CMA-ES) model COMPLETE trials
    only, so an over-budget trial, ended PRUNED before training, is invisible to them: without
    this they propose the same over-budget point trial after trial.
    """

    def __init__(
        self,
        make: Callable[[int], optuna.samplers.BaseSampler],
        seed: int,
        first: optuna.samplers.BaseSampler,
        fits: Callable[[dict[str, Any]], bool] | None = None,
        space: Mapping[str, BaseDistribution] | None = None,
    ) -> None:
        self._make = make
        self._seed = seed
        self._inner = first
        self._fits = fits
        self._space = dict(space or {})
        self._drawn: tuple[int, dict[str, Any]] = (-1, {})

    def _fresh_snapshot_exact(self) -> bool:
        return isinstance(self._inner, _FRESH_SNAPSHOT_EXACT)  # a fresh TPE or random sampler each trial

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(_seed32(self._seed + trial.number))
        self._drawn = (-1, {})
        self._inner.before_trial(self._seen(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The sampler's relative proposal, checked whole against max_params: the parameters it
        leaves to independent sampling (CMA-ES: the choices) are drawn now, checked with it and
        kept for :meth:`sample_independent`, so the check sees every value the trial trains."""
        study = self._seen(study, trial)
        params = self._inner.sample_relative(study, trial, search_space)
        if not params or self._fits is None:
            return params
        drawn = {
            name: self._inner.sample_independent(study, trial, name, dist)
            for name, dist in self._space.items()
            if name not in params
        }
        if not self._fits({**params, **drawn}):
            message = "trial %d: the sampler proposed params over max_params; sampled at random"
            log.debug(message, trial.number)
            return {}
        self._drawn = (trial.number, drawn)
        return params

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        number, drawn = self._drawn
        if number == trial.number and param_name in drawn:
            return drawn[param_name]
        return self._inner.sample_independent(self._seen(study, trial), trial, param_name, param_distribution)


class SobolStartup(_Delegating):
    """``main``'s start-up trials drawn from a scrambled Sobol sequence instead of at random.

    While the study holds fewer than ``n_startup`` finished (COMPLETE or PRUNED) trials, the
    same count TPE uses to end its random phase, each trial is a point of ``qmc`` (one
    :class:`optuna.samplers.QMCSampler` with one seed: the sequence is shared by the study through
    its storage); afterwards ``main`` samples. An enqueued trial (``search.enqueue_default``, a
    warm start) keeps its fixed params either way.
    """

    def __init__(
        self, main: optuna.samplers.BaseSampler, qmc: optuna.samplers.BaseSampler, n_startup: int
    ) -> None:
        self._main = main
        self._qmc = qmc
        self._n_startup = n_startup
        self._inner = main

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        study = self._seen(study, trial)
        done = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        self._inner = self._qmc if done < self._n_startup else self._main
        self._inner.before_trial(study, trial)

    def reseed_rng(self) -> None:
        self._main.reseed_rng()


def _startup_trials(cfg: StudyConfig) -> int:
    """The sampler's start-up trials: ``search.sampler.n_startup_trials``, else the sampler's own
    default (read from its signature, so it follows Optuna's)."""
    s = cfg.search.sampler
    if s.n_startup_trials is not None:
        return s.n_startup_trials
    if s.name == "nsga2":  # its first generation is its start-up
        return int(inspect.signature(optuna.samplers.NSGAIISampler).parameters["population_size"].default)
    cls = {
        "tpe": optuna.samplers.TPESampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
    }[s.name]
    default = inspect.signature(cls).parameters["n_startup_trials"].default
    return int(default)


def make_sampler(
    cfg: StudyConfig, fits: Callable[[dict[str, Any]], bool] | None = None
) -> optuna.samplers.BaseSampler:
    """The configured sampler; missing optional dependencies fail here, before any trial.

    TPE, random, CMA-ES, GP and NSGA-II are seeded per trial with ``seed + trial number`` (see
    :class:`TrialSeeded`, which also gets ``fits``); grid and QMC keep one seed: their order of
    points hangs on it, and they pick each trial's point from the trials in the storage (the
    trial number, the sample id).

    Budgets (``search.constraints``) need no sampler option: the objective stores each trial's
    constraint values with ``Trial.set_constraint`` (Optuna 5; the samplers' ``constraints_func``
    is deprecated since 5.0) and TPE, GP and NSGA-II read them from the storage (also in a
    two-objective study, where ``study.best_trials`` keeps feasible trials only).

    With ``search.sampler.startup: sobol``, TPE / CMA-ES / GP take their start-up trials from one
    such QMC sequence (:class:`SobolStartup`).
    """
    if cfg.search.sampler.name in ("grid", "qmc"):
        return _sampler(cfg, _seed32(cfg.seed))
    first = _sampler(cfg, _seed32(cfg.seed))  # fails here on a missing dependency
    space = distributions(cfg.search.space) if fits is not None else None
    seeded = TrialSeeded(lambda seed: _sampler(cfg, seed), cfg.seed, first, fits, space)
    if cfg.search.sampler.startup == "sobol" and cfg.search.sampler.name != "random":
        qmc = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=_seed32(cfg.seed))
        return SobolStartup(seeded, qmc, _startup_trials(cfg))
    return seeded


class _Recorder:
    """A stand-in trial that records the distribution of each parameter :func:`suggest` asks for."""

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.distributions[name] = CategoricalDistribution(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.distributions[name] = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return low


def distributions(space: Mapping[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched parameter, exactly as the objective suggests it."""
    recorder = _Recorder()
    suggest(recorder, space)
    return recorder.distributions


def enqueue_default(study: optuna.Study, cfg: StudyConfig) -> bool:
    """Enqueue the space's log-midpoint as a new study's first trial (``search.enqueue_default``).

    Only on a study with no trials yet and not with the grid sampler (it visits its own points);
    True when it was enqueued."""
    if not cfg.search.enqueue_default or cfg.search.sampler.name == "grid":
        return False
    params = log_midpoint(cfg.search.space)
    if not params or study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: "default"}, skip_if_exists=True)
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    log.info("trial 0: the space's log-midpoint %s (search.enqueue_default)", shown)
    return True


# The system attrs optuna.samplers.GridSampler gives each trial it places on its grid: the point's
# index and the grid it indexes (read through FrozenTrial.system_attrs).
GRID_ID_ATTR = "grid_id"
GRID_SPACE_ATTR = "search_space"


def grid_point(trial: FrozenTrial, space: Mapping[str, ParamSpec]) -> int | None:
    """The index of the grid point ``trial`` trains (None: not placed on this space's grid, e.g.
    an enqueued trial)."""
    attrs = trial.system_attrs
    if GRID_ID_ATTR not in attrs or attrs.get(GRID_SPACE_ATTR) != dict(sorted(grid_values(space).items())):
        return None
    return int(attrs[GRID_ID_ATTR])


def grid_points_left(trials: Sequence[FrozenTrial], space: Mapping[str, ParamSpec]) -> int:
    """How many points of the grid no trial holds: a finished trial (any state: Optuna's grid
    never revisits a failed point; a retry is enqueued) or a RUNNING one holds its point.

    The storage is shared, so this holds across processes (workers, a resumed run); a study
    whose grid is used up ends instead of letting GridSampler re-train points at random."""
    held = {
        point for t in trials if t.state != TrialState.WAITING and (point := grid_point(t, space)) is not None
    }
    return grid_size(space) - len(held)


def _seed32(seed: int) -> int:
    return seed % 2**32  # numpy's generators take 0 .. 2**32 - 1


def _sampler(cfg: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    s = cfg.search.sampler
    startup: dict[str, Any] = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **startup)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid_values(cfg.search.space), seed=seed)  # type: ignore[arg-type]
    if s.name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if s.name == "nsga2":  # search.sampler.n_startup_trials is its population (the first is random)
        if s.n_startup_trials is None:
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.n_startup_trials)
    # with max_params, TrialSeeded replaces an over-budget proposal by independent sampling on
    # purpose: the samplers' warning about it (which blames a dynamic search space) is off then
    warn = cfg.search.constraints.max_params is None
    if s.name == "cmaes":  # its choices are sampled independently by design: validate says so once
        _require("cmaes", "search.sampler.name", s.name)
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **startup)
    if s.name == "gp":
        _require("scipy", "search.sampler.name", s.name)
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=warn, **startup)
    raise ConfigError("search.sampler.name", s.name, "unknown sampler", "see `search validate`")


def _require(module: str, field: str, value: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            field,
            value,
            f"this sampler needs the package {module!r}",
            f"pip install {module}, or pick another sampler",
        )


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.search.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=cfg.train.epochs,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()
