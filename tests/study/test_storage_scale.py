"""Storage work per trial does not grow with the workers, and workers run through PgBouncer.

Every trial a process reads from the database is counted where it is built: by Optuna's RDB
storage (``RDBStorage._build_frozen_trial_from_trial_model``, under ``get_trial`` and every bulk
read) or with plain SQL (``search.store.trial_rows._frozen``, the finished trials a study reads),
with its state and id, by a ``sitecustomize`` on the CLI's ``PYTHONPATH`` in every process
``search run`` starts, split into the reads made while trials run (the study loop, following the
workers), those its sampler asks for (TPE's constant liar: the trials running as it samples), and
the others (opening the study, the summary). Optuna's own cache re-read every RUNNING trial at each
snapshot, so the RUNNING trials read per finished trial grew with the workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.store.records import PID_ATTR
from tests.bouncer import Bouncer, bouncer  # noqa: F401  (fixture)
from tests.conftest import cli_env, tiny_config, write_config
from tests.pg import PostgresServer, postgres_server  # noqa: F401  (fixture)

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
COUNTER = """
import atexit, json, os, sys
_reads = []  # [where, state, trial id] of each trial read from the database
def _note(trial):
    frame, where = sys._getframe(2), "other"
    while frame is not None:
        if "/optuna/samplers/" in frame.f_code.co_filename.replace(os.sep, "/"):
            where = "sampler"
            break
        if frame.f_code.co_name in ("_loop", "_follow"):
            where = "loop"
            break
        frame = frame.f_back
    _reads.append([where, trial.state.name, trial._trial_id])
    return trial
try:
    from optuna.storages import RDBStorage
    from search.store import trial_rows
    _orm, _sql = RDBStorage._build_frozen_trial_from_trial_model, trial_rows._frozen
    RDBStorage._build_frozen_trial_from_trial_model = lambda self, model: _note(_orm(self, model))
    trial_rows._frozen = lambda row, rows: _note(_sql(row, rows))
except ImportError:
    pass
@atexit.register
def _dump():
    with open(os.path.join(os.environ["READS_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(_reads, f)
"""


def _config(url: str, n_trials: int) -> dict[str, Any]:
    # TPE and the median pruner asked at every epoch: the loop's reads, the sampler's and the pruner's
    search = {
        "n_trials": n_trials,
        "sampler": {"name": "tpe", "n_startup_trials": 2},  # TPE proper (its constant liar) from trial 3
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }
    return tiny_config(storage=url, train={"epochs": 2, "patience": 2}, search=search)


Reads = list[list[list[Any]]]  # per process: [where, state, trial id] of each trial read


def _run(tmp: Path, url: str, workers: int, n_trials: int) -> tuple[Reads, int]:
    """``search run --workers N`` with the counter; (the trials each process read, finished trials)."""
    reads = tmp / "reads"
    reads.mkdir(parents=True)
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(COUNTER)
    cfg = write_config(tmp / "cfg.yaml", _config(url, n_trials))
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp / "hook"), env["PYTHONPATH"]])
    env["READS_DIR"] = str(reads)
    proc = subprocess.run(
        [sys.executable, "-m", "search", "run", str(cfg), "--workers", str(workers)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_process = [json.loads(f.read_text()) for f in reads.glob("*.json")]
    study = optuna.load_study(study_name="tiny", storage=url)
    finished = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return per_process, finished


def _running_reads(per_process: Reads) -> Counter[int]:
    """RUNNING trials read while trials run, outside the sampler: how many times each, checking
    that no trial was read RUNNING by two processes (a worker reads its own trial only)."""
    owners: dict[int, int] = {}
    counts: Counter[int] = Counter()
    for process, reads in enumerate(per_process):
        for where, state, tid in reads:
            if where == "loop" and state == "RUNNING":
                assert owners.setdefault(tid, process) == process, f"trial {tid} read RUNNING twice"
                counts[tid] += 1
    return counts


def test_trials_read_per_trial_do_not_grow_with_the_workers(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    one, n_one = _run(tmp_path / "one", postgres_server.new_database(), workers=1, n_trials=6)
    three, n_three = _run(tmp_path / "three", postgres_server.new_database(), workers=3, n_trials=6)
    assert n_one == n_three == 6  # the exact total either way
    assert len(three) == 4  # search run and its 3 workers were all counted
    # RUNNING trials read by the loop: each worker its own (the trial's start, the pruner each
    # epoch), no other; per trial run (a trial started beyond the total and ended as surplus counts)
    running_one, running_three = _running_reads(one), _running_reads(three)
    assert len(running_one) >= n_one and len(running_three) >= n_three
    assert max(running_one.values()) <= 3 and max(running_three.values()) <= 3  # 1 + 2 epochs
    per_trial_one = running_one.total() / len(running_one)
    assert running_three.total() / len(running_three) <= 1.2 * per_trial_one, (one, three)
    # TPE's constant liar: once per trial sampled by TPE, the trials running then (3 at most)
    lied_about = sum(
        where == "sampler" and state == "RUNNING" for reads in three for where, state, _ in reads
    )
    assert 0 < lied_about <= 3 * (len(running_three) - 2), three
    readers: Counter[int] = Counter()  # finished trial id: the processes that read it from the database
    for reads in three:  # a finished trial is read at most once by each process while trials run
        finished_ids = [tid for where, state, tid in reads if where == "loop" and state in FINISHED]
        assert len(finished_ids) == len(set(finished_ids)), reads
        readers.update(finished_ids)
    assert len(readers) >= n_three  # counted: the worker that ran it, or the first to see it
    # the others took it from the machine's shared folder (search/store/trial_cache.py): without
    # it, each of the 3 workers but its own and search run read each one (3 each)
    assert readers.total() <= 1.5 * len(readers), three


def test_two_workers_run_a_study_through_pgbouncer_in_transaction_mode(
    postgres_server: PostgresServer,  # noqa: F811
    bouncer: Bouncer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = bouncer.url(postgres_server.new_database())
    cfg = write_config(tmp_path / "cfg.yaml", _config(url, 4))
    proc = subprocess.run(
        [sys.executable, "-m", "search", "run", str(cfg), "--workers", "2"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PreparedStatement" not in proc.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    assert len({t.user_attrs[PID_ATTR] for t in finished}) == 2  # both workers trained
    assert 0 < bouncer.server_connections() <= bouncer.pool_size  # the pool, not one per client
