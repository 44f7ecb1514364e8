"""Studies on Optuna's RDB storage: storage, sampler and pruner factories, create / resume / run.

SQLite (the default, one machine) gets WAL mode and a 60 s busy timeout so several processes and
the dashboard can share it; a PostgreSQL URL lets workers on many machines join one study.
Heartbeats are on, so a killed worker's trial is marked FAIL and re-queued. ``search.n_trials``
counts the study's total over all runs and workers. This module logs; it never prints.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sqlite3
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.event
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, StudyConfig, to_dict
from search.space import grid_values

log = logging.getLogger(__name__)

CONFIG_ATTR = "config"
DATA_ATTR = "data"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 60
SQLITE_TIMEOUT_S = 60


class StorageError(ValueError):
    """A storage URL that cannot be opened, or a study that is not there."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and tables)."""
    return re.sub(r"(://[^/:@]+:)[^@/]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other databases or in-memory)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_storage(url: str, *, create: bool = True, heartbeat: bool = True) -> RDBStorage:
    """Open (and with ``create``, create) the RDB storage at ``url``."""
    engine_kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        if not db.exists():
            if not create:
                raise StorageError(
                    f"no study storage at {db}. Fix: run `search run CONFIG` first, "
                    "or pass --storage with the right URL"
                )
            db.parent.mkdir(parents=True, exist_ok=True)
        _sqlite_wal(db)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(max_retry=3)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {exc}") from exc
    if db is not None:
        _sqlite_fast_commits(storage.engine)
    return storage


def _sqlite_fast_commits(engine: sqlalchemy.engine.Engine) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection: with WAL, a commit no longer waits for an
    fsync (the WAL is synced at checkpoints), which cuts a trial's storage time several-fold. A
    killed process loses nothing; only a power cut or OS crash may lose the last commits, never
    the database."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener reconnect with it


def _sqlite_wal(db: Path) -> None:
    """WAL lets readers (the dashboard, `status`) work while a trial writes. Persistent per file."""
    try:
        with sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{db} is not a usable SQLite database ({exc})") from exc


def make_sampler(cfg: StudyConfig, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; missing optional dependencies fail here, before any trial."""
    s = cfg.search.sampler
    seed = cfg.seed + seed_offset
    startup: dict[str, Any] = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **startup)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid_values(cfg.search.space), seed=seed)  # type: ignore[arg-type]
    if s.name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if s.name == "cmaes":
        _require("cmaes", "search.sampler.name", s.name)
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if s.name == "gp":
        _require("scipy", "search.sampler.name", s.name)
        return optuna.samplers.GPSampler(seed=seed, **startup)
    raise ConfigError("search.sampler.name", s.name, "unknown sampler", "see `search validate`")


def _require(module: str, field: str, value: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            field,
            value,
            f"this sampler needs the package {module!r}",
            f"pip install {module}, or pick another sampler",
        )


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.search.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=cfg.train.epochs,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def open_study(
    cfg: StudyConfig,
    storage: RDBStorage,
    data_attrs: dict[str, Any] | None = None,
    seed_offset: int = 0,
) -> optuna.Study:
    """Create the study, or resume it if it exists; the config is stored on the study."""
    pruner = make_pruner(cfg)
    sampler = make_sampler(cfg)  # checks dependencies before touching the storage
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    n_existing = len(study.get_trials(deepcopy=False))
    if n_existing:
        # A resumed study must not replay the first run's random draws.
        study.sampler = make_sampler(cfg, seed_offset=seed_offset + n_existing)
        log.info("resuming study %s (%d trials so far)", cfg.name, n_existing)
    elif seed_offset:
        study.sampler = make_sampler(cfg, seed_offset=seed_offset)
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(CONFIG_ATTR, to_dict(cfg))
    if data_attrs is not None and DATA_ATTR not in study.user_attrs:
        study.set_user_attr(DATA_ATTR, data_attrs)
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def run_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    cfg: StudyConfig,
    *,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> int:
    """Run trials until the study holds ``search.n_trials`` finished ones (or the timeout).

    Returns how many trials this call started.
    """
    remaining = cfg.search.n_trials - finished_count(study)
    if remaining <= 0:
        log.info("study %s already has %d finished trials", study.study_name, cfg.search.n_trials)
        return 0
    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        objective,
        n_trials=remaining,
        timeout=cfg.search.timeout_s,
        callbacks=[MaxTrialsCallback(cfg.search.n_trials, states=FINISHED_STATES), *callbacks],
        gc_after_trial=False,
    )
    return len(study.get_trials(deepcopy=False)) - before


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts.get(state.name, 0) for state in TrialState}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None when the study has none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def load_study(name: str, storage: RDBStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise StorageError(f"no study named {name!r} in this storage (studies: {names})") from exc
