"""Studies on the storage: sampler and pruner, create / resume, stale and retried trials.

``search.n_trials`` counts the study's total over all runs and workers (the loop that keeps it is
``search.run``). Heartbeats are on, so a killed worker's trial is marked FAIL and re-queued by
Optuna's ``RetryHeartbeatStaleTrialCallback`` (:class:`RetryStale` adds what we need). Opening
the storage itself is ``search.storage``. This module logs; it never prints.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, StudyConfig, mask_url, to_dict
from search.store.storage import (
    CONFIG_ATTR,
    DATA_ATTR,
    FINISHED_STATES,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    StorageError,
    best_trial,
    is_feasible,
    load_study,
    make_storage,
    over_budget_counts,
    scrub,
    sqlite_path,
)
from search.study.failures import FAIL_REASON_ATTR
from search.study.space import grid_values, log_midpoint

log = logging.getLogger(__name__)

METRIC_NAME = "val_accuracy"  # the one objective: accuracy on the validation split

__all__ = [  # storage names re-exported: callers that only need a study import this module
    "CONFIG_ATTR",
    "DATA_ATTR",
    "FAIL_REASON_ATTR",
    "FINISHED_STATES",
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "StorageError",
    "best_trial",
    "is_feasible",
    "load_study",
    "make_storage",
    "mask_url",
    "over_budget_counts",
    "scrub",
    "sqlite_path",
]


def storage_for(cfg: StudyConfig, url: str | None = None, *, create: bool = True) -> RDBStorage:
    """The storage of ``cfg`` (or ``url``) with the config's heartbeat and retry settings."""
    return make_storage(
        url or cfg.storage,
        create=create,
        heartbeat_interval_s=cfg.search.heartbeat_interval_s,
        grace_period_s=cfg.search.grace_period_s,
        max_retry=cfg.search.max_retry,
        stale_callback=RetryStale(cfg.search.max_retry, cfg.checkpoints_dir),
    )


# --------------------------------------------------------------------------- sampler and pruner


