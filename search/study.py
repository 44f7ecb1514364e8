"""Studies on Optuna's RDB storage: storage, sampler and pruner factories, create / resume / run.

SQLite (the default, one machine) gets WAL mode and a 60 s busy timeout so several processes and
the dashboard can share it; a PostgreSQL URL lets workers on many machines join one study.
Heartbeats are on, so a killed worker's trial is marked FAIL and re-queued. ``search.n_trials``
counts the study's total over all runs and workers. This module logs; it never prints.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.event
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, SearchConfig, StudyConfig, default_of, mask_url, to_dict
from search.dashboard import save_config_note
from search.failures import FailureBudget
from search.space import grid_values

log = logging.getLogger(__name__)

CONFIG_ATTR = "config"
DATA_ATTR = "data"
METRIC_NAME = "val_accuracy"  # the one objective: accuracy on the validation split
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_INTERVAL_S: int = default_of(SearchConfig, "heartbeat_interval_s")
GRACE_PERIOD_S: int = default_of(SearchConfig, "grace_period_s")
MAX_RETRY: int = default_of(SearchConfig, "max_retry")
SQLITE_TIMEOUT_S = 60


class StorageError(ValueError):
    """A storage URL that cannot be opened, or a study that is not there."""


__all__ = ["StorageError", "mask_url"]  # mask_url lives in config (the lowest floor); re-exported


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password (if any) replaced by ``***``, wherever it appears."""
    masked = mask_url(url)
    if masked == url:
        return text
    head = masked.split("***@", 1)[0]
    password = url[len(head) : url.rfind("@", len(head))]
    return text.replace(url, masked).replace(password, "***") if password else text


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other databases or in-memory)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_storage(
    url: str,
    *,
    create: bool = True,
    heartbeat: bool = True,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
) -> RDBStorage:
    """Open (and with ``create``, create) the RDB storage at ``url``.

    With ``heartbeat``, running trials record a heartbeat every ``heartbeat_interval_s``; one
    silent for ``grace_period_s`` is failed by the next worker that starts a trial and re-queued
    (at most ``max_retry`` times per original trial).
    """
    engine_kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        if not db.exists():
            if not create:
                raise StorageError(
                    f"no study storage at {db}. Fix: run `search run CONFIG` first, "
                    "or pass --storage with the right URL"
                )
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the storage folder {db.parent} ({exc.strerror or exc}). "
                    "Fix: pass --storage with a sqlite:/// path in a writable folder"
                ) from exc
        _check_sqlite_file(db, writable=create)
        _sqlite_wal(db)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry, inherit_intermediate_values=True
            )
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
        raise StorageError(scrub(f"cannot open storage {mask_url(url)}: {exc}", url)) from exc
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


OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def _check_sqlite_file(db: Path, *, writable: bool) -> None:
    """StorageError unless ``db`` is absent, empty, or an SQLite file holding Optuna's tables;
    with ``writable``, also unless its folder (and the file) can be written."""
    fix = "Fix: pass --storage sqlite:///path/to/another.db (a new file is created)"
    if db.exists() and not db.is_file():
        raise StorageError(f"storage {db} is not a file. {fix}")
    if writable:
        for path in (db.parent, db) if db.exists() else (db.parent,):
            if not os.access(path, os.W_OK):
                raise StorageError(
                    f"storage {path} is read-only: a study cannot record its trials there. "
                    f"Fix: make it writable, or {fix[5:]}"
                )
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"storage {db} is not an SQLite database ({exc}). {fix}") from exc
    if tables and not OPTUNA_TABLES.issubset(tables):
        raise StorageError(
            f"storage {db} is an SQLite database but not an Optuna one (tables: "
            f"{', '.join(sorted(tables)[:5])}). {fix}"
        )


