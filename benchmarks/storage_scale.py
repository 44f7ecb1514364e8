"""Storage scale benchmark: how many workers one study carries on each storage.

N lightweight worker processes (no model, no torch) replay one trial's storage work for a time
window: TPE with 5 params, 15 user attrs, 10 report + should_prune (median pruner), 20 s
heartbeats, on a study that already holds ``--prefill`` finished trials. On SQLite and PostgreSQL
(direct and through PgBouncer in transaction pooling mode) a trial makes the calls the tool's study
loop makes, through the study layer's own functions: ``--pattern new`` is this tool's loop
(:class:`search.study.tally.StudyReader` counts and heartbeats, the study on
:class:`search.study.cached.StudyStorage`, the tool's sampler),
``--pattern today`` the snapshot-per-turn loop it replaced (a full ``study.get_trials`` each turn,
in the exact-total check and each epoch). Optuna's journal file storage and its gRPC proxy (in front
of PostgreSQL) run plain Optuna (``study.optimize``) for the record: the tool does not use them.

Printed per backend, pattern and N: trials/s, the p50 / p95 time a worker spends per trial (all of
it storage work and Python: the trial trains nothing), errors, the workers' own CPU per trial, and
the database's CPU per trial (PostgreSQL's processes, plus PgBouncer or the gRPC proxy, from
/proc). On a shared machine the CPU figures are the ones that hold still: wall times and trials/s
move with the other processes' load. Then TPE's ``ask()`` (and its 5 suggestions) at 100, 1,000
and 3,000 finished trials, and a new worker's first read of that study (through the tool's
storage, and Optuna's), on PostgreSQL. Every process shares this machine's cores: compare within
one run.

    python benchmarks/storage_scale.py [--workers 1 4 16 32 64] [--window 20] [--backends ...]
    python benchmarks/storage_scale.py --quick   # 2 workers, 2 s windows: does it still run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

BACKENDS = ("sqlite", "postgres", "pgbouncer", "journal", "grpc")
RDB = ("sqlite", "postgres", "pgbouncer")
N_PARAMS, N_ATTRS, N_STEPS, HEARTBEAT_S = 5, 15, 10, 20


# --------------------------------------------------------------------------- one worker


def _objective(pattern: str, reader: Any, grace: float) -> Callable[[Any], float]:
    """The trial: the loop's exact-total check, 5 params, 15 attrs, 10 report + should_prune."""
    from optuna.trial import TrialState

    from search.study.study import running_trials

    def objective(trial: Any) -> float:
        study = trial.study
        if pattern == "new":
            _, running = reader.running(study.study_name, grace)
            me = next(rt for rt in running if rt.number == trial.number)
            reader.storage.get_trial(me.trial_id)  # its own retry history
        elif reader is not None:
            running_trials(study, reader.storage, grace, study.get_trials(deepcopy=False))
        x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(N_PARAMS)]
        for i in range(N_ATTRS):
            trial.set_user_attr(f"a{i}", i)
        for step in range(N_STEPS):
            trial.report(sum(x) * (step + 1) / N_STEPS, step)
            if pattern == "today":  # the prune gate's count, each epoch
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            trial.should_prune()  # the answer is ignored: every trial does the same work
        if pattern == "new":
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))  # keeping the top-k weights
        elif reader is not None:
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return sum(x)

    return objective


def _open(backend: str, url: str, name: str, pattern: str, seed: int) -> tuple[Any, Any, float]:
    """(study, reader or None, grace period) as a worker of this backend opens them: ``new`` as the
    tool's loop does (its storage, :class:`search.study.cached.StudyStorage`, and its TPE, seeded per
    trial, reading finished trials only), ``today`` with Optuna's own."""
    import optuna

    from search.config import config_from_dict
    from search.study.cached import StudyStorage
    from search.study.sampling import make_sampler
    from search.study.study import storage_for
    from search.study.tally import StudyReader

    sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if backend in RDB:
        search = {"heartbeat_interval_s": HEARTBEAT_S, "grace_period_s": 3 * HEARTBEAT_S}
        cfg = config_from_dict({"name": name, "storage": url, "seed": seed, "search": search})
        rdb = storage_for(cfg, create=False)
        reader = StudyReader(rdb)
        opened: optuna.storages.BaseStorage = rdb
        if pattern == "new":
            sampler, opened = make_sampler(cfg), StudyStorage(rdb)
        study = optuna.load_study(study_name=name, storage=opened, sampler=sampler, pruner=pruner)
        return study, reader, float(cfg.search.grace_period_s)
    if backend == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(url))
    else:
        host, port = url.rsplit(":", 1)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), None, 0.0


