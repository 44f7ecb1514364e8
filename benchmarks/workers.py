"""Workers benchmark: trials/s with 1, 2, 4 worker processes on SQLite and PostgreSQL, and the
time from SIGKILL of a worker to the retry of its trial.

Trials are trivial (one suggested float, returned at once) and go through the same storage setup
and trial loop as `search worker` (``search.study.run.run_study`` joining the study, with its
heartbeats and the exact-total check; the trivial objective is passed as its ``objective``), so
the figures are the storage's and the loop's overhead per trial. Worker processes import
everything and then wait for a common start, so start-up is not timed. PostgreSQL is a
throwaway local server (``tests/pg.py``: initdb + pg_ctl, fsync off).

    python benchmarks/workers.py [--trials 200] [--workers 1 2 4] [--no-postgres]
    python benchmarks/workers.py --quick   # 10 trials, 1 worker, SQLite only: does it still run
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=Warning, module="optuna")
warnings.filterwarnings("ignore", message=".*experimental.*")


def worker_main(url: str, name: str, n_trials: int, seed: int, sleep_s: float, heartbeat_s: int) -> None:
    """One worker: import, say "ready", wait for "go" on stdin, run trials, print start/end times."""
    import optuna

    from search.config import config_from_dict
    from search.study.run import RunOptions, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = {"n_trials": n_trials, "heartbeat_interval_s": heartbeat_s, "grace_period_s": 3 * heartbeat_s}
    cfg = config_from_dict({"name": name, "storage": url, "seed": seed, "search": search})

    def objective(trial: optuna.Trial) -> float:
        if sleep_s:
            time.sleep(sleep_s)
        return trial.suggest_float("x", 0.0, 1.0)

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    result = run_study(cfg, RunOptions(objective=objective, join=True))
    print(f"done {start} {time.time()} {result.started}", flush=True)


def _spawn(
    url: str, name: str, n: int, seed: int, sleep_s: float = 0.0, heartbeat_s: int = 20
) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = [url, name, str(n), str(seed), str(sleep_s), str(heartbeat_s)]
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _create(url: str, name: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from search.study.study import make_storage

    optuna.create_study(storage=make_storage(url, heartbeat=False), study_name=name)


def _finished(url: str, name: str) -> list[object]:
    import optuna
    from optuna.trial import TrialState

    from search.study.study import make_storage

    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat=False))
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def throughput(url: str, n_workers: int, n_trials: int) -> tuple[float, int]:
    """Trials per second of ``n_workers`` processes sharing ``n_trials`` trivial trials."""
    name = f"bench-{n_workers}-{time.time_ns()}"
    _create(url, name)
    procs = [_spawn(url, name, n_trials, seed) for seed in range(n_workers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go = time.time()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    ends = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        ends.append(float(out.split()[2]))
    finished = len(_finished(url, name))
    return finished / (max(ends) - go), finished


def kill_to_retry(url: str, heartbeat_s: int) -> float:
    """Seconds from SIGKILL of a worker in a trial to the start of that trial's retry."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from search.study.study import make_storage

    name = f"kill-{time.time_ns()}"
    _create(url, name)
    victim = _spawn(url, name, 10_000, 0, sleep_s=3600, heartbeat_s=heartbeat_s)  # never finishes a trial
    other = _spawn(url, name, 10_000, 1, sleep_s=0.05, heartbeat_s=heartbeat_s)
    for p in (victim, other):
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    assert victim.stdin is not None
    victim.stdin.write("go\n")
    victim.stdin.flush()
    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat=False))
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(0.05)
    time.sleep(heartbeat_s + 0.5)  # a heartbeat is on record
    number = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0].number
    assert other.stdin is not None
    other.stdin.write("go\n")
    other.stdin.flush()
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.time()
    victim.wait()
    try:
        while True:
            for t in study.get_trials(deepcopy=False):
                if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == number and t.datetime_start:
                    return time.time() - killed
            time.sleep(0.02)
    finally:
        other.kill()
        other.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trivial trials per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--heartbeat-s", type=int, default=1, help="heartbeat interval for the kill test")
    parser.add_argument("--quick", action="store_true", help="10 trials, 1 worker, SQLite only")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.workers, args.no_postgres = 10, [1], True

    from tests.pg import postgres

    with tempfile.TemporaryDirectory() as tmp, postgres() if not args.no_postgres else _null() as pg:
        urls = {"SQLite": f"sqlite:///{tmp}/bench.db"}
        if pg is not None:
            urls["PostgreSQL"] = pg.new_database()
        print(f"trivial trials, {args.trials} per run, {os.cpu_count()} CPU cores")
        print(f"{'storage':<11} {'workers':>7} {'trials/s':>9} {'finished':>9}")
        for label, url in urls.items():
            for n in args.workers:
                rate, finished = throughput(url, n, args.trials)
                print(f"{label:<11} {n:>7} {rate:>9.1f} {finished:>9}", flush=True)
        grace = 3 * args.heartbeat_s
        print(f"\nSIGKILL to retry (heartbeat {args.heartbeat_s}s, grace period {grace}s)")
        for label, url in urls.items():
            print(f"{label:<11} {kill_to_retry(url, args.heartbeat_s):>7.1f} s", flush=True)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, n, seed, sleep_s, hb = sys.argv[2:8]
        worker_main(url, name, int(n), int(seed), float(sleep_s), int(hb))
    else:
        main()
