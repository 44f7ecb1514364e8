"""The one way a study runs: create or resume it, run trials to its exact total, report how it ended.

:func:`run_study` is what ``search run`` (in-process or ``--workers N``), ``search worker``, the
tests and the benchmarks call. Optuna's RDB storage is the scheduler: every process on a study
runs the same loop:

1. fail stale trials (:func:`search.study.fail_stale_trials`; a retry is re-queued as WAITING);
2. stop when the study holds ``search.n_trials`` finished (COMPLETE + PRUNED) trials (a trial
   over a ``search.constraints`` budget is PRUNED before training, so it counts);
3. wait while finished + live RUNNING trials already make up the total (one of them may still
   fail and need a replacement);
4. otherwise run one trial (``study.optimize(n_trials=1)``; a WAITING retry is taken first).

A trial that starts in the same instant as another and would push the total past ``n_trials``
ends at once as FAIL with ``fail_reason`` "surplus", so the finished total is exact.

Signals: the first SIGINT/SIGTERM lets the running trial finish its epoch; a second aborts it at
once. Either way the trial is recorded FAIL (``fail_reason`` "interrupted") and re-queued, so the
next run resumes it from its checkpoint. This module logs; it never prints.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.config import ParamSpec, StudyConfig
from search.engine.threads import use_threads
from search.store.artifacts import StorageFault, WeightStore
from search.store.records import RETRY_HISTORY_SYSTEM_ATTR
from search.store.storage import retrying
from search.study.budgets import is_feasible
from search.study.failures import FAIL_REASON_ATTR, DeviceFailure, FailureBudget
from search.study.objective import Objective, TrialInterrupted
from search.study.pareto import FrontSummary, front_summary
from search.study.preflight import check_run_folders
from search.study.resume import prepare_resume
from search.study.sampling import grid_point, grid_points_left
from search.study.space import grid_size
from search.study.study import (
    FINISHED_STATES,
    RetryStale,
    RunningTrial,
    best_trial,
    enqueue_default,
    fail_stale_trials,
    finished_count,
    open_study,
    running_trials,
    storage_for,
)
from search.study.tally import StudyReader
from search.study.warmstart import WarmStartPlan, WarmStartResult, apply_warm_start
from search.study.workers import POLL_S, StopRequest, run_parallel, sleep_unless_stopped

log = logging.getLogger(__name__)

TrialCallback = Callable[[FrozenTrial], None]
ObjectiveFn = Callable[[optuna.Trial], float | tuple[float, float]]  # (accuracy, cost): two objectives
Space = Mapping[str, ParamSpec]


class Outcome(enum.Enum):
    """How a run ended (the CLI maps these to exit codes 0, 130, 1, 1)."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILURE_BUDGET = "failure_budget"
    NO_TRIAL_COMPLETED = "no_trial_completed"


@dataclass(frozen=True)
class RunResult:
    """How :func:`run_study` ended, the study's counts then, and its best trial."""

    outcome: Outcome
    study_name: str
    n_trials: int  # the study's total (search.n_trials)
    finished: int  # finished trials in the study when the run ended
    started: int  # trials this process (or its workers) ran
    best: FrozenTrial | None
    elapsed_s: float  # from the first trial's start
    stop_message: str = ""  # with FAILURE_BUDGET: why the run stopped
    over_budget: int = 0  # finished trials over a search.constraints budget (PRUNED, never trained)
    front: FrontSummary | None = None  # two objectives: the Pareto front's size and extremes
    cost_name: str | None = None  # two objectives: the cost's name (search.objectives' second)


def _ignore(_trial: FrozenTrial) -> None:
    return None