def worker_main(backend: str, url: str, name: str, pattern: str, window: float, seed: int) -> None:
    """Say "ready", wait for "go", run trials for ``window`` seconds, print one JSON line."""
    import optuna

    from search.study.study import RetryStale, fail_stale_trials

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, reader, grace = _open(backend, url, name, pattern, seed)
    objective = _objective(pattern, reader, grace)
    retry = RetryStale(3)
    print("ready", flush=True)
    sys.stdin.readline()
    durations: list[float] = []
    errors = 0
    cpu0 = time.process_time()
    end = time.monotonic() + window
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            if pattern == "new":  # the loop's turn: counts and heartbeats
                _, running = reader.running(name, grace)
                fail_stale_trials(study, reader.storage, grace, retry, running)
            elif reader is not None:  # today's turn: a snapshot of the whole study
                from search.study.study import running_trials

                trials = study.get_trials(deepcopy=False)
                fail_stale_trials(
                    study, reader.storage, grace, retry, running_trials(study, reader.storage, grace, trials)
                )
            study.optimize(objective, n_trials=1, gc_after_trial=False)
        except Exception:  # any error of any storage under load: counted and shown, the worker goes on
            errors += 1
            continue
        durations.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0  # this worker's own CPU (all its threads): load-independent
    print(json.dumps({"durations": durations, "errors": errors, "cpu_s": cpu}), flush=True)


# --------------------------------------------------------------------------- the driver


def _finished_trial(i: int) -> Any:
    import optuna

    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    params = {f"x{k}": ((i * 7 + k * 3) % 100) / 100 for k in range(N_PARAMS)}
    return optuna.trial.create_trial(
        params=params,
        distributions={k: dist for k in params},
        value=sum(params.values()),
        user_attrs={f"a{k}": k for k in range(N_ATTRS)},
        intermediate_values={s: sum(params.values()) * (s + 1) / N_STEPS for s in range(N_STEPS)},
    )


def _storage(backend: str, url: str) -> Any:
    import optuna

    if backend == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    if backend == "grpc":
        host, port = url.rsplit(":", 1)
        return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    from search.store.storage import make_storage

    return make_storage(url, heartbeat=False)


def prefill(backend: str, url: str, name: str, n: int) -> None:
    """Create study ``name`` holding ``n`` finished trials (5 params, 15 attrs, 10 steps each)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(backend, url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.add_trials([_finished_trial(i) for i in range(n)])
    if hasattr(storage, "engine"):
        storage.engine.dispose()


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) of ``pids``, their live descendants, and the children they
    already reaped (a PostgreSQL backend that ended is in its postmaster's cutime), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    reaped: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
        reaped[pid] = (int(fields[13]) + int(fields[14])) / tick
    wanted = set(pids)
    grew = True
    while grew:
        more = {p for p, parent in parents.items() if parent in wanted} - wanted
        grew = bool(more)
        wanted |= more
    return sum(times.get(p, 0.0) for p in wanted) + sum(reaped.get(p, 0.0) for p in pids)


def run_cell(
    backend: str, url: str, pattern: str, n: int, window: float, prefill_n: int, db_pids: list[int]
) -> dict[str, Any]:
    """One backend, pattern and worker count: a fresh study, N workers for ``window`` seconds."""
    name = f"scale-{backend}-{pattern}-{n}-{time.monotonic_ns()}"
    prefill(backend, url, name, prefill_n)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", backend, url, name, pattern, str(window), str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"worker {p.pid} failed"
    cpu0 = _cpu_s(db_pids)
    start = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=max(5.0, start + window + 120 - time.monotonic()))[0])
        except subprocess.TimeoutExpired:  # a stalled storage: the cell says so
            p.kill()
            outputs.append(json.dumps({"durations": [], "errors": 0, "stalled": 1}))
    elapsed = time.monotonic() - start
    cpu = _cpu_s(db_pids) - cpu0
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    durations = sorted(d for r in results for d in r["durations"])
    trials = len(durations)
    return {
        "trials_s": trials / elapsed,
        "p50_ms": 1000 * statistics.median(durations) if durations else float("nan"),
        "p95_ms": 1000 * durations[int(0.95 * (trials - 1))] if durations else float("nan"),
        "errors": sum(r["errors"] for r in results),
        "stalled": sum(r.get("stalled", 0) for r in results),
        "db_cpu_ms": 1000 * cpu / trials if db_pids and trials else float("nan"),
        "worker_cpu_ms": 1000 * sum(r.get("cpu_s", 0.0) for r in results) / trials
        if trials
        else float("nan"),
    }


def _first_read(url: str, name: str, ours: bool) -> tuple[int, float]:
    """(finished trials, seconds) of a new process's first read of them: through the tool's
    ``StudyStorage`` (plain SQL) or Optuna's own RDB storage (its ORM)."""
    import optuna

    from search.store.storage import make_storage
    from search.study.cached import FINISHED, StudyStorage

    fresh = make_storage(url, heartbeat=False)
    storage = StudyStorage(fresh) if ours else fresh
    study = optuna.load_study(study_name=name, storage=storage)
    t0 = time.perf_counter()
    n_read = len(study.get_trials(deepcopy=False, states=tuple(FINISHED)))
    seconds = time.perf_counter() - t0
    fresh.engine.dispose()
    return n_read, seconds


