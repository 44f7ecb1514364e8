from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.config import PARAM_NAMES
from search.results.plots import best_so_far, importances_problem, label_overlaps, tidy_parallel_coordinate
from search.results.report import COLUMNS, summarize, trials_frame, write_report
from tests.conftest import png_size, run_cli
from tests.studies import build_study, db_url, fake_trial, study_config

PLOTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "learning_curves",
    "best_vs_epochs",
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, optuna.Study]]:
    """4 real trials on digits, 2 epochs each; the median pruner may prune some."""
    root = tmp_path_factory.mktemp("report")
    raw = study_config(
        root,
        train={"epochs": 2, "patience": 1},
        search={
            "n_trials": 4,
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        },
    )
    yield root, build_study(raw)


def test_trials_frame_one_row_per_trial_best_first(digits: tuple[Path, optuna.Study]) -> None:
    root, study = digits
    df = trials_frame("tiny", db_url(root))
    assert len(df) == len(study.trials) == 4
    assert [c for c in COLUMNS if c not in ("fail_reason", "constraint")] == list(df.columns)
    assert df["feasible"].all() and df["latency_ms"].isna().all()  # no budgets: all fit, none timed
    assert df.loc[0, "number"] == study.best_trial.number and df.loc[0, "value"] == study.best_value
    complete = df[df["state"] == "COMPLETE"]
    assert list(complete["value"]) == sorted(complete["value"], reverse=True)
    states = list(df["state"])
    assert states == sorted(states, key=lambda s: s != "COMPLETE")  # finished trials first
    by_number = {t.number: t for t in study.trials}
    for row in df.itertuples(index=False):
        trial = by_number[row.number]
        assert row.lr == trial.params["lr"] and row.c1 == trial.params["c1"]
        assert row.epochs_run == trial.user_attrs["epochs_run"]
        assert row.n_params == trial.user_attrs["n_params"] > 0
        assert row.family == trial.user_attrs["family"] == "convnet/plain"  # the default model.block
        assert row.precision == trial.user_attrs["precision"] in ("fp32", "bf16")
        assert row.duration_s == pytest.approx(trial.duration.total_seconds())
        assert row.datetime_start.tzinfo is not None and str(row.datetime_start.tz) == "UTC"
    # pandas filtering and grouping, as in the README
    assert df.groupby("c1")["value"].max().max() == study.best_value


