"""Budgets and the best trial: constraint values of a trial's figures, feasibility, the best feasible trial.

A budget is a ``search.constraints`` field (``max_params``, ``max_latency_ms``) bounding one of a
trial's recorded figures (user attrs ``n_params``, ``latency_ms``). Imports neither torch nor the
storage: ``search status`` uses it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import ConstraintsConfig
from search.store.records import LATENCY_ATTR, N_PARAMS_ATTR
from search.study.pareto import front, is_pareto, most_accurate

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # count toward search.n_trials
# budget (search.constraints field) -> the user attr it bounds
BUDGETS = {"max_params": N_PARAMS_ATTR, "max_latency_ms": LATENCY_ATTR}


def budget_constraints(attrs: Mapping[str, Any], budgets: ConstraintsConfig) -> dict[str, float]:
    """Optuna constraint values of a trial's figures ``attrs`` (user attrs) under ``budgets``.

    One value per set budget whose figure is known: ``figure / budget - 1``, so <= 0 is within
    budget (Optuna's feasibility) and budgets of different units weigh alike in TPE's
    infeasibility score (the sum of the positive values).
    """
    out: dict[str, float] = {}
    for budget, attr in BUDGETS.items():
        limit = getattr(budgets, budget)
        if limit is not None and attrs.get(attr) is not None:
            out[budget] = float(attrs[attr]) / float(limit) - 1.0
    return out


def over_budget(attrs: Mapping[str, Any], budgets: ConstraintsConfig) -> list[str]:
    """``n_params 1234 > max_params 1000`` for each budget ``attrs`` exceeds (empty: within all)."""
    return [
        f"{BUDGETS[budget]} {_figure(attrs[BUDGETS[budget]])} > {budget} {_figure(getattr(budgets, budget))}"
        for budget, value in budget_constraints(attrs, budgets).items()
        if value > 0
    ]


def _figure(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_feasible(trial: FrozenTrial) -> bool:
    """Within every budget: all its Optuna constraint values <= 0 (true for a trial without any)."""
    return all(v <= 0 for v in trial.constraints.values())


def over_budget_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """How many finished trials exceeded each budget (a trial over two counts for both)."""
    counts: Counter[str] = Counter()
    for t in trials:
        if t.state in FINISHED_STATES:
            counts.update(k for k, v in t.constraints.items() if v > 0)
    return dict(counts)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial within the study's budgets, or None when there is none.

    The one place every command (status, report, export, finetune, confirm, warm start, the run
    summary) takes "the best trial" from. In a two-objective study (``search.objectives``) it is
    the most accurate member of the Pareto front (``study.best_trials``, feasible trials only);
    ``--trial N`` picks any other. Optuna's ``study.best_trial`` already skips a trial whose
    constraint values say it is infeasible (and raises ValueError when no feasible trial is
    complete); over-budget trials of ``search run`` end PRUNED anyway, so they never get here.
    """
    if is_pareto(study):
        return most_accurate(front(study))
    try:
        best = study.best_trial
    except ValueError:  # no COMPLETE trial, or none of them feasible
        return None
    return best if is_feasible(best) else None
