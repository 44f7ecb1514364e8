"""`search confirm` (re-train the top trials with new seeds or folds), finetune's start, warm start.

One tiny digits study is made with `search run` once per module; each test works on its own copy
of its storage folder, through the CLI as a user runs it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import statistics
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.cli import main
from search.config import PARAM_NAMES, ConfigError, config_from_dict, load_config
from search.results.confirm import ConfirmSettings, _datasets, _train_once
from search.results.verdict import ConfirmRow, verdict
from search.store.records import CONFIRM_RUN_PREFIX, WARM_START_ATTR
from search.study.recipe import rebuild
from search.study.stored import study_config
from tests.conftest import popen_cli, run_cli, tiny_config, write_config

DB = "sqlite:///storage/studies.db"


def _load(root: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/storage/studies.db")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-trial, 2-epoch digits study made by `search run` (storage/ inside the returned folder);
    its config's ``confirm`` section asks for the top 2 trials, 2 seeds each."""
    root = tmp_path_factory.mktemp("confirm-study")
    cfg = tiny_config(search={**tiny_config()["search"], "n_trials": 4}, confirm={"top": 2, "seeds": 2})
    write_config(root / "tiny.yaml", cfg)
    run_cli("run", "tiny.yaml", "--device", "cpu", cwd=root, check=0)
    return root


@pytest.fixture
def study_dir(made: Path, tmp_path: Path) -> Path:
    """A private copy of the module's study (database, weights, data cache)."""
    shutil.copytree(made / "storage", tmp_path / "storage")
    return tmp_path


def _run_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("run ")]


def _csv(root: Path) -> list[dict[str, str]]:
    with (root / "storage" / "reports" / "tiny" / "confirm.csv").open() as fh:
        return list(csv.DictReader(fh))


def _top(study: optuna.Study, k: int) -> list[int]:
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return [t.number for t in sorted(done, key=lambda t: (-(t.value or 0.0), t.number))[:k]]


def _run_attrs(study: optuna.Study) -> dict[str, dict[str, object]]:
    return {k: v for k, v in study.user_attrs.items() if k.startswith(CONFIRM_RUN_PREFIX)}


# --------------------------------------------------------------------------- confirm, finetune, report


