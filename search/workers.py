"""Several worker processes on one study: the trial loop, signals, GPU assignment, `search worker`.

Optuna's RDB storage is the scheduler: every worker (a local process started by
``search run --workers N`` or ``search worker`` on another machine) runs the same loop on the
same study:

1. fail stale trials (heartbeat older than the grace period; Optuna re-queues them as WAITING);
2. stop when the study holds ``search.n_trials`` finished (COMPLETE + PRUNED) trials;
3. wait while finished + live RUNNING trials already make up the total (one of them may still
   fail and need a replacement);
4. otherwise run one trial (``study.optimize(n_trials=1)``; a WAITING retry is taken first).

A trial that starts in the same instant as another and would push the total past
``n_trials`` ends at once as FAIL with ``fail_reason`` "surplus", so the finished total is exact.

Signals: the first SIGINT/SIGTERM lets running trials finish their current epoch, records them
FAIL (``fail_reason`` "interrupted") and re-queues them, so the next run resumes them from their
checkpoint; a second signal aborts at once. This module does not know about models.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.failures import FailureBudget
from search.objective import TrialInterrupted
from search.study import (
    FAIL_REASON_ATTR,
    FINISHED_STATES,
    RunningTrial,
    enqueue_retry,
    make_storage,
    running_trials,
)

log = logging.getLogger(__name__)

POLL_S = 0.5
EXIT_INTERRUPTED = 130
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class SurplusTrial(Exception):
    """The trial started while the study's total was already taken by finished + running trials."""


# --------------------------------------------------------------------------- signals


class StopRequest:
    """Callable flag set by SIGINT/SIGTERM: the first one asks to stop after the epoch, the second aborts.

    With ``parent_pid``, the flag is also set when that process is gone (a managed worker whose
    ``search run`` died).
    """

    def __init__(self, parent_pid: int | None = None) -> None:
        self.signals = 0
        self.parent_pid = parent_pid

    def __call__(self) -> bool:
        if self.signals:
            return True
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning(
                "%s: finishing the running trial's epoch, then stopping (again to abort)",
                signal.Signals(signum).name,
            )
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self, *, ignore_sigint: bool = False) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM in this block (SIGINT ignored for a managed worker)."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else self._handle)
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


# --------------------------------------------------------------------------- the trial loop


@dataclass
class Outcome:
    started: int = 0
    interrupted: bool = False


def _retrying(what: str, fn: Callable[[], Any], attempts: int = 5) -> Any:
    """``fn()``, retried with backoff on transient database errors (locks, dropped connections)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except sqlalchemy.exc.OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("%s: %s; retrying (%d/%d)", what, exc.orig, attempt, attempts)
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _slots(study: optuna.Study, storage: RDBStorage, grace_s: float) -> tuple[int, int]:
    """(finished trials, live RUNNING trials): stale RUNNING ones do not hold a slot."""
    trials = study.get_trials(deepcopy=False)  # one snapshot for both counts
    finished = sum(t.state in FINISHED_STATES for t in trials)
    live = sum(not rt.stale for rt in running_trials(study, storage, grace_s, trials))
    return finished, live


class _Guarded:
    """The objective behind an exact-total check; remembers the trial it runs."""

    def __init__(
        self,
        objective: Callable[[optuna.Trial], float],
        n_trials: int,
        storage: RDBStorage,
        grace_s: float,
    ) -> None:
        self.objective = objective
        self.n_trials = n_trials
        self.storage = storage
        self.grace_s = grace_s
        self.current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        study = trial.study
        trials = study.get_trials(deepcopy=False)  # one snapshot
        running = running_trials(study, self.storage, self.grace_s, trials)
        me = next(rt for rt in running if rt.number == trial.number)
        ahead = sum(t.state in FINISHED_STATES for t in trials)
        ahead += sum(not rt.stale and _started_before(rt, me) for rt in running)
        if ahead >= self.n_trials:
            trial.set_user_attr(FAIL_REASON_ATTR, "surplus")
            raise SurplusTrial(f"trial {trial.number}: the study's {self.n_trials} trials are taken")
        return self.objective(trial)


class _QuietEndings(logging.Filter):
    """Drops Optuna's traceback warnings for surplus and interrupted trials (logged here instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], SurplusTrial | TrialInterrupted):
            self.quiet.add(message.split(" failed", 1)[0])  # "Trial 12"
            return False
        return not (
            message.endswith("failed with value None.") and message.split(" failed", 1)[0] in self.quiet
        )


