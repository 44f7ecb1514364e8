"""Studies on the storage: create / resume, stale and retried trials.

``search.n_trials`` counts the study's total over all runs and workers (the loop that keeps it is
``search.study.run``). Heartbeats are on, so a killed worker's trial is marked FAIL and re-queued
by Optuna's ``RetryHeartbeatStaleTrialCallback`` (:class:`RetryStale` adds what we need). Opening
the storage itself is ``search.store.storage``; the sampler and pruner are ``search.study.sampling``,
budgets and the best trial ``search.study.budgets``. This module logs; it never prints.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig, mask_url, to_dict
from search.errors import InputError
from search.store.records import CONFIG_ATTR, DATA_ATTR, DEVICE_ATTR, FAIL_REASON_ATTR, HOST_ATTR, PID_ATTR
from search.store.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    StorageError,
    load_study,
    make_storage,
    scrub,
    sqlite_path,
)
from search.study.budgets import FINISHED_STATES, best_trial, is_feasible, over_budget_counts
from search.study.cached import StudyStorage
from search.study.pareto import directions, metric_names
from search.study.sampling import SobolStartup, TrialSeeded, enqueue_default, make_pruner, make_sampler

log = logging.getLogger(__name__)

METRIC_NAME = "val_accuracy"  # the first objective: accuracy on the validation split

__all__ = [  # re-exported: callers that only need a study import this module
    "CONFIG_ATTR",
    "DATA_ATTR",
    "FAIL_REASON_ATTR",
    "FINISHED_STATES",
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "SobolStartup",
    "StorageError",
    "TrialSeeded",
    "best_trial",
    "enqueue_default",
    "is_feasible",
    "load_study",
    "make_pruner",
    "make_sampler",
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
        storage=StudyStorage(storage),  # finished trials read once, RUNNING ones only when asked for
        study_name=cfg.name,
        directions=directions(cfg),  # [val_accuracy, COST]: a multi-objective (Pareto) study
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    if len(study.directions) != len(cfg.search.objectives):  # e.g. a worker joining another study
        raise InputError(
            f"study {cfg.name!r} has {len(study.directions)} objective(s), the config "
            f"{len(cfg.search.objectives)} (search.objectives {list(cfg.search.objectives)}). Fix: restore "
            "the study's search.objectives, or pass --study-name NEW_NAME or --fresh"
        )
    from search.study.tally import StudyReader  # it imports this module

    n_existing = sum(StudyReader(storage).counts(cfg.name).values())  # one count, no trial read
    if n_existing:
        log.info("resuming study %s (%d trials so far)", cfg.name, n_existing)
    if study.metric_names is None:  # the dashboard's plots and best-trial card name the objectives
        with warnings.catch_warnings():  # experimental since optuna 3.2, still the public API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(cfg))
    from search.store.artifacts import ensure_checkpoint_key  # torch: only where a study is opened to run

    ensure_checkpoint_key(study)  # before any trial: checkpoints are keyed by it, not by the name
    if CONFIG_ATTR not in study.user_attrs:
        # The dashboard shows attrs cut at 1024 chars; it writes the whole config as the study's
        # note when it opens (search.serve.dashboard), so a run without --dashboard never imports it.
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
        pid = t.user_attrs.get(PID_ATTR)
        out.append(
            RunningTrial(
                number=t.number,
                trial_id=ids[t.number],
                host=str(t.user_attrs.get(HOST_ATTR, "?")),
                pid=int(pid) if pid is not None else None,
                device=str(t.user_attrs.get(DEVICE_ATTR, "?")),
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
