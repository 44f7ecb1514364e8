"""Two-objective (Pareto) studies through the CLI: ``search.objectives: [val_accuracy, COST]``.

One tiny digits study (random sampler, 3 epochs, the median rule from the first finished trial)
serves most tests: its front is ``study.best_trials`` everywhere (status, the run summary,
``pareto.csv``), some trials are pruned per epoch, and every pruned trial satisfies the rule of
docs/pareto.md, checked here from the stored curves without the tool's own code.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.store.records import (
    EPOCHS_RUN_ATTR,
    FLOPS_ATTR,
    N_PARAMS_ATTR,
    PRUNED_AT_EPOCH_ATTR,
    VAL_CURVE_ATTR,
    WEIGHTS_ATTR,
)
from tests.conftest import png_size, run_cli, tiny_config, write_config

STORAGE = "sqlite:///storage/studies.db"


def _pareto_config(**search: Any) -> dict[str, Any]:
    cfg = tiny_config(name="front", train={"epochs": 3, "patience": 3})
    cfg["search"] = {
        **cfg["search"],
        "n_trials": 9,
        "objectives": ["val_accuracy", "n_params"],
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
        "space": {
            "c1": {"choices": [2, 4, 8]},
            "c2": {"choices": [4, 8, 16]},
            "l1": {"choices": [8, 16, 32]},
            "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "batch_size": {"choices": [64]},
        },
        **search,
    }
    return cfg


@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The study's folder and `search run`'s stdout."""
    root = tmp_path_factory.mktemp("pareto")
    write_config(root / "front.yaml", _pareto_config())
    proc = run_cli("run", "front.yaml", cwd=root, check=0)
    return root, proc.stdout


def _load(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="front", storage=f"sqlite:///{root}/storage/studies.db")


def _describe(t: FrozenTrial) -> str:
    return f"#{t.number} val_accuracy {t.values[0]:.4f} n_params {t.values[1]:.0f}"


def test_the_study_is_optunas_two_objective_study_and_its_front_is_shown(
    pareto_study: tuple[Path, str],
) -> None:
    root, stdout = pareto_study
    study = _load(root)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "n_params"]
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    assert front, "a completed study has a front"
    done = study.get_trials(states=(TrialState.COMPLETE,))
    for t in done:  # the cost is the net's parameter count, as recorded before training
        assert t.values[1] == t.user_attrs[N_PARAMS_ATTR]
        assert len(t.user_attrs[VAL_CURVE_ATTR]) == t.user_attrs[EPOCHS_RUN_ATTR]
    most_accurate = max(front, key=lambda t: (t.values[0], -t.values[1]))
    line = f"front: {len(front)} trial(s); cheapest {_describe(front[0])}; "
    line += f"most accurate {_describe(most_accurate)}"
    assert line in stdout  # the run summary
    assert f"best trial {most_accurate.number} (the front's most accurate)" in stdout
    status = run_cli("status", cwd=root, check=0).stdout
    assert line in status and f"#{most_accurate.number} {most_accurate.values[0]:.4f}" in status


def test_trials_are_pruned_per_epoch_and_each_by_the_rule(pareto_study: tuple[Path, str]) -> None:
    """Pruned at epoch e: its best accuracy up to e is below the median, at epoch e, of the
    trials that had COMPLETED before it with a cost no higher than its own."""
    study = _load(Path(pareto_study[0]))
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED and PRUNED_AT_EPOCH_ATTR in t.user_attrs]
    assert pruned, "the median rule pruned no trial"
    for t in pruned:
        epoch = t.user_attrs[PRUNED_AT_EPOCH_ATTR]
        curve = t.user_attrs[VAL_CURVE_ATTR]
        assert len(curve) == epoch >= 1  # warm-up 1: never before epoch 1
        peers = [
            p
            for p in trials
            if p.state == TrialState.COMPLETE
            and p.datetime_complete is not None
            and t.datetime_complete is not None
            and p.datetime_complete < t.datetime_complete
            and p.values[1] <= t.user_attrs[N_PARAMS_ATTR]
            and len(p.user_attrs[VAL_CURVE_ATTR]) >= epoch
        ]
        assert peers, f"trial {t.number} was pruned with no cheaper finished trial"
        median = statistics.median(p.user_attrs[VAL_CURVE_ATTR][epoch - 1] for p in peers)
        assert max(curve) < median, (t.number, curve, median)
        assert not t.values  # a pruned trial is never on the front
    on_front = {t.number for t in study.best_trials}
    assert on_front.isdisjoint(t.number for t in pruned)


