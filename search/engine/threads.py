"""How many CPU threads torch may use in this process, and in the processes it starts.

Torch's default is one OpenMP thread per core of the machine. That is right only when nothing
else runs: beside one other CPU-bound process (or a second worker), its threads wait for each
other at every parallel region's barrier while the scheduler runs the competitor, and a trial
takes several times as long (measured in docs/BENCHMARKS.md, "Threads"). So each process gets

    threads = (usable cores (``os.sched_getaffinity``) - cores busy with other processes)
              // local workers   (at least 1)

"Busy" is how many other tasks are runnable right now (Linux's ``/proc/loadavg``, sampled a few
times at start-up; 0 where it cannot be read): beside one CPU-bound process on 2 cores, a
quickstart with 2 threads took 3.5x its quiet time and with 1 thread 0.93x (docs/BENCHMARKS.md),
while on a quiet machine 2 threads are 1.13x faster than 1.

unless the user chose: ``--threads N`` on the command line, then ``OMP_NUM_THREADS`` set in the
environment, then the config's ``train.threads``. The decision is applied once per process
(:func:`apply`), before training, and passed on to child processes (:func:`child_env`).

A count over the usable cores is lowered to them with a warning naming the value used; one over
:data:`MAX_THREADS` (a typo) is an input error. This module imports only the standard library (and
torch, inside :func:`apply`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from search.errors import InputError

log = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_THREADS = 4096  # more than any machine's cores: a typo, refused (exit 2) rather than clamped
WAIT_POLICY = "PASSIVE"  # OpenMP threads sleep at barriers instead of spinning (libgomp's default)


def passive_wait(environ: dict[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a wait policy; True if it was set here.

    OpenMP reads it once, when torch is first imported, so call this before that (``search``'s
    ``main`` does); child processes inherit it. With the default (spinning) policy, a thread that
    reaches a barrier burns its core while its sibling waits for a core held by another process:
    beside one busy process a tiny fit took 25x as long as with 1 thread; passive, 0.7x.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return False
    env["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads one process uses, and why."""

    threads: int
    cores: int
    workers: int
    source: str  # "auto", "--threads", "OMP_NUM_THREADS" or "train.threads"
    busy: int = 0  # cores other processes kept busy when the policy was decided ("auto" only)
    asked: int | None = None  # the user's value when it was more than the usable cores (clamped)

    def clamp_warning(self) -> str:
        """One line when the user's thread count was lowered to the usable cores ("" otherwise)."""
        if self.asked is None:
            return ""
        return (
            f"{self.source} {self.asked} is more threads than the {self.cores} usable "
            f"core{'s' if self.cores != 1 else ''} of this machine; using {self.threads}"
        )

    def describe(self) -> str:
        """``torch threads: 2 (2 usable cores, 1 worker)``, naming the user's choice when there was one."""
        why = f"{self.cores} usable core{'s' if self.cores != 1 else ''}, "
        if self.busy:
            why += f"{self.busy} busy with other processes, "
        why += f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        if self.source != "auto":
            why = f"set by {self.source}; {why}"
        return f"torch threads: {self.threads} ({why})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS / Windows
        return max(1, os.cpu_count() or 1)


LOADAVG = "/proc/loadavg"


def busy_cores(samples: int = 5, interval_s: float = 0.005, path: str = LOADAVG) -> int:
    """How many tasks other than this one are runnable now: the median over a few readings of
    ``/proc/loadavg``'s running count (which includes the reader), so a process that only
    flickers past is not counted. 0 where the file cannot be read (not Linux)."""
    counts: list[int] = []
    for i in range(samples):
        try:
            with open(path, encoding="ascii") as fh:
                running = fh.read().split()[3].split("/")[0]
            counts.append(max(0, int(running) - 1))
        except (OSError, IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return counts[len(counts) // 2]


def _env_threads(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, or None when unset or not one (OpenMP ignores it then)."""
    raw = environ.get("OMP_NUM_THREADS", "").strip()
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None


_THREAD_FIX = {"OMP_NUM_THREADS": "unset OMP_NUM_THREADS or "}


def check_threads(value: int, source: str) -> int:
    """``value`` unless it is an absurd thread count (over :data:`MAX_THREADS`): InputError naming
    ``source`` (``--threads``, ``OMP_NUM_THREADS``, ``train.threads``) then, never a crash."""
    if value > MAX_THREADS:
        shown = str(value) if value < 10**30 else f"{str(value)[:12]}... ({len(str(value))} digits)"
        raise InputError(
            f"{source}: {shown} threads is not a thread count a machine can run (at most "
            f"{MAX_THREADS}; this one has {usable_cores()} usable cores). Fix: {_THREAD_FIX.get(source, '')}"
            "use e.g. 2, or leave it out for free cores // local workers"
        )
    return value


def _clamped(policy: ThreadPolicy) -> ThreadPolicy:
    """The user's choice, lowered to the usable cores when it asks for more (with ``asked`` set)."""
    check_threads(policy.threads, policy.source)
    if policy.source == "auto" or policy.threads <= policy.cores:
        return policy
    return dataclasses.replace(policy, threads=policy.cores, asked=policy.threads)


def thread_policy(
    workers: int = 1,
    *,
    flag: int | None = None,
    configured: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> ThreadPolicy:
    """Threads per process for ``workers`` local processes sharing this machine's usable cores.

    Precedence: ``flag`` (``--threads``), ``OMP_NUM_THREADS`` in ``environ`` (default
    ``os.environ``), ``configured`` (``train.threads``), then (usable cores - busy cores) //
    workers, at least 1. A chosen count over the usable cores is lowered to them (:meth:`ThreadPolicy.
    clamp_warning` says so); one over :data:`MAX_THREADS` is an InputError.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    cores = usable_cores()
    env = os.environ if environ is None else environ
    from_env = _env_threads(env)
    if flag is not None:
        if flag < 1:
            raise ValueError(f"--threads must be >= 1 (got {flag})")
        return _clamped(ThreadPolicy(flag, cores, workers, "--threads"))
    if from_env is not None:
        return _clamped(ThreadPolicy(from_env, cores, workers, "OMP_NUM_THREADS"))
    if configured is not None:
        return _clamped(ThreadPolicy(configured, cores, workers, "train.threads"))
    busy = min(busy_cores(), cores - 1)
    return ThreadPolicy(max(1, (cores - busy) // workers), cores, workers, "auto", busy)


def apply(policy: ThreadPolicy) -> ThreadPolicy:
    """Set this process's torch threads to the policy's and log the decision (INFO); returns it."""
    import torch

    if policy.asked is not None:
        log.warning("%s", policy.clamp_warning())
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    log.info("%s", policy.describe())
    return policy


def use_threads(workers: int = 1, *, flag: int | None = None, configured: int | None = None) -> ThreadPolicy:
    """:func:`thread_policy` applied to this process (and logged): the one call each command makes."""
    return apply(thread_policy(workers, flag=flag, configured=configured))


def child_env(
    threads: int, environ: Mapping[str, str] | None = None, *, keep_user: bool = False
) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) whose OpenMP and MKL use ``threads`` threads.

    A ``MKL_NUM_THREADS`` already there is kept. ``OMP_NUM_THREADS`` is replaced (the policy that
    chose ``threads`` has taken it into account) unless ``keep_user``, for a child that follows
    the user's setting rather than this process's policy (the dashboard).
    """
    env = dict(os.environ if environ is None else environ)
    if not (keep_user and _env_threads(env) is not None):
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    return env