_QUIET = _QuietEndings()


def _started_before(a: RunningTrial, b: RunningTrial) -> bool:
    """``a`` took its slot before ``b`` (start time, then trial number)."""
    if a.number == b.number:
        return False
    if a.started is None or b.started is None or a.started == b.started:
        return a.number < b.number
    return a.started < b.started


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    cfg: StudyConfig,
    storage: RDBStorage,
    *,
    stop: Callable[[], bool] = lambda: False,
    callbacks: Sequence[TrialCallback] = (),
    budget: FailureBudget | None = None,
) -> Outcome:
    """Run trials until the study holds ``search.n_trials`` finished ones, the timeout, a stop,
    or ``budget`` (default :meth:`FailureBudget.for_run`) says too many of this run's trials failed."""
    if budget is None:
        budget = FailureBudget.for_run(cfg.search.max_failures, cfg.search.n_trials)
    n = cfg.search.n_trials
    grace = float(cfg.search.grace_period_s)
    deadline = None if cfg.search.timeout_s is None else time.monotonic() + cfg.search.timeout_s
    guarded = _Guarded(objective, n, storage, grace)
    optimize_logger = logging.getLogger("optuna.study._optimize")
    if _QUIET not in optimize_logger.filters:
        optimize_logger.addFilter(_QUIET)
    outcome = Outcome()
    waiting_logged = False
    while True:
        if stop():
            outcome.interrupted = True
            return outcome
        if budget.tripped:
            return outcome
        if deadline is not None and time.monotonic() >= deadline:
            log.info("timeout: not starting more trials")
            return outcome
        _retrying("failing stale trials", lambda: _fail_stale(study))
        finished, live = _retrying("counting trials", lambda: _slots(study, storage, grace))
        if finished >= n:
            return outcome
        if finished + live >= n:
            if not waiting_logged:
                log.info("the last %d trial(s) run in other workers; waiting in case one fails", live)
                waiting_logged = True
            _sleep(POLL_S, stop)
            continue
        waiting_logged = False
        guarded.current = None
        try:
            study.optimize(guarded, n_trials=1, callbacks=[*callbacks, budget], gc_after_trial=False)
            outcome.started += 1
        except SurplusTrial:
            outcome.started += 1
            log.info("trial %s: the study's %d trials were already taken; ended as FAIL", guarded.current, n)
        except (TrialInterrupted, KeyboardInterrupt):
            log.warning("trial %s interrupted; recorded as FAIL (reason 'interrupted')", guarded.current)
            outcome.interrupted = True
            _requeue(study, guarded.current, cfg.search.max_retry)
            return outcome


def _requeue(study: optuna.Study, number: int | None, max_retry: int) -> None:
    """Re-queue the interrupted trial so the next run resumes it from its checkpoint."""
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != TrialState.FAIL:
        return
    if FAIL_REASON_ATTR not in trial.user_attrs:
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, "interrupted")
    if enqueue_retry(study, trial, max_retry):
        log.info("trial %d re-queued; the next run resumes it from its last epoch", number)


# --------------------------------------------------------------------------- local workers


