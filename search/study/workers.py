"""Worker processes: Ctrl-C / SIGTERM handling, GPU assignment, ``search run --workers N``.

``search run --workers N`` starts one ``search worker`` process per device on the study and
follows it; each worker runs :func:`search.study.run.run_study` with ``join=True``. The storage URL
reaches a worker through the environment (``SEARCH_WORKER_STORAGE``), never its command line,
where ``ps`` would show a password. This module does not know about models or the trial loop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from search.config import StudyConfig
from search.engine.threads import child_env, thread_policy
from search.errors import InputError
from search.store.storage import make_storage, retrying
from search.store.urls import WORKER_STORAGE_ENV
from search.study.cached import FINISHED, StudyStorage
from search.study.tally import StudyReader

log = logging.getLogger(__name__)

POLL_S = 0.5
EXIT_INTERRUPTED = 130
STORAGE_ENV = WORKER_STORAGE_ENV  # how `search run --workers` hands its workers the URL (not argv)


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
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.warning("%s: finishing the running trial's epoch, then stopping (again to abort)", name)
            return
        if self.signals == 2:
            log.warning("%s: aborting the running trial", name)
            raise KeyboardInterrupt
        # Later signals are ignored: the abort is recording the trial and its retry.

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


def sleep_unless_stopped(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep ``seconds``, waking every 0.1 s to return early once ``stop()`` is true."""
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


# --------------------------------------------------------------------------- local workers


def assign_devices(device: str, n_workers: int, workers_per_gpu: int) -> list[str]:
    """One device per worker: GPUs round-robin (at most ``workers_per_gpu`` on each), else the CPU.

    Raises:
        InputError: a bad count or too few GPU slots (names the flag).
        ValueError: a device that is not there (from :func:`search.engine.device.resolve_device`).
    """
    import torch

    from search.engine.device import resolve_device

    if n_workers < 1:
        raise InputError(f"--workers must be >= 1 (got {n_workers})")
    if workers_per_gpu < 1:
        raise InputError(f"--workers-per-gpu must be >= 1 (got {workers_per_gpu})")
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return ["cpu"] * n_workers
    gpus = [resolved.index] if resolved.index is not None else list(range(torch.cuda.device_count()))
    if n_workers > len(gpus) * workers_per_gpu:
        raise InputError(
            f"{n_workers} workers do not fit on {len(gpus)} GPU(s) x {workers_per_gpu} per GPU; "
            f"use --workers-per-gpu {-(-n_workers // len(gpus))} or fewer workers"
        )
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(n_workers)]


def worker_command(cfg: StudyConfig, device: str, index: int) -> list[str]:
    """A local worker's command line; the storage URL goes in its environment (``STORAGE_ENV``)."""
    cmd = [
        sys.executable,
        "-m",
        "search",
        "-q",
        "worker",
        "--study-name",
        cfg.name,
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


def worker_process(
    cfg: StudyConfig,
    device: str,
    index: int,
    base_env: Mapping[str, str],
    *,
    shared_gpu: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of local worker ``index`` on ``device`` (from :func:`assign_devices`).

    A worker on ``cuda:i`` sees only that GPU (``CUDA_VISIBLE_DEVICES``, mapped through the
    parent's own ``CUDA_VISIBLE_DEVICES`` when set) and trains on its ``cuda:0``, so nothing that
    uses the current device lands on GPU 0. With ``shared_gpu`` (several workers on that GPU) it
    returns its cached GPU memory after every trial.
    """
    env = dict(base_env)
    if device.startswith("cuda"):
        i = int(device.partition(":")[2] or 0)
        parent = [v.strip() for v in base_env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = parent[i] if "CUDA_VISIBLE_DEVICES" in base_env else str(i)
        device = "cuda:0"
    cmd = worker_command(cfg, device, index)
    if shared_gpu:
        cmd.append("--shared-gpu")
    return cmd, env


def run_parallel(
    cfg: StudyConfig,
    devices: Sequence[str],
    *,
    on_trial: Callable[[FrozenTrial], None] = lambda t: None,
    threads: int | None = None,
    storage: RDBStorage | None = None,
) -> tuple[int, bool]:
    """Start one ``search worker`` process per device on the (existing) study and follow it.

    Each worker gets ``threads`` torch threads (default: :func:`search.engine.threads.thread_policy`
    for this many workers and ``train.threads``) through ``OMP_NUM_THREADS``.

    Returns when every worker has exited; finished trials are passed to ``on_trial`` as they
    appear in the storage (``storage``: the study's, already open; default: opened here).
    SIGINT/SIGTERM are forwarded to the workers as SIGTERM.
    Returns (trials finished by the workers, interrupted).
    """
    if storage is None:
        storage = make_storage(cfg.storage, create=False, heartbeat=False)
    finished = StudyStorage(storage)
    sid = StudyReader(storage).study_id(cfg.name)
    seen = {t.number for t in finished.get_all_trials(sid, deepcopy=False, states=FINISHED)}
    env = _workers_env(cfg, len(devices), threads)
    stop = StopRequest()
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
            shared = device != "cpu" and list(devices).count(device) > 1
            cmd, worker_env = worker_process(cfg, device, i, env, shared_gpu=shared)
            procs.append(subprocess.Popen(cmd, env=worker_env, stdout=subprocess.DEVNULL))
            log.info("worker %d: pid %d on %s%s", i, procs[-1].pid, device, " (shared)" if shared else "")
        _follow(finished, sid, procs, seen, on_trial)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    for i, code in enumerate(codes):
        if code not in (0, 1, EXIT_INTERRUPTED):
            log.warning("worker %d (pid %d) exited with code %s", i, procs[i].pid, code)
    return len(seen), bool(stop.signals) or EXIT_INTERRUPTED in codes


def _workers_env(cfg: StudyConfig, n_workers: int, threads: int | None) -> dict[str, str]:
    """The environment every local worker starts from: its threads, this package first, the URL."""
    if threads is None:
        threads = thread_policy(n_workers, configured=cfg.train.threads).threads
    import search

    env = child_env(threads)
    package_root = str(Path(search.__file__).resolve().parents[1])  # the folder holding the package
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env[STORAGE_ENV] = cfg.storage
    return env


def _follow(
    finished: StudyStorage,
    sid: int,
    procs: Sequence[subprocess.Popen[bytes]],
    seen: set[int],
    on_trial: Callable[[FrozenTrial], None],
) -> None:
    """Pass each newly finished trial to ``on_trial`` (adding it to ``seen``) until every worker exited.

    Each poll lists the study's trials from the first one this process has not seen finished
    (:class:`search.study.cached.StudyStorage`: the running and recent ones, not the whole study)
    and reads the ones that finished since, each once, so following costs the database next to
    nothing however many workers run and however large the study grows.
    """

    def trials() -> list[FrozenTrial]:
        return finished.get_all_trials(sid, deepcopy=False, states=FINISHED)

    while True:
        alive = [p for p in procs if p.poll() is None]
        for t in retrying("polling trials", trials):
            if t.number not in seen:
                seen.add(t.number)
                on_trial(t)
        if not alive:
            return
        time.sleep(POLL_S)


# --------------------------------------------------------------------------- `search worker`


def worker_config(study: optuna.Study, n_trials: int | None, timeout_s: float | None) -> StudyConfig:
    """The config stored on the study (by ``search run``), with this worker's overrides."""
    from search.config import config_from_dict, with_overrides
    from search.study.study import CONFIG_ATTR, StorageError

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