def test_confirm_table_csv_attr_winner_then_finetune_and_report(study_dir: Path) -> None:
    proc = run_cli(
        "confirm", "tiny", "--device", "cpu", cwd=study_dir, check=0
    )  # top 2, 2 seeds: the config's
    study = _load(study_dir)
    top = _top(study, 2)
    lines = _run_lines(proc.stdout)
    assert [line.split(":")[0] for line in lines] == ["run 1/4", "run 2/4", "run 3/4", "run 4/4"]
    assert [int(line.split("trial ")[1].split()[0]) for line in lines] == [top[0], top[0], top[1], top[1]]

    rows = _csv(study_dir)
    assert [int(r["trial"]) for r in rows] == top and [r["study_rank"] for r in rows] == ["1", "2"]
    runs = _run_attrs(study)
    assert len(runs) == 4
    for r in rows:
        trial = study.trials[int(r["trial"])]
        assert float(r["study_value"]) == trial.value and int(r["c1"]) == trial.params["c1"]
        values = [float(v) for v in r["values"].split(";")]
        recorded = [runs[f"{CONFIRM_RUN_PREFIX}{trial.number}:seed{i}"]["value"] for i in range(2)]
        assert values == pytest.approx(recorded, abs=1e-6) and r["n"] == "2" and r["mode"] == "seeds"
        assert float(r["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert float(r["std"]) == pytest.approx(statistics.stdev(values), abs=1e-6)
        seeds = {runs[f"{CONFIRM_RUN_PREFIX}{trial.number}:seed{i}"]["seed"] for i in range(2)}
        assert len(seeds) == 2 and trial.number not in seeds  # new seeds, not the trial's own
    means = {int(r["trial"]): float(r["mean"]) for r in rows}
    winner = max(means, key=lambda n: (means[n], -top.index(n)))
    assert [r["winner"] for r in rows] == [str(int(r["trial"]) == winner) for r in rows]

    summary = study.user_attrs["confirm"]
    assert summary["winner"] == winner and summary["mode"] == "seeds" and summary["seeds"] == 2
    assert [row["trial"] for row in summary["rows"]] == top
    assert summary["study_best"] == top[0]
    assert isinstance(summary["beyond_noise"], bool) and summary["noise_std"] > 0
    assert len(json.dumps(summary)) < 1024  # the dashboard shows attributes cut at 1024 characters
    table = [line for line in proc.stdout.splitlines() if "<- confirmed winner" in line]
    assert len(table) == 1 and table[0].split()[0] == str(winner)
    assert f"{means[winner]:.4f} ± " in table[0]
    assert f"confirm: trial {winner} is the confirmed winner" in proc.stdout

    ft = run_cli("finetune", "tiny", "--epochs", "1", "--device", "cpu", cwd=study_dir, check=0)
    assert f"starting from trial {winner}, the confirmed winner of `search confirm`" in ft.stdout
    metrics = json.loads((study_dir / "storage" / "finetune" / "tiny" / "metrics.json").read_text())
    assert metrics["trial"] == winner and "confirmed winner" in metrics["started_from"]

    report = run_cli("report", "tiny", cwd=study_dir, check=0)
    differ = "differ" if summary["beyond_noise"] else "do not differ"
    assert f"the top trials {differ} by more than the seed noise" in report.stdout
    saved = json.loads((study_dir / "storage" / "reports" / "tiny" / "summary.json").read_text())
    assert saved["confirm"]["winner"] == winner
    assert saved["confirm"]["beyond_noise"] == summary["beyond_noise"]

    other = top[1] if winner == top[0] else top[0]
    ft = run_cli("finetune", "tiny", "--trial", str(other), "--epochs", "1", "--device", "cpu", cwd=study_dir)
    assert ft.returncode == 0, ft.stderr
    assert f"starting from trial {other} (--trial)" in ft.stdout
    metrics = json.loads((study_dir / "storage" / "finetune" / "tiny" / "metrics.json").read_text())
    assert metrics["trial"] == other


def test_verdict_compares_the_lead_with_the_seed_noise() -> None:
    s = ConfirmSettings(top=2, seeds=3, folds=0)
    params = {"c1": 8, "c2": 8, "l1": 16, "lr": 0.01, "batch_size": 64}
    close = [
        ConfirmRow(1, 1, params, 0.95, [0.90, 0.92, 0.94], 0),
        ConfirmRow(2, 2, params, 0.93, [0.91, 0.93, 0.95], 0),
    ]
    v = verdict(close, close[1], s)
    # pooled std 0.02; 2 standard errors of a difference of two 3-run means: 2 * 0.02 * sqrt(2/3)
    assert v["noise_std"] == pytest.approx(0.02, abs=1e-6)  # stored rounded to 6 digits
    assert v["threshold"] == pytest.approx(0.04 * math.sqrt(2 / 3), abs=1e-6)
    assert v["lead"] == pytest.approx(0.01, abs=1e-6) and v["beyond_noise"] is False
    assert (
        "trial 2 is the confirmed winner" in v["verdict"] and "the study's best was trial 1" in v["verdict"]
    )
    assert "do not differ by more than the seed noise" in v["verdict"]
    apart = [close[0], ConfirmRow(2, 2, params, 0.93, [0.80, 0.82, 0.84], 0)]
    assert verdict(apart, apart[0], s)["beyond_noise"] is True
    single = [ConfirmRow(r.trial, r.rank, params, r.study_value, r.values[:1], 0) for r in close]
    assert "seed noise is not measured" in verdict(single, single[1], s)["verdict"]


def test_a_run_with_the_trials_own_seed_reproduces_its_value(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-training goes exactly as in the study: with the trial's own seed it gives the trial's value."""
    monkeypatch.chdir(study_dir)
    study = _load(study_dir)
    cfg = study_config(study)
    data = _datasets(cfg, ConfirmSettings(top=1, seeds=1, folds=0), torch.device("cpu"))[0]
    best = study.best_trial
    recipe = rebuild(study, best)  # the one recipe: the study's config, the trial's params, its data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study's CLI process trained (OMP_NUM_THREADS=1)
    try:
        value, _, epochs_run, _ = _train_once(recipe, data, cfg.seed + best.number, lambda: False)
    finally:
        torch.set_num_threads(threads)
    assert value == best.value and epochs_run == best.user_attrs["epochs_run"]


def test_folds(study_dir: Path) -> None:
    proc = run_cli("confirm", "tiny", "--top", "2", "--folds", "3", "--device", "cpu", cwd=study_dir, check=0)
    lines = _run_lines(proc.stdout)
    assert len(lines) == 6 and [line.split(": ")[1].split()[-1] for line in lines[:3]] == [
        "1/3",
        "2/3",
        "3/3",
    ]
    rows = _csv(study_dir)
    assert [r["n"] for r in rows] == ["3", "3"] and {r["mode"] for r in rows} == {"folds"}
    study = _load(study_dir)
    runs = _run_attrs(study)
    assert sorted(runs) == sorted(
        f"{CONFIRM_RUN_PREFIX}{n}:fold{i}of3" for n in _top(study, 2) for i in range(3)
    )
    assert study.user_attrs["confirm"]["folds"] == 3 and "noise between folds" in proc.stdout


def test_ctrl_c_stops_cleanly_and_a_rerun_continues(study_dir: Path) -> None:
    args = ("confirm", "tiny", "--top", "2", "--seeds", "3", "--device", "cpu")
    proc = popen_cli(*args, cwd=study_dir)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("run 1/6"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = _run_attrs(_load(study_dir))
    assert 1 <= len(runs) < 6
    assert f"interrupted with {len(runs)}/6 runs recorded; run the same command again" in out
    assert not (study_dir / "storage" / "reports" / "tiny" / "confirm.csv").exists()

    again = run_cli(*args, cwd=study_dir, check=0)
    lines = _run_lines(again.stdout)
    assert [line.split(":")[0] for line in lines] == [f"run {k}/6" for k in range(len(runs) + 1, 7)]
    study = _load(study_dir)
    after = _run_attrs(study)
    assert len(after) == 6 and all(after[k] == v for k, v in runs.items())  # finished runs were kept
    assert [r["n"] for r in _csv(study_dir)] == ["3", "3"]


# --------------------------------------------------------------------------- warm start


def test_warm_start_enqueues_the_source_top_trials_once(study_dir: Path) -> None:
    source = _load(study_dir)
    top = _top(source, 2)
    raw = tiny_config(name="warm")
    write_config(study_dir / "warm.yaml", raw)
    ws = ("--warm-start", "tiny", "--warm-start-top", "2", "--device", "cpu")
    first = run_cli("run", "warm.yaml", "--n-trials", "3", *ws, cwd=study_dir, check=0)
    assert "warm start from tiny: enqueued 2 trial(s)" in first.stdout
    second = run_cli("run", "warm.yaml", "--n-trials", "4", *ws, cwd=study_dir, check=0)
    assert "enqueued 0 trial(s), 2 enqueued by an earlier run" in second.stdout

    warm = _load(study_dir, "warm")
    tagged = [t for t in warm.get_trials() if WARM_START_ATTR in t.user_attrs]
    assert [t.user_attrs[WARM_START_ATTR] for t in tagged] == [f"tiny#{n}" for n in top]
    assert [t.number for t in tagged] == [0, 1]  # before any sampled trial
    for t, n in zip(tagged, top, strict=True):
        assert t.params == source.trials[n].params and t.state == TrialState.COMPLETE
    assert len(warm.get_trials(states=(TrialState.COMPLETE,))) == 4


def test_warm_start_skips_sets_outside_this_space(study_dir: Path) -> None:
    source = _load(study_dir)
    first, second = (source.trials[n].params["lr"] for n in _top(source, 2))
    middle = math.sqrt(first * second)  # a range holding the best trial's lr but not the second's
    lr = {"low": middle, "high": 1e-2} if first > second else {"low": 1e-3, "high": middle}
    raw = tiny_config(name="narrow")
    raw["search"]["space"] = {**raw["search"]["space"], "lr": {**lr, "log": True}}
    write_config(study_dir / "narrow.yaml", raw)
    args = ("--warm-start", "tiny", "--warm-start-top", "2", "--n-trials", "1", "--device", "cpu")
    proc = run_cli("run", "narrow.yaml", *args, cwd=study_dir, check=0)
    best, runner_up = _top(source, 2)
    assert f"skipped tiny#{runner_up} (lr=" in proc.stderr and "outside [" in proc.stderr
    assert "enqueued 1 trial(s)" in proc.stdout and "skipped 1 outside this space" in proc.stdout
    (only,) = _load(study_dir, "narrow").get_trials()
    assert only.user_attrs[WARM_START_ATTR] == f"tiny#{best}"


def test_warm_start_plans_dotted_parameters(tmp_path: Path) -> None:
    """A source trial's searched config fields are enqueued when this space has them, skipped
    (with the reason) when their value lies outside it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from search.config import to_dict
    from search.study.warmstart import plan_warm_start

    url = f"sqlite:///{tmp_path}/src.db"
    space = {
        "train.optimizer": {"choices": ["adam", "adamw"]},
        "train.weight_decay": {"low": 1e-5, "high": 1e-2},
    }
    source_cfg = config_from_dict(
        {"name": "src", "search": {"space": {**tiny_config()["search"]["space"], **space}}}
    )
    src = optuna.create_study(study_name="src", storage=url, direction="maximize")
    src.set_user_attr("config", to_dict(source_cfg))
    dists = {name: FloatDistribution(1e-3, 1e-2, log=True) for name in ("lr",)}
    dists |= {
        name: CategoricalDistribution([c])
        for name, c in (("c1", 4), ("c2", 8), ("l1", 16), ("batch_size", 64))
    }
    dists |= {
        "train.optimizer": CategoricalDistribution(["adam", "adamw"]),
        "train.weight_decay": FloatDistribution(1e-5, 1e-2),
    }
    for value, optimizer in ((0.9, "adamw"), (0.8, "adam")):
        params = {"lr": 2e-3, "c1": 4, "c2": 8, "l1": 16, "batch_size": 64}
        params |= {"train.optimizer": optimizer, "train.weight_decay": 1e-3}
        src.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    here = {**tiny_config()["search"]["space"], "train.optimizer": {"choices": ["adam", "sgd"]}}
    here["train.weight_decay"] = {"low": 1e-4, "high": 1e-2, "log": True}
    plan = plan_warm_start(config_from_dict({"name": "dst", "search": {"space": here}}), "src", url, 2)
    assert [n for n, _ in plan.candidates] == [1]
    (_, params), ((skipped, why),) = plan.candidates[0], plan.skipped
    assert params["train.optimizer"] == "adam" and params["train.weight_decay"] == pytest.approx(1e-3)
    assert skipped == 0 and "train.optimizer='adamw' is not in this space" in why


# --------------------------------------------------------------------------- bad input


def test_bad_input(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(study_dir)
    assert main(["confirm", "tiny", "--folds", "1", "--device", "cpu"]) == 2
    assert "error: --folds: must be 0 (new seeds on the study's split) or at least 2 (got 1). Fix:" in (
        capsys.readouterr().err
    )
    assert main(["confirm", "tiny", "--seeds", "0"]) == 2
    assert "error: --seeds: must be >= 1 (got 0)" in capsys.readouterr().err
    assert main(["confirm", "nosuch"]) == 2
    assert "no study named 'nosuch'" in capsys.readouterr().err
    assert "confirm" not in _load(study_dir).user_attrs

    write_config(study_dir / "new.yaml", tiny_config(name="new"))
    assert main(["run", "new.yaml", "--warm-start", "nosuch", "--device", "cpu"]) == 2
    assert "no study named 'nosuch'" in capsys.readouterr().err
    assert main(["run", "new.yaml", "--warm-start", "tiny", "--warm-start-top", "0"]) == 2
    assert "error: --warm-start-top: must be >= 1 (got 0)" in capsys.readouterr().err
    assert main(["run", "new.yaml", "--study-name", "tiny", "--warm-start", "tiny"]) == 2
    assert "cannot warm-start from itself" in capsys.readouterr().err
    assert "new" not in optuna.get_all_study_names(DB)  # nothing created


def test_config_section(tmp_path: Path) -> None:
    cfg = config_from_dict({})
    assert (cfg.confirm.top, cfg.confirm.seeds, cfg.confirm.folds) == (3, 3, 0)
    path = write_config(tmp_path / "c.yaml", tiny_config(confirm={"top": 2, "folds": 5}))
    assert load_config(path).confirm.folds == 5
    with pytest.raises(ConfigError, match=r"^confirm\.top: must be >= 1 \(got 0\)\. Fix: "):
        config_from_dict({"confirm": {"top": 0}})
    with pytest.raises(ConfigError, match=r"^confirm\.folds: "):
        config_from_dict({"confirm": {"folds": 1}})


def test_confirm_csv_has_the_searched_config_fields(tmp_path: Path) -> None:
    space = {**tiny_config()["search"]["space"], "train.optimizer": {"choices": ["adam", "sgd"]}}
    cfg = tiny_config(train={"epochs": 1}, search={**tiny_config()["search"], "n_trials": 2, "space": space})
    write_config(tmp_path / "tiny.yaml", cfg)
    run_cli("run", "tiny.yaml", "--device", "cpu", cwd=tmp_path, check=0)
    run_cli("confirm", "tiny", "--top", "2", "--seeds", "1", "--device", "cpu", cwd=tmp_path, check=0)
    rows = _csv(tmp_path)
    assert list(rows[0])[2:9] == [*PARAM_NAMES, "train.optimizer", "study_value"]
    study = _load(tmp_path)
    assert [r["train.optimizer"] for r in rows] == [
        study.trials[int(r["trial"])].params["train.optimizer"] for r in rows
    ]


def test_more_folds_than_the_smallest_class_holds_exits_2_with_the_numbers(tmp_path: Path) -> None:
    """20 images of 2 classes (issue 26 row 16): 12 folds would validate some folds on one class
    alone, on folds of 1-2 images: refused before any training; 5 folds run, with a warning."""
    data = {"dataset": "synthetic", "synthetic": {"shape": [1, 8, 8], "n_classes": 2, "n_samples": 20}}
    search = {**tiny_config()["search"], "n_trials": 1}
    write_config(
        tmp_path / "few.yaml", tiny_config(data=data, train={"epochs": 1, "patience": 1}, search=search)
    )
    run_cli("run", "few.yaml", "--device", "cpu", cwd=tmp_path, check=0)
    proc = run_cli("confirm", "tiny", "--folds", "12", "--top", "1", "--device", "cpu", cwd=tmp_path, check=2)
    assert (
        "error: --folds: more folds than the " in proc.stderr and "train+val image(s) of class" in proc.stderr
    )
    assert "folds would validate without it, on folds of 1-2 images" in proc.stderr
    assert "Fix: use --folds " in proc.stderr and "Traceback" not in proc.stderr
    assert "confirm" not in _load(tmp_path).user_attrs and not (tmp_path / "storage" / "reports").exists()
    proc = run_cli("confirm", "tiny", "--folds", "3", "--top", "1", "--device", "cpu", cwd=tmp_path, check=0)
    assert "--folds 3: each fold validates on only 5-6 of the 16 train+val images" in proc.stderr