def assign_devices(device: str, n_workers: int, workers_per_gpu: int) -> list[str]:
    """One device per worker: GPUs round-robin (at most ``workers_per_gpu`` on each), else the CPU.

    Raises ValueError for a device that is not there or too few GPU slots.
    """
    import torch

    from search.train import resolve_device

    if n_workers < 1:
        raise ValueError(f"--workers must be >= 1 (got {n_workers})")
    if workers_per_gpu < 1:
        raise ValueError(f"--workers-per-gpu must be >= 1 (got {workers_per_gpu})")
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return ["cpu"] * n_workers
    gpus = [resolved.index] if resolved.index is not None else list(range(torch.cuda.device_count()))
    if n_workers > len(gpus) * workers_per_gpu:
        raise ValueError(
            f"{n_workers} workers do not fit on {len(gpus)} GPU(s) x {workers_per_gpu} per GPU; "
            f"use --workers-per-gpu {-(-n_workers // len(gpus))} or fewer workers"
        )
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(n_workers)]


def threads_per_worker(n_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_workers)


def _worker_command(cfg: StudyConfig, storage_url: str, device: str, index: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "search",
        "-q",
        "worker",
        "--study-name",
        cfg.name,
        "--storage",
        storage_url,
        "--device",
        device,
        "--n-trials",
        str(cfg.search.n_trials),
        "--worker-index",
        str(index),
        "--parent-pid",
        str(os.getpid()),
    ]
    if cfg.search.timeout_s is not None:
        cmd += ["--timeout-s", str(cfg.search.timeout_s)]
    return cmd


def run_parallel(
    cfg: StudyConfig,
    devices: Sequence[str],
    *,
    on_trial: Callable[[FrozenTrial], None] = lambda t: None,
) -> Outcome:
    """Start one ``search worker`` process per device on the (existing) study and follow it.

    Returns when every worker has exited; finished trials are passed to ``on_trial`` as they
    appear in the storage. SIGINT/SIGTERM are forwarded to the workers as SIGTERM.
    """
    storage = make_storage(cfg.storage, create=False, heartbeat=False)
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if all(d == "cpu" for d in devices):
        env["OMP_NUM_THREADS"] = str(threads_per_worker(len(devices)))
    stop = StopRequest()
    outcome = Outcome()
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stop.signals += 1
        log.warning(
            "%s: asking %d worker(s) to stop after their epoch", signal.Signals(signum).name, len(procs)
        )
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, forward)
    try:
        for i, device in enumerate(devices):
            procs.append(
                subprocess.Popen(
                    _worker_command(cfg, cfg.storage, device, i),
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
            )
            log.info("worker %d: pid %d on %s", i, procs[-1].pid, device)
        while True:
            alive = [p for p in procs if p.poll() is None]
            for t in _retrying("polling trials", lambda: study.get_trials(deepcopy=False)):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    on_trial(t)
            if not alive:
                break
            time.sleep(POLL_S)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    for i, code in enumerate(codes):
        if code not in (0, 1, EXIT_INTERRUPTED):
            log.warning("worker %d (pid %d) exited with code %s", i, procs[i].pid, code)
    outcome.started = len(seen)
    outcome.interrupted = bool(stop.signals) or EXIT_INTERRUPTED in codes
    return outcome


# --------------------------------------------------------------------------- `search worker`


def worker_config(study: optuna.Study, n_trials: int | None, timeout_s: float | None) -> StudyConfig:
    """The config stored on the study (by ``search run``), with this worker's overrides."""
    from search.config import config_from_dict, with_overrides
    from search.study import CONFIG_ATTR, StorageError

    raw = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(raw, dict):
        raise StorageError(
            f"study {study.study_name!r} has no stored config. Fix: create it with `search run CONFIG`"
        )
    changes: dict[str, object] = {"name": study.study_name}
    if n_trials is not None:
        changes["search.n_trials"] = n_trials
    if timeout_s is not None:
        changes["search.timeout_s"] = timeout_s
    return with_overrides(config_from_dict(raw), changes)  # validated: --n-trials -5 is refused
