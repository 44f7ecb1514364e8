"""Rows PostgreSQL reads per finished trial of ``search run --workers N`` (issue 31's contract).

For each N in ``--workers`` and each study size in ``--trials``: a fresh database on a throwaway
PostgreSQL (``tests/pg.py``), then ``python -m search run CONFIG --workers N --storage URL`` with
a tiny digits config (2 epochs, TPE, median pruner asked every epoch, 1 OpenMP thread), reading
the database's own counters (``pg_stat_database``: ``tup_returned + tup_fetched``,
``xact_commit``, ``sessions``) before and after. The run's rows are then split into a start-up
cost and the rest: the start-up is the rows per connection of a process that only opens the
storage and the study (``make_storage`` + ``optuna.load_study``: a new backend filling its catalog
caches, and the study's first read) times the connections the run opened (its workers, and the
``run`` process following them). Printed: one table row per N and size with the rows per finished
trial and their ratio to N = 1 at the same size, with and without that start-up cost, and the rows
read from the study's own tables alone (``pg_stat_user_tables``).

The server runs without autovacuum (``AUTOVACUUM_OFF``: its ANALYZE at a random moment turned the
small trials table's index reads into whole-table scans in some runs, doubling their rows read).
With ``--bouncer`` the runs connect through PgBouncer in transaction pooling mode (the cluster
set-up docs/scale-out.md recommends; ``tests/bouncer.py``, a pool of 20 server connections per
database), the counters are read at the server as before: a worker's connection then reuses a
server backend instead of warming a new one.

    python benchmarks/pg_reads.py [--workers 1 4] [--trials 8 32] [--bouncer]
    python benchmarks/pg_reads.py --quick   # N = 1 and 2, 4 trials: does it still run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import tiny_config  # noqa: E402
from tests.pg import PostgresServer, postgres  # noqa: E402

# Autovacuum's ANALYZE, at a moment that differs from run to run, lets the planner scan the small
# trials table whole (a page or two) instead of through its indexes: the same work, but every row
# of the table counted, up to 2x a run's rows. Off, every run is planned alike.
AUTOVACUUM_OFF = "-c autovacuum=off"
FLUSH_S = 1.5  # backends send their counters at exit or at most once a second
COUNTERS = ("rows", "commits", "sessions")
CONNECT = "import psycopg, sys; psycopg.connect(sys.argv[1]).execute('SELECT 1').fetchall()"
OPEN_STUDY = (
    "import sys, optuna; from search.store.storage import make_storage; "
    "optuna.load_study(study_name=sys.argv[2], storage=make_storage(sys.argv[1], create=False))"
)


def study_config(n_trials: int) -> dict[str, Any]:
    """The tests' tiny digits study (tests/conftest.py): 2 epochs, TPE, the median pruner asked at
    every epoch, one thread."""
    cfg = tiny_config(name="reads", train={"threads": 1})
    cfg["data"] = {**cfg["data"], "root": "storage/data"}
    cfg["search"] = {
        **cfg["search"],
        "n_trials": n_trials,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }
    return cfg


def counters(server: PostgresServer, dbname: str) -> dict[str, int]:
    """The database's counters, after the backends that ended have flushed theirs."""
    import psycopg

    time.sleep(FLUSH_S)
    dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT tup_returned + tup_fetched, xact_commit, sessions FROM pg_stat_database "
            "WHERE datname = %s",
            (dbname,),
        ).fetchone()
    assert row is not None, dbname
    return dict(zip(COUNTERS, (int(v) for v in row), strict=True))


def study_table_rows(server: PostgresServer, dbname: str) -> int:
    """Rows read from the study's own tables (``pg_stat_user_tables``: sequential + index)."""
    import psycopg

    dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname={dbname}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_user_tables"
        ).fetchone()
    return int(row[0]) if row else 0


def measured(server: PostgresServer, url: str, cmd: list[str], cwd: Path, direct: str) -> dict[str, int]:
    """The counters' change on ``direct``'s database (``url``: how ``cmd`` reaches it) while
    ``cmd`` runs (it must exit 0)."""
    dbname = direct.rsplit("/", 1)[1]
    # the side connection to the study's database is read before ``before`` and after ``after``
    tables_before = study_table_rows(server, dbname)
    before = counters(server, dbname)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    after = counters(server, dbname)
    tables = study_table_rows(server, dbname) - tables_before
    return {"tables": tables, **{k: after[k] - before[k] for k in COUNTERS}}


