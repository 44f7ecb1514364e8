from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.config import SAMPLERS, ConfigError, ModelConfig, config_from_dict, to_dict
from search.engine.model import ConvNet, check_input_size
from search.store.artifacts import WEIGHTS_ATTR, WeightStore
from search.study.objective import Objective
from search.study.run import RunOptions, run_study
from search.study.study import (
    CONFIG_ATTR,
    DATA_ATTR,
    StorageError,
    finished_count,
    make_pruner,
    make_sampler,
    make_storage,
    mask_url,
    open_study,
    sqlite_path,
)
from tests.conftest import tiny_config
from tests.studies import build_study, study_config


def _cfg(tmp: Path, **sections: object):  # type: ignore[no-untyped-def]
    raw = tiny_config(**sections)
    raw["storage"] = f"sqlite:///{tmp}/studies.db"
    raw["artifacts_dir"] = str(tmp / "artifacts")
    raw["data"] = {**raw["data"], "cache_dir": str(tmp / "cache")}
    return config_from_dict(raw)


def _run(cfg):  # type: ignore[no-untyped-def]
    run_study(cfg, RunOptions(device="cpu"))
    return optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage))


def test_study_records_attrs_weights_and_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, search={**tiny_config()["search"], "n_trials": 4, "keep_top_k": 2})
    study = _run(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    for t in trials:
        assert {"best_epoch", "epochs_run", "images_per_s", "n_params", "stop_reason"} <= set(t.user_attrs)
        assert 1 <= t.user_attrs["best_epoch"] <= t.user_attrs["epochs_run"] <= 2
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
    assert study.user_attrs[CONFIG_ATTR] == to_dict(cfg)
    assert study.user_attrs[DATA_ATTR]["in_shape"] == [1, 8, 8]
    # only the top 2 trials keep a weights file, and those files reload into the trial's model
    store = WeightStore(cfg.artifacts_dir)
    ranked = sorted(trials, key=lambda t: t.value, reverse=True)
    kept = [t for t in trials if WEIGHTS_ATTR in t.user_attrs and store.exists(t.user_attrs[WEIGHTS_ATTR])]
    assert len(kept) == 2 and {t.value for t in kept} <= {t.value for t in ranked[:3]}
    assert len([p for p in Path(cfg.artifacts_dir).iterdir() if p.is_file()]) == 2
    best = kept[0]
    model = ConvNet(ModelConfig(padding=1), (best.params["c1"], 8, 16), (1, 8, 8), 10)
    model.load_state_dict(store.load(best.user_attrs[WEIGHTS_ATTR]))


def test_resume_finishes_the_remainder(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    study = _run(cfg)
    assert finished_count(study) == 3
    # a second run of the same config starts nothing; raising n_trials runs only the difference
    assert run_study(cfg, RunOptions(objective=Objective(cfg, torch.device("cpu"), None))).started == 0
    bigger = config_from_dict({**to_dict(cfg), "search": {**to_dict(cfg)["search"], "n_trials": 5}})
    study = _run(bigger)
    assert finished_count(study) == 5 and len(study.trials) == 5


def test_median_pruner_prunes_bad_trials(tmp_path: Path) -> None:
    search = {
        **tiny_config()["search"],
        "n_trials": 4,
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        "space": {"c1": 8, "c2": 8, "l1": 16, "batch_size": 64, "lr": {"choices": [3e-3, 1e-7]}},
    }
    cfg = _cfg(tmp_path, search=search, train={"epochs": 3, "patience": 3})
    objective = Objective(cfg, torch.device("cpu"), None)
    study = open_study(cfg, make_storage(cfg.storage))
    for lr in (3e-3, 3e-3, 1e-7, 1e-7):  # two good trials set the median, two hopeless ones follow
        study.enqueue_trial({"lr": lr})
    run_study(cfg, RunOptions(objective=objective))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs["pruned_at_epoch"] == 1 and list(t.intermediate_values) == [1]
        # pruned trials keep the figures the report shows, as complete ones do
        assert t.user_attrs["stop_reason"] == "pruned at epoch 1"
        assert t.user_attrs["best_epoch"] == 1 and t.user_attrs["epochs_run"] == 1
        assert t.user_attrs["images_per_s"] > 0 and t.user_attrs["train_seconds"] > 0


def test_nan_trial_fails_and_study_goes_on(tmp_path: Path) -> None:
    search = {
        **tiny_config()["search"],
        "n_trials": 2,
        "sampler": {"name": "grid"},
        "space": {"c1": 8, "c2": 8, "l1": 16, "batch_size": 64, "lr": {"choices": [1e6, 3e-3]}},
    }
    study = _run(_cfg(tmp_path, search=search, train={"epochs": 3}))
    failed = study.get_trials(states=(TrialState.FAIL,))
    # The run replaces failed trials until the total; the grid's only other point fails again.
    assert failed and all(t.user_attrs["fail_reason"].startswith("nan_loss at epoch") for t in failed)
    assert all(t.params["lr"] == 1e6 for t in failed)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1


def test_input_too_small_is_a_config_error_before_any_study(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"padding": 0})
    with pytest.raises(ConfigError, match="at least 9x9"):
        Objective(cfg, torch.device("cpu"), None)
    assert not (tmp_path / "studies.db").exists()
    with pytest.raises(ConfigError, match=r"model\.padding"):
        check_input_size(ModelConfig(padding=0), (1, 8, 8))


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "qmc", "gp"])
def test_samplers_build(tmp_path: Path, name: str) -> None:
    space = {
        "c1": {"choices": [4, 8]},
        "c2": {"choices": [8]},
        "l1": {"choices": [16]},
        "lr": {"choices": [1e-3]},
        "batch_size": {"choices": [32]},
    }
    cfg = _cfg(tmp_path, search={"sampler": {"name": name}, "space": space})
    assert isinstance(make_sampler(cfg), optuna.samplers.BaseSampler)
    # the largest seed plus the trial number (each trial's sampler seed) stays a valid numpy seed
    top = _cfg(tmp_path, seed=2**32 - 1, search={"sampler": {"name": name}, "space": space})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(top))
    study.optimize(lambda t: float(t.suggest_categorical("c1", [4, 8])), n_trials=2)
    assert len(study.trials) == 2


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("percentile", optuna.pruners.PercentilePruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners_build(tmp_path: Path, name: str, cls: type) -> None:
    assert isinstance(make_pruner(_cfg(tmp_path, search={"pruner": {"name": name}})), cls)


def test_cmaes_without_its_package_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "cmaes" else real(n, *a))
    with pytest.raises(ConfigError, match="pip install cmaes"):
        make_sampler(_cfg(tmp_path, search={"sampler": {"name": "cmaes"}}))


