"""Reading a finished or running study back: open it, its stored config, its best feasible trials.

The one reader of a stored config (user attr ``config``, written by ``search run``); report, export,
confirm, finetune, warm start and the app go through it.
"""

from __future__ import annotations

import math

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, StudyConfig, config_from_dict
from search.store.records import CONFIG_ATTR
from search.store.storage import load_study, make_storage
from search.study.budgets import is_feasible
from search.study.pareto import accuracy, front, is_pareto


def open_existing(study_name: str, storage: str | BaseStorage) -> optuna.Study:
    """Load an existing study (StorageError when the storage or the study is not there)."""
    if isinstance(storage, str):
        storage = make_storage(storage, create=False, heartbeat=False)
    return load_study(study_name, storage)  # type: ignore[arg-type]


def study_config(study: optuna.Study) -> StudyConfig:
    """The config the study was started with (stored on the study by ``search run``)."""
    raw = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(raw, dict):
        raise ConfigError(
            "config",
            study.study_name,
            "this study has no stored config (it was not created by `search run`)",
            "run the study with `search run CONFIG`",
        )
    return config_from_dict(raw)


def budgets_of(study: optuna.Study) -> dict[str, float]:
    """The study's set budgets (``search.constraints`` of its stored config), e.g. {"max_params": 1e5}."""
    raw = study.user_attrs.get(CONFIG_ATTR)
    section = raw.get("search", {}).get("constraints", {}) if isinstance(raw, dict) else {}
    return {k: v for k, v in section.items() if v is not None} if isinstance(section, dict) else {}


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE trials within the study's budgets, best first (ties: lower number first).

    In a two-objective study the Pareto front's members come first (the most accurate first, so
    the first is :func:`search.study.budgets.best_trial`), then the other trials by accuracy.
    """
    on_front = {t.number for t in front(study)} if is_pareto(study) else set()
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (value := accuracy(t)) is not None and math.isfinite(value) and is_feasible(t)
    ]
    done.sort(key=lambda t: (t.number not in on_front, -float(accuracy(t) or 0.0), t.number))
    return done[:k]
