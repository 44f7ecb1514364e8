"""Budgets: constraint values of a trial's figures, feasibility, the best feasible trial."""

from __future__ import annotations

import optuna
import pytest

from search.config import ConstraintsConfig
from search.study.budgets import best_trial, budget_constraints, is_feasible, over_budget, over_budget_counts
from search.study.stored import top_trials


def test_constraint_values_are_the_relative_excess_over_each_set_budget() -> None:
    both = ConstraintsConfig(max_params=1000, max_latency_ms=2.0)
    values = budget_constraints({"n_params": 1500, "latency_ms": 1.0}, both)
    assert values == pytest.approx({"max_params": 0.5, "max_latency_ms": -0.5})
    assert over_budget({"n_params": 1500, "latency_ms": 1.0}, both) == ["n_params 1500 > max_params 1000"]
    # exactly at the budget fits (Optuna: <= 0 is feasible)
    assert budget_constraints({"n_params": 1000, "latency_ms": 2.0}, both) == {
        "max_params": 0.0,
        "max_latency_ms": 0.0,
    }
    assert over_budget({"n_params": 1000, "latency_ms": 2.5}, both) == ["latency_ms 2.5 > max_latency_ms 2"]
    # a budget left null gives no value; a figure not measured (latency skipped) neither
    assert budget_constraints({"n_params": 5, "latency_ms": 9.0}, ConstraintsConfig(max_params=10)) == {
        "max_params": -0.5
    }
    assert budget_constraints({"n_params": 5000}, both) == {"max_params": 4.0}
    assert budget_constraints({"n_params": 5000}, ConstraintsConfig()) == {}


def _tell(study: optuna.Study, value: float, **constraints: float) -> None:
    trial = study.ask()
    for key, v in constraints.items():
        trial.set_constraint(key, v)
    study.tell(trial, value)


def test_best_trial_is_the_best_feasible_one_even_when_an_infeasible_one_scores_higher() -> None:
    study = optuna.create_study(direction="maximize")
    assert best_trial(study) is None
    _tell(study, 0.99, max_params=0.5)  # over budget, highest value
    assert best_trial(study) is None  # no feasible trial: none, not the infeasible one
    _tell(study, 0.70, max_params=-0.1)
    _tell(study, 0.80, max_params=0.0)  # at the budget: feasible
    best = best_trial(study)
    assert best is not None and best.number == 2 and best.value == 0.80
    assert [is_feasible(t) for t in study.trials] == [False, True, True]
    assert [t.number for t in top_trials(study, 3)] == [2, 1]  # confirm's top trials skip it too
    assert over_budget_counts(study.trials) == {"max_params": 1}


def test_best_trial_of_an_unconstrained_study_is_the_best_complete_one() -> None:
    study = optuna.create_study(direction="maximize")
    _tell(study, 0.5)
    _tell(study, 0.6)
    best = best_trial(study)
    assert best is not None and best.number == 1 and is_feasible(best)
    assert over_budget_counts(study.trials) == {}