def ask_times(url: str, sizes: list[int]) -> list[str]:
    """TPE's ask() with 5 suggestions at each size (median of 5), and a new worker's first read."""
    import optuna

    from search.store.storage import make_storage

    lines = []
    name = f"ask-{time.monotonic_ns()}"
    storage = make_storage(url, heartbeat=False)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)
    )
    have = 0
    for size in sizes:
        study.add_trials([_finished_trial(i) for i in range(have, size)])
        have = size
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            trial = study.ask()
            for k in range(N_PARAMS):
                trial.suggest_float(f"x{k}", 0.0, 1.0)
            times.append(time.perf_counter() - t0)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not finished: the size stays
        n_read, optunas = _first_read(url, name, False)
        _, ours = _first_read(url, name, True)
        lines.append(
            f"TPE ask() + 5 suggestions at {size} finished trials: {1000 * statistics.median(times):.0f} ms; "
            f"a new worker's first read ({n_read} trials): {1000 * ours:.0f} ms "
            f"(Optuna's own storage: {1000 * optunas:.0f} ms)"
        )
    storage.engine.dispose()
    return lines


@contextmanager
def backend_url(backend: str, stack: ExitStack, tmp: Path) -> Iterator[tuple[str, list[int]]]:
    """The backend's URL and the pids whose CPU is the database's (empty: in the workers)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/scale.db", []
        return
    if backend == "journal":
        yield str(tmp / "journal.log"), []
        return
    from tests.pg import postgres

    server = stack.enter_context(postgres())
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    url = server.new_database()
    if backend == "postgres":
        yield url, [postmaster]
    elif backend == "pgbouncer":
        from tests.bouncer import pgbouncer

        bouncer = stack.enter_context(pgbouncer(server, pool_size=20))
        assert bouncer.proc is not None
        yield bouncer.url(url), [postmaster, bouncer.proc.pid]
    else:
        yield from _grpc_proxy(url, postmaster)


def _grpc_proxy(url: str, postmaster: int) -> Iterator[tuple[str, list[int]]]:
    """Optuna's gRPC storage proxy in front of ``url``, in its own process."""
    import socket

    from tests.pg import _free_port

    port = _free_port()
    code = (
        "import optuna, sys; optuna.logging.set_verbosity(optuna.logging.ERROR); "
        "from optuna.storages import RDBStorage, run_grpc_proxy_server; "
        f"run_grpc_proxy_server(RDBStorage(sys.argv[1]), host='127.0.0.1', port={port})"
    )
    proxy = subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", [postmaster, proxy.pid]
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def _row(backend: str, pattern: str, n: int, r: dict[str, Any]) -> str:
    stalled = f" ({r['stalled']} stalled)" if r["stalled"] else ""
    cpu = "-" if r["db_cpu_ms"] != r["db_cpu_ms"] else f"{r['db_cpu_ms']:.1f}"  # NaN: in the workers
    return (
        f"| {backend} | {pattern} | {n} | {r['trials_s']:.1f} | {r['p50_ms']:.0f} | "
        f"{r['p95_ms']:.0f} | {r['errors']}{stalled} | {r['worker_cpu_ms']:.0f} | {cpu} |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        backend, url, name, pattern, window, seed = sys.argv[2:8]
        worker_main(backend, url, name, pattern, float(window), int(seed))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--window", type=float, default=20.0, help="seconds each cell runs")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--patterns", nargs="+", choices=("new", "today"), default=["new", "today"])
    ap.add_argument("--prefill", type=int, default=100, help="finished trials in each study first")
    ap.add_argument("--ask-sizes", type=int, nargs="*", default=[100, 1000, 3000])
    ap.add_argument("--quick", action="store_true", help="2 workers, 2 s, small studies")
    args = ap.parse_args()
    if args.quick:
        args.workers, args.window, args.prefill, args.ask_sizes = [2], 2.0, 10, [20]
    from benchmarks._common import machine

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"trial: TPE {N_PARAMS} params, {N_ATTRS} user attrs, {N_STEPS} report + should_prune, "
        f"{HEARTBEAT_S} s heartbeats; {args.prefill} finished trials first; {args.window:g} s per cell"
    )
    print(
        "| backend | pattern | workers | trials/s | p50 ms/trial | p95 ms/trial | errors "
        "| worker CPU ms/trial | db CPU ms/trial |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="storage-scale-") as tmp:
        for backend in args.backends:
            with ExitStack() as stack:
                url, pids = stack.enter_context(backend_url(backend, stack, Path(tmp)))
                for pattern in args.patterns if backend in RDB else ["optuna"]:
                    for n in args.workers:
                        print(
                            _row(
                                backend,
                                pattern,
                                n,
                                run_cell(backend, url, pattern, n, args.window, args.prefill, pids),
                            ),
                            flush=True,
                        )
        if args.ask_sizes and ("postgres" in args.backends or "pgbouncer" in args.backends):
            with ExitStack() as stack:
                url, _ = stack.enter_context(backend_url("postgres", stack, Path(tmp)))
                for line in ask_times(url, args.ask_sizes):
                    print(line, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
