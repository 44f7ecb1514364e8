"""The one run path (search.run.run_study): outcomes, start-up imports, concurrent starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.config import config_from_dict
from search.study.run import Outcome, RunOptions, run_study
from search.study.study import make_storage
from tests.conftest import cli_env, tiny_config, write_config

# `python -m search ARGS`, then which heavy modules the command imported.
IMPORTS_AFTER = """
import sys
from search.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "optuna_dashboard", "pandas", "matplotlib") if m in sys.modules)
print("imported:", ",".join(heavy), file=sys.stderr)
raise SystemExit(code)
"""


def _imports_after(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("imported:"))
    return proc, set(filter(None, line.removeprefix("imported:").strip().split(",")))


def _cfg(tmp: Path, **search: object):  # type: ignore[no-untyped-def]
    raw = tiny_config(storage=f"sqlite:///{tmp}/studies.db", artifacts_dir=str(tmp / "artifacts"))
    raw["search"] = {**raw["search"], **search}
    return config_from_dict(raw)


def test_run_without_dashboard_never_imports_optuna_dashboard_and_status_no_torch(workdir: Path) -> None:
    search = {**tiny_config()["search"], "n_trials": 1}
    write_config(workdir / "tiny.yaml", tiny_config(train={"epochs": 1, "patience": 1}, search=search))
    proc, heavy = _imports_after("run", "tiny.yaml", "--device", "cpu", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "study tiny: 1/1 trials finished" in proc.stdout
    assert "optuna_dashboard" not in heavy and "torch" in heavy
    proc, heavy = _imports_after("status", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("study ") and "\ntiny " in proc.stdout
    assert "torch" not in heavy and "optuna_dashboard" not in heavy


def test_outcomes_counts_and_best(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, n_trials=3)
    result = run_study(cfg, RunOptions(objective=lambda t: t.suggest_float("x", 0, 1)))
    assert result.outcome is Outcome.COMPLETED
    assert (result.finished, result.started, result.n_trials) == (3, 3, 3)
    study = optuna.load_study(study_name="tiny", storage=make_storage(cfg.storage))
    assert result.best is not None and result.best.value == study.best_value
    again = run_study(cfg, RunOptions(objective=lambda t: t.suggest_float("x", 0, 1)))  # already complete
    assert again.outcome is Outcome.COMPLETED and again.started == 0 and again.finished == 3


def test_failure_budget_and_no_trial_completed(tmp_path: Path) -> None:
    def fails(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("fail_reason", "broken")
        return float("nan")

    result = run_study(_cfg(tmp_path, n_trials=5, max_failures=2), RunOptions(objective=fails))
    assert result.outcome is Outcome.FAILURE_BUDGET and result.started == 2
    assert "stopped after 2 failed trials (search.max_failures=2)" in result.stop_message

    def prunes(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        raise optuna.TrialPruned

    (tmp_path / "p").mkdir()
    result = run_study(_cfg(tmp_path / "p", n_trials=2), RunOptions(objective=prunes))
    assert result.outcome is Outcome.NO_TRIAL_COMPLETED and result.best is None and result.finished == 2


CONCURRENT = """
import sys
from search.config import config_from_dict
from search.study.run import RunOptions, run_study
cfg = config_from_dict({"name": "c", "storage": sys.argv[1], "seed": 0, "search": {"n_trials": 8,
                        "sampler": {"name": "tpe"}}})
run_study(cfg, RunOptions(objective=lambda t: t.suggest_float("x", 0, 1)))
"""


def test_concurrent_runs_on_a_new_sqlite_file_start_safely_and_sample_apart(tmp_path: Path) -> None:
    """Two copies of one command at once on a file that does not exist yet: both start (no
    `table ... already exists`), and no two trials share params (each trial has its own seed)."""
    url = f"sqlite:///{tmp_path}/new/studies.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, url],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="c", storage=make_storage(url)).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    xs = [t.params["x"] for t in complete]
    assert len(set(xs)) == len(xs), xs


def test_a_single_run_is_reproducible(tmp_path: Path) -> None:
    values = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        run_study(
            _cfg(tmp_path / name, n_trials=4), RunOptions(objective=lambda t: t.suggest_float("x", 0, 1))
        )
        storage = make_storage(f"sqlite:///{tmp_path / name}/studies.db")
        study = optuna.load_study(study_name="tiny", storage=storage)
        values.append([t.params["x"] for t in study.trials])
    assert values[0] == values[1]
