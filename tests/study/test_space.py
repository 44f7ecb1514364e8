from __future__ import annotations

import optuna
import pytest

from search.config import config_from_dict
from search.study.space import grid_size, grid_values, params_of, suggest


def _space(**params: object) -> dict:
    return config_from_dict({"search": {"space": params}}).search.space


def test_suggest_respects_ranges_types_and_fixed_values() -> None:
    space = _space(
        c1={"choices": [8, 16]},
        c2={"low": 16, "high": 64, "step": 16},
        l1={"low": 32, "high": 256, "log": True},
        lr=0.002,
        batch_size={"choices": [32]},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(30):
        trial = study.ask()
        p = suggest(trial, space)
        assert p["c1"] in (8, 16) and isinstance(p["c1"], int)
        assert p["c2"] in (16, 32, 48, 64)
        assert 32 <= p["l1"] <= 256 and isinstance(p["l1"], int)
        assert p["lr"] == pytest.approx(0.002)
        assert p["batch_size"] == 32
        assert "lr" not in trial.params  # fixed values are not sampled
        study.tell(trial, 0.0)
    assert {t.params["c2"] for t in study.trials} == {16, 32, 48, 64}


def test_params_of_rebuilds_the_five_parameters() -> None:
    space = _space(lr=0.01, c1={"choices": [8, 16]})
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    sampled = suggest(trial, space)
    study.tell(trial, 1.0)
    assert params_of(study.best_trial.params, space) == sampled


def test_params_of_reports_missing_parameter() -> None:
    with pytest.raises(KeyError, match="c1"):
        params_of({}, _space())


def test_grid_values_enumerate_steps_and_skip_fixed() -> None:
    space = _space(
        c1={"choices": [48, 96]},
        c2={"low": 16, "high": 64, "step": 16},
        l1={"choices": [256]},
        lr=0.001,
        batch_size=512,
    )
    assert grid_values(space) == {"c1": [48, 96], "c2": [16, 32, 48, 64], "l1": [256]}
    assert grid_size(space) == 8


def test_grid_sampler_visits_every_point_once() -> None:
    space = _space(
        c1={"choices": [48, 96]},
        c2={"choices": [96, 192]},
        l1={"choices": [256, 512]},
        lr=0.001,
        batch_size=512,
    )
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_values(space), seed=0))
    study.optimize(lambda t: float(sum(suggest(t, space).values())), n_trials=20)
    seen = {(t.params["c1"], t.params["c2"], t.params["l1"]) for t in study.trials}
    assert len(study.trials) == 8 and len(seen) == 8


def test_dotted_parameters_are_sampled_under_their_path() -> None:
    space = _space(
        lr=0.001,
        **{
            "train.optimizer": {"choices": ["adam", "sgd"]},
            "train.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
            "train.patience": {"low": 1, "high": 3},
            "data.augment.rotate_deg": {"choices": [0, 10]},
            "data.augment.hflip": True,
        },
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(12):
        trial = study.ask()
        p = suggest(trial, space)
        assert p["train.optimizer"] in ("adam", "sgd")
        assert 1e-6 <= p["train.weight_decay"] <= 1e-2  # type: ignore[operator]
        assert p["train.patience"] in (1, 2, 3) and isinstance(p["train.patience"], int)
        assert p["data.augment.rotate_deg"] in (0.0, 10.0) and p["data.augment.hflip"] is True
        assert set(trial.params) == {
            "c1",
            "c2",
            "l1",
            "batch_size",
            "train.optimizer",
            "train.weight_decay",
            "train.patience",
            "data.augment.rotate_deg",
        }  # the Optuna name is the dotted path; fixed values are not sampled
        study.tell(trial, 0.0)
        assert params_of(study.trials[-1].params, space) == p
    dist = study.trials[0].distributions
    assert isinstance(dist["train.weight_decay"], optuna.distributions.FloatDistribution)
    assert isinstance(dist["train.patience"], optuna.distributions.IntDistribution)
    assert {t.params["train.optimizer"] for t in study.trials} == {"adam", "sgd"}


def test_grid_values_take_dotted_finite_sets() -> None:
    space = _space(
        c1={"choices": [8]},
        c2={"choices": [16]},
        l1={"choices": [32]},
        lr=0.001,
        batch_size=64,
        **{
            "train.optimizer": {"choices": ["adam", "sgd"]},
            "train.patience": {"low": 1, "high": 3},
            "train.label_smoothing": {"low": 0.0, "high": 0.2, "step": 0.1},
        },
    )
    grid = grid_values(space)
    assert grid["train.optimizer"] == ["adam", "sgd"] and grid["train.patience"] == [1, 2, 3]
    assert grid["train.label_smoothing"] == pytest.approx([0.0, 0.1, 0.2])
    assert grid_size(space) == 18