class _Delegating(optuna.samplers.BaseSampler):
    """A sampler that hands every call to ``self._inner`` (subclasses choose it per trial)."""

    _inner: optuna.samplers.BaseSampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
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
    ) -> None:
        self._make = make
        self._seed = seed
        self._inner = first
        self._fits = fits

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(_seed32(self._seed + trial.number))
        self._inner.before_trial(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self._inner.sample_relative(study, trial, search_space)
        if params and self._fits is not None and not self._fits(params):
            message = "trial %d: the sampler proposed params over max_params; sampled at random"
            log.debug(message, trial.number)
            return {}
        return params


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

    TPE, random, CMA-ES and GP are seeded per trial with ``seed + trial number`` (see
    :class:`TrialSeeded`, which also gets ``fits``); grid and QMC keep one seed: their order of
    points hangs on it, and they pick each trial's point from the trials in the storage (the
    trial number, the sample id).

    Budgets (``search.constraints``) need no sampler option: the objective stores each trial's
    constraint values with ``Trial.set_constraint`` (Optuna 5; the samplers' ``constraints_func``
    is deprecated since 5.0) and TPE, GP and NSGA-II read them from the storage.

    With ``search.sampler.startup: sobol``, TPE / CMA-ES / GP take their start-up trials from one
    such QMC sequence (:class:`SobolStartup`).
    """
    if cfg.search.sampler.name in ("grid", "qmc"):
        return _sampler(cfg, _seed32(cfg.seed))
    first = _sampler(cfg, _seed32(cfg.seed))  # fails here on a missing dependency
    seeded = TrialSeeded(lambda seed: _sampler(cfg, seed), cfg.seed, first, fits)
    if cfg.search.sampler.startup == "sobol" and cfg.search.sampler.name != "random":
        qmc = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=_seed32(cfg.seed))
        return SobolStartup(seeded, qmc, _startup_trials(cfg))
    return seeded


def enqueue_default(study: optuna.Study, cfg: StudyConfig) -> bool:
    """Enqueue the space's log-midpoint as a new study's first trial (``search.enqueue_default``).

    Only on a study with no trials yet and not with the grid sampler (it visits its own points);
    True when it was enqueued."""
    if not cfg.search.enqueue_default or cfg.search.sampler.name == "grid":
        return False
    params = log_midpoint(cfg.search.space)
    if not params or study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={"enqueued": "default"}, skip_if_exists=True)
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    log.info("trial 0: the space's log-midpoint %s (search.enqueue_default)", shown)
    return True


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
    # with max_params, TrialSeeded replaces an over-budget proposal by independent sampling on
    # purpose: the samplers' warning about it (which blames a dynamic search space) is off then
    warn = cfg.search.constraints.max_params is None
    if s.name == "cmaes":
        _require("cmaes", "search.sampler.name", s.name)
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=warn, **startup)
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


def open_study(
    cfg: StudyConfig,
    storage: RDBStorage,
    data_attrs: dict[str, Any] | None = None,
    *,
    fits: Callable[[dict[str, Any]], bool] | None = None,
) -> optuna.Study:
    """Create the study, or resume it if it exists; the config is stored on the study.

    ``fits``: whether sampled params fit ``search.constraints.max_params`` (see :class:`TrialSeeded`).
    """
    pruner = make_pruner(cfg)
    sampler = make_sampler(cfg, fits)  # checks dependencies before touching the storage
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    n_existing = len(study.get_trials(deepcopy=False))
    if n_existing:
        log.info("resuming study %s (%d trials so far)", cfg.name, n_existing)
    if study.metric_names is None:  # the dashboard's plots and best-trial card name the objective
        with warnings.catch_warnings():  # experimental since optuna 3.2, still the public API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    from search.store.artifacts import ensure_checkpoint_key  # torch: only where a study is opened to run

    ensure_checkpoint_key(study)  # before any trial: checkpoints are keyed by it, not by the name
    if CONFIG_ATTR not in study.user_attrs:
        # The dashboard shows attrs cut at 1024 chars; it writes the whole config as the study's
        # note when it opens (search.dashboard), so a run without --dashboard never imports it.
        study.set_user_attr(CONFIG_ATTR, {**to_dict(cfg), "storage": mask_url(cfg.storage)})
    if data_attrs is not None and DATA_ATTR not in study.user_attrs:
        study.set_user_attr(DATA_ATTR, data_attrs)
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts.get(state.name, 0) for state in TrialState}


# --------------------------------------------------------------------------- faults: retry, stale trials


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (WAITING copy with its params, ``failed_trial`` /
    ``retry_history`` and intermediate values, at most ``max_retry`` times), plus two things:

    - the retry does not inherit the failed attempt's ``fail_reason``;
    - when no retry follows, the attempts' checkpoints are deleted (nothing would resume them).

    The storage calls it for trials whose heartbeat went stale; the run loop and
    ``search status --fail-stale`` call :meth:`retry` for interrupted and heartbeat-less ones.
    """

    def __init__(self, max_retry: int, checkpoints_dir: str | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry, inherit_intermediate_values=True)
        self.max_retry = max_retry
        self.checkpoints_dir = checkpoints_dir

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)

    def retry(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Re-queue ``trial`` (a FAIL one); False when it was retried ``max_retry`` times already."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            attempts = [*self.retry_history(trial), trial.number]
        if len(attempts) > self.max_retry:
            log.warning(
                "trial %d was retried %d times already (search.max_retry); not again",
                trial.number,
                self.max_retry,
            )
            self._drop_checkpoints(study, attempts)
            return False
        clean = copy.copy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR}
        super().__call__(study, clean)
        return True

    def _drop_checkpoints(self, study: optuna.Study, numbers: list[int]) -> None:
        if self.checkpoints_dir is None:
            return
        from search.store.artifacts import CheckpointStore  # torch: only when there is something to delete

        CheckpointStore.for_study(self.checkpoints_dir, study).remove(*numbers)


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial as ``search status`` shows it."""

    number: int
    trial_id: int
    host: str
    pid: int | None
    device: str
    started: datetime | None
    age_s: float | None  # since the trial started
    heartbeat_age_s: float | None  # None: no heartbeat recorded (yet, or a worker without heartbeats)
    stale: bool


def running_trials(
    study: optuna.Study,
    storage: RDBStorage,
    grace_period_s: float,
    trials: Sequence[FrozenTrial] | None = None,
) -> list[RunningTrial]:
    """The RUNNING trials among ``trials`` (default: the study's) with host/pid/device and heartbeat age.

    Stale (the one definition, used by the run loop and ``search status``): Optuna's, a last
    heartbeat older than ``grace_period_s`` on the database's clock; and, for trials that never
    recorded one (Optuna never fails those), started longer ago than that.
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if t.state == TrialState.RUNNING]
    if not trials:
        return []  # no storage round trip (the database's clock) when nothing runs
    study_id = storage.get_study_id_from_name(study.study_name) if trials else -1
    ids = {t.number: storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials}
    db_now, beats = _heartbeats(storage, list(ids.values()))
    now = datetime.now()  # Optuna stores datetime_start as naive local time
    out = []
    for t in trials:
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else None
        beat = beats.get(ids[t.number])
        hb_age = None if beat is None else max(0.0, (db_now - beat).total_seconds())
        stale = hb_age > grace_period_s if hb_age is not None else age is not None and age > grace_period_s
        pid = t.user_attrs.get("pid")
        out.append(
            RunningTrial(
                number=t.number,
                trial_id=ids[t.number],
                host=str(t.user_attrs.get("host", "?")),
                pid=int(pid) if pid is not None else None,
                device=str(t.user_attrs.get("device", "?")),
                started=t.datetime_start,
                age_s=age,
                heartbeat_age_s=hb_age,
                stale=stale,
            )
        )
    return out