@dataclass(frozen=True)
class RunOptions:
    """How :func:`run_study` runs a study (all optional; the defaults run it here on the CPU).

    - ``device``: where trials train in this process (a torch device or ``auto``/``cpu``/``cuda:N``).
    - ``workers``: one ``search worker`` process per device trains; this process only checks the
      data, creates the study and follows it. Empty: trials run here on ``device``.
    - ``fresh``: archive an existing study of this name first (``--fresh``); otherwise an existing
      one is resumed after checking its config and data match (ResumeConflict if not).
    - ``join``: ``search worker``: the study must exist and is neither checked nor archived.
    - ``objective``: instead of the model-training :class:`~search.study.objective.Objective` (tests).
    - ``stop``: the stop flag (SIGINT/SIGTERM, handled while the loop runs); ``ignore_sigint``:
      SIGINT is left to the parent (a managed worker).
    - ``on_trial``: called with each finished trial; ``around(study)``: a context entered once the
      study is open and left however the run ends (the CLI's dashboard and progress bar).
    - ``release_memory``: return cached GPU memory around every trial (a worker sharing its GPU).
    - ``threads``: torch CPU threads per process (``--threads``; default ``train.threads``, else
      free cores // local workers; see :mod:`search.engine.threads`), applied here and to the workers.
    - ``warm_start``: enqueue another study's top param sets (``--warm-start``) once the study is
      open, before any sampling; ``on_warm_start(source, result)`` hears what was enqueued.
    """

    device: torch.device | str = "cpu"
    workers: Sequence[str] = ()
    fresh: bool = False
    join: bool = False
    objective: ObjectiveFn | None = None
    stop: StopRequest | None = None
    ignore_sigint: bool = False
    on_trial: TrialCallback = _ignore
    around: Callable[[optuna.Study], AbstractContextManager[Any]] | None = None
    release_memory: bool = False
    threads: int | None = None
    warm_start: WarmStartPlan | None = None
    on_warm_start: Callable[[str, WarmStartResult], None] | None = None


def _device(device: torch.device | str) -> torch.device:
    from search.engine.device import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


def run_study(cfg: StudyConfig, options: RunOptions | None = None) -> RunResult:
    """Create or resume study ``cfg.name`` and run its trials until it holds ``search.n_trials``
    finished ones, the timeout, a stop (SIGINT/SIGTERM, handled here) or the failure budget.

    Args:
        cfg: the study's config.
        options: where and how it runs (:class:`RunOptions`; default: here, on the CPU).

    Returns:
        How the run ended (:class:`Outcome`), the study's counts and its best trial.

    Raises:
        InputError: ConfigError, DataError, StorageError or ResumeConflict, before anything is created.
        RunFailure: a full disk (StorageFault) or a broken device (DeviceFailure) during the run.
    """
    options = options or RunOptions()
    stop = options.stop or StopRequest()
    policy = use_threads(len(options.workers) or 1, flag=options.threads, configured=cfg.train.threads)
    objective, reader, study, _existed = prepare_study(cfg, options, stop)
    budget = FailureBudget.for_run(cfg.search.max_failures, cfg.search.n_trials)
    started = time.perf_counter()
    with options.around(study) if options.around is not None else contextlib.nullcontext():
        if options.workers:
            del objective  # the workers hold the data; free this process's copy
            n_started, interrupted = run_parallel(
                cfg,
                options.workers,
                on_trial=options.on_trial,
                threads=policy.threads,
                storage=reader.storage,
            )
        else:
            with stop.installed(ignore_sigint=options.ignore_sigint):
                n_started, interrupted = _loop(study, objective, cfg, reader, stop, options.on_trial, budget)
    return _result(cfg, study, budget, n_started, interrupted, time.perf_counter() - started)


class Prepared(NamedTuple):
    """The objective (holding the checked data), the study's reader (its storage and the loop's
    counts, :class:`~search.study.tally.StudyReader`) and the open study; ``existed``: the study was
    there before (resumed, or archived by ``fresh``), never for a ``join``."""

    objective: ObjectiveFn
    reader: StudyReader
    study: optuna.Study
    existed: bool


