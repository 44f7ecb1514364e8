"""``search create``: the study a run would create (or the one it would resume), and no trial.

A cluster's first step: one job checks the config and the data and creates the study, then
many ``search worker`` jobs join it. :func:`create_study` runs exactly the preparation of
:func:`search.study.run.run_study` (the data loaded and checked, the resume check, the study
opened with its config and data facts, trial 0 enqueued), so a study made here is the one
``search run`` would have made, and an existing one must match as it must for ``run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna

from search.config import StudyConfig
from search.store.records import CONFIG_ATTR
from search.study.run import RunOptions, prepare_study
from search.study.study import finished_count
from search.study.workers import StopRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Created:
    """What :func:`create_study` found or made."""

    name: str
    existed: bool  # the study was there already (and matches the config)
    finished: int  # finished trials in it
    n_trials: int  # the total its workers run to (the stored config's search.n_trials)


def create_study(cfg: StudyConfig, *, fresh: bool = False) -> Created:
    """Create study ``cfg.name`` as ``search run`` would (data checked, trial 0 enqueued) without
    running a trial, or check that the existing one was started with the same experiment
    (``fresh``: archive it and start over, as ``search run --fresh``).

    Raises:
        InputError: ConfigError, DataError, StorageError, or ResumeConflict naming what differs.
    """
    prepared = prepare_study(cfg, RunOptions(device="cpu", fresh=fresh), StopRequest())
    study, existed = prepared.study, prepared.existed
    n_trials = _stored_total(study, cfg.search.n_trials)
    existed = existed and not fresh
    if existed and n_trials != cfg.search.n_trials:
        log.warning(
            "study %s keeps its stored total of %d trials (search.n_trials %d here changes nothing in it). "
            "Fix: pass --n-trials %d to `search worker`",
            cfg.name,
            n_trials,
            cfg.search.n_trials,
            cfg.search.n_trials,
        )
    return Created(cfg.name, existed, finished_count(study), n_trials)


def _stored_total(study: optuna.Study, default: int) -> int:
    """The ``search.n_trials`` of the config stored on the study (what ``search worker`` runs to)."""
    stored: Any = study.user_attrs.get(CONFIG_ATTR)
    total = stored.get("search", {}).get("n_trials") if isinstance(stored, dict) else None
    return total if isinstance(total, int) else default