def test_report_writes_the_front_exactly_and_its_plot(pareto_study: tuple[Path, str]) -> None:
    root = Path(pareto_study[0])
    proc = run_cli("report", "front", cwd=root, check=0)
    out = root / "storage" / "reports" / "front"
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    study = _load(root)
    expected = sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))
    assert [int(r["number"]) for r in rows] == [t.number for t in expected]
    for row, t in zip(rows, expected, strict=True):
        assert float(row["val_accuracy"]) == pytest.approx(t.values[0])
        assert float(row["n_params"]) == t.values[1]
        assert {k: row[k] for k in t.params} == {k: str(v) for k, v in t.params.items()}
    assert sum(r["knee"] == "True" for r in rows) == (1 if len(rows) >= 3 else 0)
    height, width = png_size(out / "pareto.png")
    assert height > 100 and width > 100
    page = (out / "pareto.html").read_text()
    assert "front (" in page and "pruned (" in page and "dominated (" in page
    assert "front:" in proc.stdout


def test_export_takes_the_front_s_most_accurate_trial_or_the_one_named(
    pareto_study: tuple[Path, str],
) -> None:
    root = Path(pareto_study[0])
    study = _load(root)
    best = max(study.best_trials, key=lambda t: (t.values[0], -t.values[1], -t.number))
    proc = run_cli("export", "front", "--out", "best", cwd=root, check=0)
    assert f"exported trial {best.number} (val accuracy {best.values[0]:.4f})" in proc.stdout
    store = root / "storage" / "artifacts"  # every front member keeps its weights (--trial N exports it)
    for t in study.best_trials:
        assert (store / t.user_attrs[WEIGHTS_ATTR]).is_file(), f"front member {t.number} has no weights"


def test_single_objective_samplers_and_pruners_are_refused(tmp_path: Path) -> None:
    write_config(tmp_path / "front.yaml", _pareto_config(sampler={"name": "cmaes"}))
    proc = run_cli("run", "front.yaml", cwd=tmp_path, check=2)
    assert "error: search.sampler.name: this sampler optimises one objective only" in proc.stderr
    assert "use one of tpe, nsga2, random, grid, qmc, gp" in proc.stderr
    write_config(tmp_path / "front.yaml", _pareto_config(pruner={"name": "hyperband"}))
    proc = run_cli("run", "front.yaml", cwd=tmp_path, check=2)
    assert "error: search.pruner.name: this pruner has no rule for two objectives" in proc.stderr
    assert not (tmp_path / "storage").exists()  # nothing written


def test_flops_objective_under_a_budget_keeps_infeasible_trials_off_the_front(tmp_path: Path) -> None:
    """NSGA-II on [val_accuracy, flops] with max_params: over-budget trials are PRUNED before
    training, never on the front; the cost is torch's FLOP count, recorded as user attr too."""
    cfg = _pareto_config(
        n_trials=4,
        objectives=["val_accuracy", "flops"],
        sampler={"name": "nsga2", "n_startup_trials": 2},
        pruner={"name": "none"},
        constraints={"max_params": 3000},
    )
    cfg["train"] = {"epochs": 1, "patience": 1}
    write_config(tmp_path / "front.yaml", cfg)
    run_cli("run", "front.yaml", cwd=tmp_path, check=0)
    study = optuna.load_study(study_name="front", storage=f"sqlite:///{tmp_path}/storage/studies.db")
    over = [t for t in study.trials if t.user_attrs.get(N_PARAMS_ATTR, 0) > 3000]
    assert all(t.state == TrialState.PRUNED for t in over)
    front = study.best_trials
    assert front and all(t.user_attrs[N_PARAMS_ATTR] <= 3000 for t in front)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values[1] == t.user_attrs[FLOPS_ATTR] > 0
    resumed = run_cli("run", "front.yaml", "--set", "search.objectives=[val_accuracy]", cwd=tmp_path, check=2)
    assert "search.objectives: stored" in resumed.stderr


def test_hypervolume_and_knee_of_a_known_front() -> None:
    """Accuracy maximised, cost minimised: the staircase's area up to the reference point."""
    from search.study.pareto import hypervolume_2d

    points = [(0.5, 1.0), (0.8, 3.0), (0.9, 8.0)]
    # strips: cost 1..3 at 0.5, 3..8 at 0.8, 8..10 at 0.9
    assert hypervolume_2d(points, (0.0, 10.0)) == pytest.approx(0.5 * 2 + 0.8 * 5 + 0.9 * 2)
    dominated = [*points, (0.4, 5.0), (0.95, 12.0)]  # one dominated, one beyond the reference cost
    assert hypervolume_2d(dominated, (0.0, 10.0)) == pytest.approx(6.8)
    assert hypervolume_2d(points, (0.6, 10.0)) == pytest.approx(0.2 * 5 + 0.3 * 2)
    assert hypervolume_2d([], (0.0, 1.0)) == 0.0