def prepare_study(cfg: StudyConfig, options: RunOptions, stop: StopRequest) -> Prepared:
    """Check the data and folders (building the objective), then create, resume or join the study
    and enqueue its first trials (warm start, or the space's midpoint). ``search run`` and
    ``search create`` (:mod:`search.study.create`) both prepare a study with this. The study's
    reader serves the loop, the objective and the pruner."""
    objective = options.objective
    data_attrs: dict[str, Any] | None = None
    fits: Callable[[dict[str, Any]], bool] | None = None
    if objective is None:
        check_run_folders(cfg)  # a trial trains for minutes before it saves: refuse a bad folder now
        train_device = torch.device("cpu") if options.workers else _device(options.device)
        weights = WeightStore(cfg.artifacts_dir)
        built = Objective(cfg, train_device, weights, stop, release_memory=options.release_memory)
        objective, data_attrs = built, built.data_attrs()
        if cfg.search.constraints.max_params is not None:
            fits = built.params_fit
    storage = storage_for(cfg, create=not options.join)
    existed = not options.join and cfg.name in optuna.get_all_study_names(storage)
    if existed:
        prepare_resume(storage, cfg, data_attrs, fresh=options.fresh)
    study = open_study(cfg, storage, None if options.join else data_attrs, fits=fits)
    reader = StudyReader(storage)
    if isinstance(objective, Objective):
        objective.reader = reader
    if options.warm_start is not None:
        ws = apply_warm_start(study, options.warm_start)
        if options.on_warm_start is not None:
            options.on_warm_start(options.warm_start.source, ws)
    elif not options.join:
        enqueue_default(study, cfg)  # search.enqueue_default: a new study's trial 0 is the midpoint
    return Prepared(objective, reader, study, existed)


def _result(
    cfg: StudyConfig,
    study: optuna.Study,
    budget: FailureBudget,
    n_started: int,
    interrupted: bool,
    elapsed_s: float,
) -> RunResult:
    best = best_trial(study)
    outcome = (
        Outcome.INTERRUPTED
        if interrupted
        else Outcome.FAILURE_BUDGET
        if budget.tripped
        else Outcome.NO_TRIAL_COMPLETED
        if best is None
        else Outcome.COMPLETED
    )
    return RunResult(
        outcome=outcome,
        study_name=cfg.name,
        n_trials=cfg.search.n_trials,
        finished=finished_count(study),
        started=n_started,
        best=best,
        elapsed_s=elapsed_s,
        stop_message=budget.stop_message() if budget.tripped else "",
        over_budget=sum(not is_feasible(t) for t in study.get_trials(deepcopy=False, states=FINISHED_STATES)),
        front=front_summary(study),
        cost_name=cfg.search.cost,
    )


# --------------------------------------------------------------------------- the trial loop


class SurplusTrial(Exception):  # control flow inside the loop, never shown to a user: not a SearchError
    """The trial started while the study's total was already taken by finished + running trials."""


def _slots(
    study: optuna.Study, reader: StudyReader, grace_s: float, retry: RetryStale, grid: Space | None
) -> tuple[int, int, bool]:
    """Fail (and re-queue) stale RUNNING trials, then (finished trials, live RUNNING trials,
    whether the ``grid`` (the grid sampler's space) has no point left for a new trial).

    One snapshot of the study serves all: failing a stale trial changes neither count (stale
    trials hold no slot; its retry is WAITING, so the grid is not used up while one is stale).
    Without a grid the snapshot is counts and the RUNNING trials' heartbeats only
    (:meth:`StudyReader.running`): no trial is read, however many workers run.
    """
    storage = reader.storage
    if grid is None:
        counts, running = reader.running(study.study_name, grace_s)
        fail_stale_trials(study, storage, grace_s, retry, running)
        return sum(counts[s] for s in FINISHED_STATES), sum(not rt.stale for rt in running), False
    trials = study.get_trials(deepcopy=False)  # the grid's points need every trial's params
    running = running_trials(study, storage, grace_s, trials)
    fail_stale_trials(study, storage, grace_s, retry, running)
    finished = sum(t.state in FINISHED_STATES for t in trials)
    live = sum(not rt.stale for rt in running)
    grid_used_up = (
        live == len(running)
        and not any(t.state == TrialState.WAITING for t in trials)
        and grid_points_left(trials, grid) == 0
    )
    return finished, live, grid_used_up


