"""Issue 26 rows 1 and 2, through ``search run``: a grid trains only points of its declared
ranges (a step that does not divide a range stops below ``high``, as the other samplers do), each
point once, and a grid smaller than ``search.n_trials`` ends with a clear line, also on resume and
across workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tests.conftest import run_cli, tiny_config, write_config

# c2 4..7 step 2 is 4, 6 (never 8); rotate_deg 172..180 step 3 is 172, 175, 178 (never 181 > 180)
UNEVEN_SPACE = {
    "c1": {"choices": [4]},
    "c2": {"low": 4, "high": 7, "step": 2},
    "l1": {"choices": [16]},
    "lr": 0.01,
    "batch_size": {"choices": [64]},
    "data.augment.rotate_deg": {"low": 172, "high": 180, "step": 3},
}


def _grid_config(workdir: Path, space: dict[str, Any], n_trials: int) -> Path:
    search = {"n_trials": n_trials, "sampler": {"name": "grid"}, "pruner": {"name": "none"}, "space": space}
    cfg = tiny_config(name="grid", train={"epochs": 1, "patience": 1}, search=search)
    return write_config(workdir / "grid.yaml", cfg)


def _trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{workdir}/storage/studies.db")
    return study.get_trials(deepcopy=False)


def _trained_points(workdir: Path) -> list[tuple[Any, ...]]:
    done = [t for t in _trials(workdir) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [tuple(sorted(t.params.items())) for t in done]


def test_grid_trains_each_point_of_its_ranges_once_then_stops_with_a_clear_line(workdir: Path) -> None:
    _grid_config(workdir, UNEVEN_SPACE, n_trials=8)
    proc = run_cli("run", "grid.yaml", cwd=workdir, check=0)
    points = _trained_points(workdir)
    assert sorted({dict(p)["c2"] for p in points}) == [4, 6]
    assert sorted({dict(p)["data.augment.rotate_deg"] for p in points}) == [172.0, 175.0, 178.0]
    assert len(points) == len(set(points)) == 6  # every point once, none twice
    assert all(t.state == TrialState.COMPLETE for t in _trials(workdir))  # no trial failed on 181
    assert "search.space.c2: step 2 does not divide 4..7, so the highest value tried is 6" in proc.stderr
    assert "search.n_trials 8 is more than the grid's 6 points" in proc.stderr  # said up front
    line = "the grid's 6 points are all taken: the study ends with 6 finished trials, not search.n_trials 8"
    assert line in proc.stderr
    assert "6/8 trials finished" in proc.stdout
    # the same command again (a resume) trains nothing more
    again = run_cli("run", "grid.yaml", cwd=workdir, check=0)
    assert line in again.stderr
    assert len(_trials(workdir)) == 6


def test_grid_smaller_than_n_trials_is_not_retrained_by_several_workers(workdir: Path) -> None:
    space = {**UNEVEN_SPACE, "c2": {"choices": [4]}, "data.augment.rotate_deg": {"choices": [0, 10]}}
    _grid_config(workdir, space, n_trials=5)
    proc = run_cli("run", "grid.yaml", "--workers", "3", "--device", "cpu", cwd=workdir, check=0)
    points = _trained_points(workdir)
    assert len(points) == len(set(points)) == 2, proc.stderr
    assert "the grid's 2 points are all taken" in proc.stderr