# Optuna has no public API that reads a trial's last heartbeat (only records it), so status reads
# its table by the storage schema's names rather than through the private optuna.storages._rdb.
_HEARTBEATS = sqlalchemy.table(
    "trial_heartbeats", sqlalchemy.column("trial_id"), sqlalchemy.column("heartbeat", sqlalchemy.DateTime)
)


def _heartbeats(storage: RDBStorage, trial_ids: list[int]) -> tuple[datetime, dict[int, datetime]]:
    """The database's clock and the last heartbeat of each of ``trial_ids`` that has one."""
    with storage.engine.connect() as conn:
        db_now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = []
        if trial_ids:
            query = sqlalchemy.select(_HEARTBEATS.c.trial_id, _HEARTBEATS.c.heartbeat).where(
                _HEARTBEATS.c.trial_id.in_(trial_ids)
            )
            rows = list(conn.execute(query))
    if isinstance(db_now, str):  # SQLite returns CURRENT_TIMESTAMP as text
        db_now = datetime.fromisoformat(db_now)
    naive = db_now.replace(tzinfo=None)
    return naive, {int(r[0]): r[1].replace(tzinfo=None) for r in rows}


@dataclass(frozen=True)
class StaleResult:
    """What :func:`fail_stale_trials` did: trials marked FAIL, split by whether a retry follows."""

    requeued: list[int]
    not_requeued: list[int]


def fail_stale_trials(
    study: optuna.Study,
    storage: RDBStorage,
    grace_period_s: float,
    retry: RetryStale,
    running: Sequence[RunningTrial] | None = None,
) -> StaleResult:
    """Mark the study's stale RUNNING trials FAIL (``fail_reason`` "stale") and re-queue them
    through ``retry`` (at most ``max_retry`` times per original trial). ``running``: the
    :func:`running_trials` the caller already read (default: read them here)."""
    requeued: list[int] = []
    not_requeued: list[int] = []
    if running is None:
        running = running_trials(study, storage, grace_period_s)
    for rt in running:
        if not rt.stale:
            continue
        try:
            storage.set_trial_user_attr(rt.trial_id, FAIL_REASON_ATTR, "stale")
            if not storage.set_trial_state_values(rt.trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        again = retry.retry(study, storage.get_trial(rt.trial_id))
        (requeued if again else not_requeued).append(rt.number)
    return StaleResult(requeued, not_requeued)
