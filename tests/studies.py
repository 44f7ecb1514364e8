"""Tiny real studies for the results tests (report, export, finetune), built in-process once per module."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.config import config_from_dict
from search.study.run import RunOptions, run_study
from search.study.study import make_storage
from tests.conftest import CIFAR_SAMPLE, tiny_config


def db_url(root: Path) -> str:
    return f"sqlite:///{root}/storage/studies.db"


def study_config(root: Path, **sections: Any) -> dict[str, Any]:
    """tiny_config with absolute storage paths under ``root`` (works from any working directory)."""
    cfg = tiny_config(**sections)
    cfg["storage"] = db_url(root)
    cfg["artifacts_dir"] = str(root / "storage" / "artifacts")
    cfg["data"] = {"cache_dir": str(root / "storage" / "data" / "cache"), **cfg["data"]}
    return cfg


def cifar_sample_config(root: Path, **sections: Any) -> dict[str, Any]:
    base = {
        "name": "sample",
        "data": {"dataset": "imagefolder", "root": str(CIFAR_SAMPLE), "augment": {"hflip": True}},
        "model": {"padding": 1},
        "train": {"epochs": 1, "patience": 1},
    }
    merged = {**base, **sections}
    return study_config(root, **merged)


def build_study(raw: dict[str, Any]) -> optuna.Study:
    """Run the study described by ``raw`` on the CPU, as `search run` does."""
    cfg = config_from_dict(raw)
    run_study(cfg, RunOptions(device="cpu"))
    return optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage))


def fake_trial(
    number: int,
    state: TrialState,
    value: float | None,
    params: dict[str, float],
    seconds: float,
    epochs_run: int,
    **attrs: Any,
) -> FrozenTrial:
    """A finished trial with a known duration and per-epoch values (no training)."""
    start = datetime(2026, 1, 1, 12, 0, 0) + timedelta(minutes=number)
    dists: dict[str, Any] = {
        name: FloatDistribution(1e-4, 1e-1, log=True) if name == "lr" else IntDistribution(1, 512)
        for name in params
    }
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        values=None,
        datetime_start=start,
        datetime_complete=start + timedelta(seconds=seconds),
        params=params,
        distributions=dists,
        user_attrs={"epochs_run": epochs_run, "device": "cpu", **attrs},
        system_attrs={},
        intermediate_values={e: 0.1 * e for e in range(1, epochs_run + 1)},
        trial_id=number,
    )