def startup(
    server: PostgresServer, url: str, study: str, cwd: Path, direct: str, repeats: int = 3
) -> tuple[float, float]:
    """Rows per connection of a process that only opens the storage and the study (median of
    ``repeats``), and of one that only connects and runs ``SELECT 1``."""
    psycopg_url = url.replace("postgresql+psycopg://", "postgresql://")
    opens = [
        measured(server, url, [sys.executable, "-c", OPEN_STUDY, url, study], cwd, direct)
        for _ in range(repeats)
    ]
    bare = [
        measured(server, url, [sys.executable, "-c", CONNECT, psycopg_url], cwd, direct)
        for _ in range(repeats)
    ]
    per_open = statistics.median(o["rows"] / max(o["sessions"], 1) for o in opens)
    per_bare = statistics.median(b["rows"] / max(b["sessions"], 1) for b in bare)
    return per_open, per_bare


def finished(url: str) -> int:
    """COMPLETE + PRUNED trials of the study."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="reads", storage=url)
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def one_run(
    server: PostgresServer, workers: int, n_trials: int, work: Path, via: Callable[[str], str] = str
) -> dict[str, float]:
    """One ``search run --workers N`` on a fresh database (reached through ``via(url)``): its
    counters, start-up and finished trials."""
    direct = server.new_database()
    url = via(direct)
    cwd = work / f"w{workers}_t{n_trials}"
    cwd.mkdir()
    (work / "data").mkdir(exist_ok=True)
    (cwd / "storage").mkdir()
    (cwd / "storage" / "data").symlink_to(work / "data")  # digits is cached once for all runs
    config = cwd / "reads.yaml"
    config.write_text(yaml.safe_dump(study_config(n_trials), sort_keys=False))
    cmd = [sys.executable, "-m", "search", "run", str(config), "--workers", str(workers), "--storage", url]
    counts = measured(server, url, cmd, cwd, direct)
    per_open, per_bare = startup(server, url, "reads", cwd, direct)
    return {
        **counts,
        "finished": finished(url),
        "processes": 1 if workers == 1 else workers + 1,
        "startup": counts["sessions"] * per_open,
        "per_open": per_open,
        "per_bare": per_bare,
    }


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(results: dict[tuple[int, int], dict[str, float]], sizes: list[int], workers: list[int]) -> None:
    """The Markdown table: per size and N, rows per finished trial with and without start-up."""
    print(
        "| workers | trials | finished | rows read | commits | connections | rows / finished trial "
        "| ratio vs N=1 | start-up rows | rows / finished trial without start-up | ratio vs N=1 "
        "| study tables' rows / finished trial | ratio vs N=1 |"
    )
    print("| --- " * 13 + "|")
    for size in sizes:
        base = results.get((workers[0], size))
        for n in workers:
            r = results[(n, size)]
            per = r["rows"] / r["finished"]
            rest = (r["rows"] - r["startup"]) / r["finished"]
            ratio = per / (base["rows"] / base["finished"]) if base else float("nan")
            base_rest = (base["rows"] - base["startup"]) / base["finished"] if base else float("nan")
            tables = r["tables"] / r["finished"]
            base_tables = base["tables"] / base["finished"] if base else float("nan")
            print(
                f"| {n} | {size} | {r['finished']:.0f} | {fmt(r['rows'])} | {fmt(r['commits'])} "
                f"| {r['sessions']:.0f} | {fmt(per)} | {ratio:.2f}x | {fmt(r['startup'])} "
                f"| {fmt(rest)} | {rest / base_rest:.2f}x | {fmt(tables)} | {tables / base_tables:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--quick", action="store_true", help="N = 1 and 2, 4 trials")
    parser.add_argument(
        "--bouncer", action="store_true", help="connect through PgBouncer (transaction pooling)"
    )
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials = [1, 2], [4]
    from benchmarks._common import machine

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print("study: digits, 2 epochs, TPE, median pruner asked every epoch, 1 OpenMP thread per process")
    results: dict[tuple[int, int], dict[str, float]] = {}
    with ExitStack() as stack:
        server = stack.enter_context(postgres(AUTOVACUUM_OFF))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pg-reads-"))
        via: Callable[[str], str] = str
        if args.bouncer:
            from tests.bouncer import pgbouncer

            via = stack.enter_context(pgbouncer(server, pool_size=20)).url
            print("through PgBouncer (transaction pooling, 20 server connections per database)")
        for size in args.trials:
            for n in args.workers:
                results[(n, size)] = one_run(server, n, size, Path(tmp), via)
                r = results[(n, size)]
                print(
                    f"N={n} trials={size}: {r['rows']:.0f} rows, {r['sessions']:.0f} connections, "
                    f"{r['processes']:.0f} processes; opening the storage and the study "
                    f"{r['per_open']:.0f} rows a connection (a bare connection {r['per_bare']:.0f}); "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    report(results, args.trials, args.workers)


if __name__ == "__main__":
    main()