def _started_before(a: RunningTrial, b: RunningTrial) -> bool:
    """``a`` took its slot before ``b`` (start time, then trial number)."""
    if a.number == b.number:
        return False
    if a.started is None or b.started is None or a.started == b.started:
        return a.number < b.number
    return a.started < b.started


class _Guarded:
    """The objective behind an exact-total check; remembers the trial it runs and records an
    abort (second Ctrl-C) as ``fail_reason`` "interrupted" while the trial can still take it."""

    def __init__(
        self,
        objective: ObjectiveFn,
        n_trials: int,
        reader: StudyReader,
        grace_s: float,
        grid: Space | None = None,
    ) -> None:
        self.objective = objective
        self.n_trials = n_trials
        self.reader = reader
        self.grace_s = grace_s
        self.grid = grid  # the grid sampler's space: a point another trial holds is not trained again
        self.current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current = trial.number
        study = trial.study
        trials: Sequence[FrozenTrial] = ()
        if self.grid is None:  # counts and heartbeats: no other trial is read
            counts, running = self.reader.running(study.study_name, self.grace_s)
            finished = sum(counts[s] for s in FINISHED_STATES)
        else:  # one snapshot with every trial's params
            trials = study.get_trials(deepcopy=False)
            running = running_trials(study, self.reader.storage, self.grace_s, trials)
            finished = sum(t.state in FINISHED_STATES for t in trials)
        me = next(rt for rt in running if rt.number == trial.number)
        if isinstance(self.objective, Objective):  # its retry history, from its own record
            mine = next((t for t in trials if t.number == trial.number), None)
            frozen = mine or self.reader.storage.get_trial(me.trial_id)
            history = frozen.system_attrs.get(RETRY_HISTORY_SYSTEM_ATTR, [])
            self.objective.known_retry_history[trial.number] = [int(n) for n in history]
        ahead = finished + sum(not rt.stale and _started_before(rt, me) for rt in running)
        if ahead >= self.n_trials:
            trial.set_user_attr(FAIL_REASON_ATTR, "surplus")
            raise SurplusTrial(f"trial {trial.number}: the study's {self.n_trials} trials were already taken")
        if self._point_taken(trials, running, me):
            trial.set_user_attr(FAIL_REASON_ATTR, "surplus")
            raise SurplusTrial(f"trial {trial.number}: its grid point is another trial's")
        try:
            return self.objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON_ATTR, "interrupted")  # before Optuna records the FAIL
            raise

    def _point_taken(
        self, trials: Sequence[FrozenTrial], running: Sequence[RunningTrial], me: RunningTrial
    ) -> bool:
        """With the grid sampler: another trial (finished, or running and started first) holds
        this trial's grid point (GridSampler re-picks a point when workers race for the last)."""
        if self.grid is None:
            return False
        mine = next(t for t in trials if t.number == me.number)
        point = grid_point(mine, self.grid)
        if point is None:
            return False
        first = {rt.number for rt in running if not rt.stale and _started_before(rt, me)}
        return any(
            t.number != me.number
            and grid_point(t, self.grid) == point
            and (
                t.number in first
                or (t.state.is_finished() and t.user_attrs.get(FAIL_REASON_ATTR) != "surplus")
            )
            for t in trials
        )