def storage_for(cfg: StudyConfig, url: str | None = None, *, create: bool = True) -> RDBStorage:
    """The storage of ``cfg`` (or ``url``) with the config's heartbeat and retry settings."""
    return make_storage(
        url or cfg.storage,
        create=create,
        heartbeat_interval_s=cfg.search.heartbeat_interval_s,
        grace_period_s=cfg.search.grace_period_s,
        max_retry=cfg.search.max_retry,
    )


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
    seed = (cfg.seed + seed_offset) % 2**32  # numpy seeds are 0..2**32-1; seed + offset may pass it
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
    if study.metric_names is None:  # the dashboard's plots and best-trial card name the objective
        with warnings.catch_warnings():  # experimental since optuna 3.2, still the public API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    if CONFIG_ATTR not in study.user_attrs:
        stored = {**to_dict(cfg), "storage": mask_url(cfg.storage)}
        study.set_user_attr(CONFIG_ATTR, stored)
        save_config_note(study, stored)  # the dashboard shows attrs cut at 1024 chars
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
    budget: FailureBudget | None = None,
) -> int:
    """Run trials until the study holds ``search.n_trials`` finished ones (or the timeout).

    Failed trials do not count as finished; ``budget`` (default: one from
    ``search.max_failures``) stops the run after too many. Returns how many trials this call started.
    """
    if budget is None:
        budget = FailureBudget.for_run(cfg.search.max_failures, cfg.search.n_trials)
    remaining = cfg.search.n_trials - finished_count(study)
    if remaining <= 0:
        log.info("study %s already has %d finished trials", study.study_name, cfg.search.n_trials)
        return 0
    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        objective,
        n_trials=remaining,
        timeout=cfg.search.timeout_s,
        callbacks=[MaxTrialsCallback(cfg.search.n_trials, states=FINISHED_STATES), *callbacks, budget],
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


# --------------------------------------------------------------------------- faults: retry, stale trials

FAIL_REASON_ATTR = "fail_reason"


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, max_retry: int) -> bool:
    """Re-queue a failed trial as WAITING with its params, the way Optuna's heartbeat retry does.

    The new trial carries ``failed_trial`` / ``retry_history`` system attrs (so
    ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` finds the original and the objective
    finds the checkpoint to resume) and the intermediate values; not the failure reason.
    Returns False when the trial was already retried ``max_retry`` times.
    """
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    if len(system_attrs["retry_history"]) > max_retry:
        log.warning("trial %d was retried %d times already; not again", trial.number, max_retry)
        return False
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
            intermediate_values=trial.intermediate_values,
        )
    )
    return True


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial as ``search status`` shows it."""

    number: int
    trial_id: int
    host: str
    pid: int | None
    device: str
    started: datetime | None
    age_s: float | None  # since the trial started
    heartbeat_age_s: float | None  # None: no heartbeat recorded (yet, or a worker without heartbeats)
    stale: bool


def running_trials(
    study: optuna.Study,
    storage: RDBStorage,
    grace_period_s: float,
    trials: Sequence[FrozenTrial] | None = None,
) -> list[RunningTrial]:
    """The RUNNING trials among ``trials`` (default: the study's) with host/pid/device and heartbeat age.

    Stale: no heartbeat for ``grace_period_s``, or none at all and started longer ago than that.
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if t.state == TrialState.RUNNING]
    db_now, beats = _heartbeats(storage, [t._trial_id for t in trials])
    now = datetime.now()  # Optuna stores datetime_start as naive local time
    out = []
    for t in trials:
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else None
        beat = beats.get(t._trial_id)
        hb_age = None if beat is None else max(0.0, (db_now - beat).total_seconds())
        stale = hb_age > grace_period_s if hb_age is not None else age is not None and age > grace_period_s
        pid = t.user_attrs.get("pid")
        out.append(
            RunningTrial(
                number=t.number,
                trial_id=t._trial_id,
                host=str(t.user_attrs.get("host", "?")),
                pid=int(pid) if pid is not None else None,
                device=str(t.user_attrs.get("device", "?")),
                started=t.datetime_start,
                age_s=age,
                heartbeat_age_s=hb_age,
                stale=stale,
            )
        )
    return out


def _heartbeats(storage: RDBStorage, trial_ids: list[int]) -> tuple[datetime, dict[int, datetime]]:
    """The database's clock and the last heartbeat of each of ``trial_ids`` that has one."""
    from optuna.storages._rdb.models import TrialHeartbeatModel

    with storage.engine.connect() as conn:
        db_now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = []
        if trial_ids:
            rows = list(
                conn.execute(
                    sqlalchemy.select(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat).where(
                        TrialHeartbeatModel.trial_id.in_(trial_ids)
                    )
                )
            )
    naive = db_now.replace(tzinfo=None)
    return naive, {int(r[0]): r[1].replace(tzinfo=None) for r in rows}


def fail_stale_trials(
    study: optuna.Study, storage: RDBStorage, grace_period_s: float, max_retry: int
) -> list[int]:
    """Mark the study's stale RUNNING trials FAIL (``fail_reason`` "stale") and re-queue them."""
    failed = []
    for rt in running_trials(study, storage, grace_period_s):
        if not rt.stale:
            continue
        try:
            storage.set_trial_user_attr(rt.trial_id, FAIL_REASON_ATTR, "stale")
            if not storage.set_trial_state_values(rt.trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(rt.number)
        enqueue_retry(study, storage.get_trial(rt.trial_id), max_retry)
    return failed