def test_report_cli_writes_readable_tables_and_plots(digits: tuple[Path, optuna.Study]) -> None:
    root, study = digits
    proc = run_cli("report", "tiny", "--storage", db_url(root), cwd=root, check=0)
    out = root / "storage" / "reports" / "tiny"  # the default --out
    assert f"best: trial {study.best_trial.number}, value {study.best_value:.4f}" in proc.stdout
    n = len(study.trials)
    expected = [c for c in COLUMNS if c not in ("fail_reason", "constraint")]
    csv = pd.read_csv(out / "report.csv")
    parquet = pd.read_parquet(out / "report.parquet")
    for table in (csv, parquet):
        assert len(table) == n and list(table.columns) == expected
        assert table.loc[0, "number"] == study.best_trial.number
    assert str(parquet["datetime_start"].dt.tz) == "UTC"
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"^\| \d+ \| [A-Z]+ \|", line)]
    assert len(rows) == n and f"best: trial {study.best_trial.number}" in md
    page = (out / "report.html").read_text()
    assert page.count("<tr") == n + 1 and "saved by pruning" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == n and summary["best_number"] == study.best_trial.number
    assert sum(summary["states"].values()) == n
    for name in ("optimization_history", "parallel_coordinate", "learning_curves", "best_vs_epochs"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "plotly" in (out / f"{name}.html").read_text()
    if importances_problem(study) is None:
        assert (out / "param_importances.png").exists()
    assert png_size(out / "parallel_coordinate.png") == (650, 1200)  # height, width in pixels
    assert 'src="best_vs_epochs.png"' in page and "![best_vs_epochs](best_vs_epochs.png)" in md
    # the curve is what the trials say: in order of completion, epochs summed, best COMPLETE value
    done = sorted(
        (t for t in study.trials if t.state.is_finished()), key=lambda t: (t.datetime_complete, t.number)
    )
    points = best_so_far(study)
    assert [p.number for p in points] == [t.number for t in done]
    total = 0
    for point, trial in zip(points, done, strict=True):
        total += trial.user_attrs["epochs_run"]
        so_far = [t.value for t in done[: done.index(trial) + 1] if t.state == TrialState.COMPLETE]
        assert point.epochs == total and point.best == max(so_far)
    assert points[-1].best == study.best_value
    assert points[-1].epochs == sum(t.user_attrs["epochs_run"] for t in study.trials)


def test_parallel_coordinate_tick_labels_do_not_overlap(digits: tuple[Path, optuna.Study]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    _, study = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fig = plot_parallel_coordinate(study).figure
    tidy_parallel_coordinate(fig)
    assert label_overlaps(fig) == []
    bar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bar) == 1
    plt.close(fig)

    # the check does see overlapping labels: two axes whose tick labels sit on the same spot
    fig, ax = plt.subplots()
    ax.set_yticks([0.5], labels=["a label"])
    ax.twinx().set_yticks([0.5], labels=["a label"])
    ax.figure.axes[1].yaxis.tick_left()
    assert label_overlaps(fig) == [("a label", "a label")]
    plt.close(fig)


def test_report_bad_study_exits_2(
    digits: tuple[Path, optuna.Study], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digits
    monkeypatch.chdir(root)
    assert main(["report", "nope", "--storage", db_url(root)]) == 2
    err = capsys.readouterr().err
    assert "error: no study named 'nope'" in err and "tiny" in err and err.count("error:") == 1
    assert not (root / "storage" / "reports" / "nope").exists()
    assert main(["report", "tiny", "--storage", db_url(root / "elsewhere")]) == 2
    assert "no study storage" in capsys.readouterr().err
    assert not (root / "elsewhere").exists()


# --------------------------------------------------------------------------- synthetic studies


def _study(tmp_path: Path, name: str, trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=db_url(tmp_path), direction="maximize")
    study.set_user_attr("config", study_config(tmp_path, train={"epochs": 10}))
    for t in trials:
        study.add_trial(t)
    return study


@pytest.fixture
def url(tmp_path: Path) -> str:
    (tmp_path / "storage").mkdir()
    return db_url(tmp_path)


P = {"c1": 8, "c2": 16, "l1": 32, "lr": 1e-3, "batch_size": 64}


def test_summary_seconds_saved_by_pruning_and_early_stopping(tmp_path: Path, url: str) -> None:
    study = _study(
        tmp_path,
        "s",
        [
            fake_trial(0, TrialState.COMPLETE, 0.9, P, seconds=100, epochs_run=10),
            fake_trial(1, TrialState.COMPLETE, 0.8, {**P, "lr": 2e-3}, seconds=40, epochs_run=4),
            fake_trial(2, TrialState.PRUNED, 0.3, {**P, "lr": 3e-3}, seconds=20, epochs_run=2),
            fake_trial(3, TrialState.FAIL, None, {**P, "lr": 4e-3}, 5, epochs_run=1, fail_reason="nan"),
        ],
    )
    df = trials_frame("s", url)
    assert list(df["number"]) == [0, 1, 2, 3] and "fail_reason" in df.columns
    assert df.loc[3, "fail_reason"] == "nan"
    s = summarize(study, df, epochs=10)
    assert s.compute_seconds == pytest.approx(165)
    # trial 1: 10 s/epoch x 6 epochs not run; trial 2: 10 s/epoch x 8 epochs not run
    assert s.saved_by_early_stopping_s == pytest.approx(60)
    assert s.saved_by_pruning_s == pytest.approx(80)
    assert s.full_run_seconds == pytest.approx(300)
    assert s.states == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1} and s.best_number == 0


@pytest.mark.parametrize(
    ("case", "skipped"),
    [
        ("one_trial", {"param_importances"}),
        (
            "all_pruned",
            {"param_importances", "optimization_history", "parallel_coordinate", "best_vs_epochs"},
        ),
        ("single_varying_param", set()),
        ("nothing_varies", {"param_importances"}),
    ],
)
def test_plots_never_crash(tmp_path: Path, url: str, case: str, skipped: set[str]) -> None:
    trials = {
        "one_trial": [fake_trial(0, TrialState.COMPLETE, 0.5, P, 10, 3)],
        "all_pruned": [fake_trial(i, TrialState.PRUNED, 0.1 * i, {**P, "c1": 4 + i}, 5, 2) for i in range(3)],
        "single_varying_param": [
            fake_trial(i, TrialState.COMPLETE, 0.5 + 0.1 * i, {**P, "lr": 1e-3 * (i + 1)}, 10, 3)
            for i in range(3)
        ],
        "nothing_varies": [fake_trial(i, TrialState.COMPLETE, 0.5 + 0.1 * i, P, 10, 3) for i in range(3)],
    }[case]
    _study(tmp_path, case, trials)
    files = write_report(case, url, tmp_path / "out")
    assert set(PLOTS) - set(files.plots) == skipped
    for name in skipped:
        assert any(note.startswith(f"skipped {name}") for note in files.summary.notes)
        assert not (tmp_path / "out" / f"{name}.png").exists()
    for name in files.plots:
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 0
    assert len(pd.read_parquet(tmp_path / "out" / "report.parquet")) == len(trials)
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(f"note: skipped {name}" in md for name in skipped)


def test_empty_and_foreign_studies(tmp_path: Path, url: str) -> None:
    _study(tmp_path, "empty", [])
    files = write_report("empty", url, tmp_path / "empty")
    assert files.plots == [] and len(pd.read_csv(tmp_path / "empty" / "report.csv")) == 0
    assert files.summary.best_number is None and files.summary.compute_seconds == 0
    # a study created by plain Optuna (no stored config) still gets a report
    foreign = optuna.create_study(study_name="foreign", storage=url, direction="maximize")
    foreign.add_trial(fake_trial(0, TrialState.COMPLETE, 0.5, P, 10, 3))
    foreign.add_trial(fake_trial(1, TrialState.PRUNED, 0.2, P, 4, 1))
    files = write_report("foreign", url, tmp_path / "foreign")
    assert files.summary.epochs_per_trial == 3 and files.summary.saved_by_pruning_s == pytest.approx(8)


def test_fixed_params_fill_the_table(tmp_path: Path, url: str) -> None:
    study = _study(tmp_path, "fixed", [fake_trial(0, TrialState.COMPLETE, 0.5, {"lr": 1e-3}, 10, 3)])
    cfg = study.user_attrs["config"]
    cfg["search"]["space"] = {**cfg["search"]["space"], "c1": 8, "c2": 16, "l1": 32, "batch_size": 64}
    study.set_user_attr("config", cfg)
    row = trials_frame("fixed", url).iloc[0]
    assert [row[p] for p in PARAM_NAMES] == [8, 16, 32, pytest.approx(1e-3), 64]


def test_best_so_far_follows_completion_order_and_counts_pruned_epochs(tmp_path: Path, url: str) -> None:
    # trial 0 starts first but finishes last (600 s); trial 2 is pruned after 2 epochs, 3 fails
    study = _study(
        tmp_path,
        "effort",
        [
            fake_trial(0, TrialState.COMPLETE, 0.9, P, seconds=600, epochs_run=6),
            fake_trial(1, TrialState.COMPLETE, 0.5, P, seconds=10, epochs_run=4),
            fake_trial(2, TrialState.PRUNED, 0.7, P, seconds=10, epochs_run=2),
            fake_trial(3, TrialState.FAIL, None, P, seconds=10, epochs_run=1),
            fake_trial(4, TrialState.COMPLETE, 0.6, P, seconds=10, epochs_run=5),
        ],
    )
    points = best_so_far(study)
    assert [(p.number, p.epochs, p.best) for p in points] == [
        (1, 4, 0.5),
        (2, 6, 0.5),  # a pruned value is not a best
        (3, 7, 0.5),
        (4, 12, 0.6),
        (0, 18, 0.9),
    ]
    files = write_report("effort", url, tmp_path / "out")
    assert "best_vs_epochs" in files.plots
    assert png_size(tmp_path / "out" / "best_vs_epochs.png") == (450, 700)
    assert '"x":[4,6,7,12,18]' in (tmp_path / "out" / "best_vs_epochs.html").read_text()