class _QuietEndings(logging.Filter):
    """Drops Optuna's traceback warnings for surplus and interrupted trials (logged here instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SurplusTrial | TrialInterrupted | KeyboardInterrupt | StorageFault):
            self.quiet.add(message.split(" failed", 1)[0])  # "Trial 12"
            return False
        return not (
            message.endswith("failed with value None.") and message.split(" failed", 1)[0] in self.quiet
        )


_QUIET = _QuietEndings()


def _quiet_optuna() -> None:
    optimize_logger = logging.getLogger("optuna.study._optimize")
    if _QUIET not in optimize_logger.filters:
        optimize_logger.addFilter(_QUIET)


def _log_grid_end(cfg: StudyConfig, taken: int) -> None:
    """The line a grid study ends with when its points are used up before ``search.n_trials``."""
    size = grid_size(cfg.search.space)
    log.warning(
        "the grid's %d points are all taken: the study ends with %d finished trials, not "
        "search.n_trials %d (no point is trained twice). Fix: set search.n_trials to %d, or widen the space",
        size,
        taken,
        cfg.search.n_trials,
        size,
    )


def _loop(
    study: optuna.Study,
    objective: ObjectiveFn,
    cfg: StudyConfig,
    reader: StudyReader,
    stop: Callable[[], bool],
    on_trial: TrialCallback,
    budget: FailureBudget,
) -> tuple[int, bool]:
    """Run trials until the study's total, the timeout, a stop or the budget; (started, interrupted)."""
    n = cfg.search.n_trials
    grace = float(cfg.search.grace_period_s)
    retry = RetryStale(cfg.search.max_retry, cfg.checkpoints_dir)
    deadline = None if cfg.search.timeout_s is None else time.monotonic() + cfg.search.timeout_s
    grid = cfg.search.space if cfg.search.sampler.name == "grid" else None
    guarded = _Guarded(objective, n, reader, grace, grid)
    storage = reader.storage
    _quiet_optuna()
    started = 0
    waiting_logged = False
    while True:
        if stop():
            return started, True
        if budget.tripped:
            return started, False
        if deadline is not None and time.monotonic() >= deadline:
            log.info("timeout: not starting more trials")
            return started, False
        finished, live, grid_used_up = retrying(
            "counting trials", lambda: _slots(study, reader, grace, retry, grid)
        )
        if finished >= n:
            return started, False
        if grid_used_up:
            _log_grid_end(cfg, finished + live)
            return started, False
        if finished + live >= n:
            if not waiting_logged:
                log.info("the last %d trial(s) run in other workers; waiting in case one fails", live)
                waiting_logged = True
            sleep_unless_stopped(POLL_S, stop)
            continue
        waiting_logged = False
        guarded.current = None
        try:
            study.optimize(
                guarded, n_trials=1, callbacks=[lambda _s, t: on_trial(t), budget], gc_after_trial=False
            )
            started += 1
        except SurplusTrial as exc:
            started += 1
            log.info("%s; ended as FAIL", exc)
        except (TrialInterrupted, KeyboardInterrupt):
            log.warning("trial %s interrupted; recorded as FAIL (reason 'interrupted')", guarded.current)
            _requeue(study, storage, guarded.current, retry)
            return started, True
        except DeviceFailure:  # this process's GPU context is broken: retry the trial in a fresh one
            _requeue(study, storage, guarded.current, retry)
            raise


def _requeue(study: optuna.Study, storage: RDBStorage, number: int | None, retry: RetryStale) -> None:
    """Re-queue the interrupted trial so the next run resumes it from its checkpoint."""
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        return
    if trial.state == TrialState.RUNNING:  # the abort landed outside the objective
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), number
        )
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, "interrupted")
        study.tell(number, state=TrialState.FAIL)
        trial = storage.get_trial(trial_id)
    # a copy: Optuna's retry callback appends to the trial's retry history in place, and this one
    # may be the storage's cached (and shared, search/store/trial_cache.py) record
    if trial.state == TrialState.FAIL and retry.retry(study, copy.deepcopy(trial)):
        log.info("trial %d re-queued; the next run resumes it from its last epoch", number)
