"""Storage work per trial does not grow with the workers, and workers run through PgBouncer.

The reads are counted where Optuna takes a snapshot of the study: every ``get_all_trials`` on the
cached storage Optuna wraps an RDB storage in re-reads each unfinished trial in full, so the number
of such snapshots a finished trial costs is what made the database's load grow with the workers.
A ``sitecustomize`` on the CLI's ``PYTHONPATH`` counts them in every process ``search run`` starts,
split into those taken while trials run (the study loop, following the workers) and the others
(opening the study, the summary).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.store.records import PID_ATTR
from tests.bouncer import Bouncer, bouncer  # noqa: F401  (fixture)
from tests.conftest import cli_env, tiny_config, write_config
from tests.pg import PostgresServer, postgres_server  # noqa: F401  (fixture)

COUNTER = """
import atexit, json, os, sys
_counts = {"loop": 0, "other": 0}
try:
    from optuna.storages import _CachedStorage
    _orig = _CachedStorage.get_all_trials
    def _counted(self, *args, **kwargs):
        frame, where = sys._getframe(1), "other"
        while frame is not None:
            if frame.f_code.co_name in ("_loop", "_follow"):
                where = "loop"
                break
            frame = frame.f_back
        _counts[where] += 1
        return _orig(self, *args, **kwargs)
    _CachedStorage.get_all_trials = _counted
except ImportError:
    pass
@atexit.register
def _dump():
    with open(os.path.join(os.environ["READS_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(_counts, f)
"""


def _config(url: str, n_trials: int) -> dict[str, Any]:
    # TPE and the median pruner asked at every epoch: the loop's reads, the sampler's and the pruner's
    search = {
        "n_trials": n_trials,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }
    return tiny_config(storage=url, train={"epochs": 2, "patience": 2}, search=search)


def _run(tmp: Path, url: str, workers: int, n_trials: int) -> tuple[dict[str, int], int]:
    """``search run --workers N`` with the counter; (snapshots by kind, finished trials)."""
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
    totals = {"loop": 0, "other": 0, "processes": 0}
    for f in reads.glob("*.json"):
        totals["processes"] += 1
        for key, n in json.loads(f.read_text()).items():
            totals[key] += n
    study = optuna.load_study(study_name="tiny", storage=url)
    finished = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return totals, finished


def test_snapshots_per_trial_do_not_grow_with_the_workers(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    one, n_one = _run(tmp_path / "one", postgres_server.new_database(), workers=1, n_trials=6)
    three, n_three = _run(tmp_path / "three", postgres_server.new_database(), workers=3, n_trials=6)
    assert n_one == n_three == 6  # the exact total either way
    assert three["processes"] == 4  # search run and its 3 workers were all counted
    # each trial: Optuna's own ask and sampler reads (the loop's own counts read no trial)
    assert one["loop"] <= 3 * n_one
    assert three["loop"] / n_three <= 1.2 * one["loop"] / n_one, (one, three)


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