def test_storage_helpers(tmp_path: Path) -> None:
    assert mask_url("postgresql+psycopg://bob:s3cret@db:5432/x") == "postgresql+psycopg://bob:***@db:5432/x"
    assert mask_url("sqlite:///storage/studies.db") == "sqlite:///storage/studies.db"
    assert sqlite_path("sqlite:///storage/studies.db") == Path("storage/studies.db")
    assert sqlite_path("postgresql://h/db") is None
    with pytest.raises(StorageError, match="no study storage"):
        make_storage(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    not_db = tmp_path / "notes.db"
    not_db.write_text("hello, not a database\n" * 100)
    with pytest.raises(StorageError):
        make_storage(f"sqlite:///{not_db}")


def test_sqlite_storage_uses_wal(tmp_path: Path) -> None:
    import sqlite3

    make_storage(f"sqlite:///{tmp_path}/s.db")
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_documented_sampler_runs_a_trial(sampler: str, tmp_path: Path) -> None:
    """Each choice works after `pip install -e .` (its packages are dependencies)."""
    space = {
        "c1": {"choices": [4, 8]},
        "c2": {"choices": [8]},
        "l1": {"choices": [16]},
        "lr": {"choices": [1.0e-3, 1.0e-2]},
        "batch_size": {"choices": [64]},
    }
    raw = study_config(
        tmp_path,
        train={"epochs": 1, "patience": 1},
        search={**tiny_config()["search"], "n_trials": 1, "sampler": {"name": sampler}, "space": space},
    )
    study = build_study(raw)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and 0.0 < trial.value <= 1.0


def _space_objective(cfg):  # type: ignore[no-untyped-def]
    from search.study.space import suggest

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg.search.space)
        return float(params["lr"])

    return objective


def test_sobol_startup_draws_the_first_trials_from_one_qmc_sequence(tmp_path: Path) -> None:
    space = {**tiny_config()["search"]["space"], "l1": {"low": 16, "high": 64}}
    cfg = _cfg(
        tmp_path,
        search={"sampler": {"name": "tpe", "startup": "sobol", "n_startup_trials": 3}, "space": space},
    )
    ours = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    ours.optimize(_space_objective(cfg), n_trials=5)
    qmc = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=cfg.seed)
    ref = optuna.create_study(direction="maximize", sampler=qmc)
    ref.optimize(_space_objective(cfg), n_trials=5)
    assert [t.params for t in ours.trials[:3]] == [t.params for t in ref.trials[:3]]
    assert ours.trials[3].params != ref.trials[3].params  # then TPE takes over
    random_start = _cfg(tmp_path, search={"sampler": {"name": "tpe", "n_startup_trials": 3}, "space": space})
    plain = optuna.create_study(direction="maximize", sampler=make_sampler(random_start))
    plain.optimize(_space_objective(random_start), n_trials=3)
    assert [t.params for t in plain.trials[1:3]] != [t.params for t in ours.trials[1:3]]


def test_enqueue_default_makes_trial_0_the_log_midpoint(tmp_path: Path) -> None:
    from search.study.space import log_midpoint

    cfg = _cfg(tmp_path, search={"n_trials": 2, "enqueue_default": True})
    _run(cfg)
    study = optuna.load_study(study_name="tiny", storage=cfg.storage)
    mid = {"c1": 4, "c2": 8, "l1": 16, "lr": pytest.approx(10**-2.5), "batch_size": 64}
    assert log_midpoint(cfg.search.space) == mid  # c1 {4, 8}: a tie, the smaller
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == log_midpoint(cfg.search.space) and first.state == TrialState.COMPLETE
    assert first.user_attrs["enqueued"] == "default"
    assert study.trials[1].params != first.params and "enqueued" not in study.trials[1].user_attrs
    # resumed: nothing enqueued again; off: trial 0 is sampled
    _run(config_from_dict({**to_dict(cfg), "search": {**to_dict(cfg)["search"], "n_trials": 3}}))
    study = optuna.load_study(study_name="tiny", storage=cfg.storage)
    assert sum("enqueued" in t.user_attrs for t in study.trials) == 1 and len(study.trials) == 3
    off = _cfg(tmp_path / "off", search={"n_trials": 1, "enqueue_default": False})
    _run(off)
    trial = optuna.load_study(study_name="tiny", storage=off.storage).trials[0]
    assert "enqueued" not in trial.user_attrs


def test_log_midpoint_of_the_default_space() -> None:
    from search.config import DEFAULT_SPACE
    from search.study.space import log_midpoint

    assert log_midpoint(DEFAULT_SPACE) == {"c1": 16, "c2": 32, "l1": 91, "lr": 1e-3, "batch_size": 64}
