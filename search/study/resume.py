"""Resuming a study safely: refuse a changed config, or archive the old study with ``--fresh``.

``search run`` on an existing study continues it, but only when the new config describes the same
experiment as the one stored on the study (user attr ``config``, plus the ``data`` facts): the
same data, model, training and search space. Keys that may change between runs are ignored (see
:data:`RESUMABLE_FIELDS`). ``--fresh`` copies the old study, trials and all, to
``<name>-old-<UTC timestamp>`` and deletes the original, so nothing is ever lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.config import (
    ConfigError,
    StudyConfig,
    config_from_dict,
    locate_data_root,
    mask_url,
    resumable_fields,
    to_dict,
)
from search.errors import InputError
from search.store.artifacts import ensure_checkpoint_key
from search.store.records import CONFIG_ATTR, DATA_ATTR, INIT_FROM_SHA256_KEY

log = logging.getLogger(__name__)

# Config fields (and whole sections) that may differ between runs of one study: declared on the
# config's fields (``x-resumable``), never listed here.
RESUMABLE_FIELDS = resumable_fields()
# Data facts that must match: what the stored weights and trial values were computed on.
DATA_FIELDS = ("in_shape", "classes", INIT_FROM_SHA256_KEY)  # and model.init_from's content


class ResumeConflict(InputError):
    """The study exists but was started with a different experiment."""


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def _resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def _normalised(stored: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored config with today's defaults filled in and a relative data.root made absolute as
    the run that stored it read it (from the working directory), so a study stored with
    ``root: tests/x`` resumes with a config whose root is now found as ``/abs/tests/x`` (as-is
    when it no longer parses)."""
    try:
        return to_dict(locate_data_root(config_from_dict(stored)))
    except ConfigError:
        return stored


def config_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field: stored X, now Y`` for each field that differs and may not change on resume."""
    old_flat, new_flat = _flatten(_normalised(stored)), _flatten(new)
    lines = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if _resumable(key):
            continue
        missing = object()
        old, now = old_flat.get(key, missing), new_flat.get(key, missing)
        if old != now:
            text_old = "(absent)" if old is missing else json.dumps(old)
            text_now = "(absent)" if now is missing else json.dumps(now)
            lines.append(f"{key}: stored {text_old}, now {text_now}")
    return lines


def data_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Differences in the data facts (input shape, class names) a study was started on."""
    return [
        f"data {key}: stored {json.dumps(stored.get(key))}, now {json.dumps(new.get(key))}"
        for key in DATA_FIELDS
        if (key in stored or key in new) and stored.get(key) != new.get(key)
    ]


def archive_name(name: str, existing: set[str]) -> str:
    """``<name>-old-<UTC timestamp>``, with a counter if that is taken."""
    base = f"{name}-old-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate in existing:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def archive_study(storage: BaseStorage, name: str) -> str:
    """Copy study ``name`` (trials, attributes, artifact references) to a new name, then delete
    the original. Returns the new name. The original is deleted only after the copy is checked."""
    new_name = archive_name(name, set(optuna.get_all_study_names(storage)))
    old = optuna.load_study(study_name=name, storage=storage)
    ensure_checkpoint_key(old)  # the copy inherits it: the archive keeps its checkpoints
    n_trials = len(old.get_trials(deepcopy=False))
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=new_name)
    copied = optuna.load_study(study_name=new_name, storage=storage)
    if len(copied.get_trials(deepcopy=False)) != n_trials:  # pragma: no cover - a storage fault
        raise RuntimeError(f"copy of study {name!r} to {new_name!r} is incomplete; original kept")
    optuna.delete_study(study_name=name, storage=storage)
    log.warning("kept the old study %r (%d trials) as %r; starting %r afresh", name, n_trials, new_name, name)
    return new_name


def prepare_resume(
    storage: BaseStorage, cfg: StudyConfig, data_attrs: Mapping[str, Any] | None, *, fresh: bool = False
) -> str | None:
    """Check that study ``cfg.name`` (if it exists) may be resumed with ``cfg``.

    With ``fresh``, an existing study is archived instead (returns its new name). Raises
    ResumeConflict naming each differing field and how to proceed. Creates nothing.
    """
    if cfg.name not in optuna.get_all_study_names(storage):
        return None
    if fresh:
        return archive_study(storage, cfg.name)
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    stored_cfg = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(stored_cfg, Mapping):
        log.warning("study %s has no stored config; resuming without checking it", cfg.name)
        return None
    diffs = config_diff(stored_cfg, to_dict(cfg))
    stored_data = study.user_attrs.get(DATA_ATTR)
    if isinstance(stored_data, Mapping) and data_attrs is not None:
        diffs += data_diff(stored_data, data_attrs)
    if diffs:
        raise ResumeConflict(
            f"study {cfg.name!r} in {mask_url(cfg.storage)} was started with a different "
            f"experiment ({len(diffs)} difference(s): {'; '.join(diffs)}). Fix: to resume it, "
            f"restore those values; to start a new study, pass --study-name NEW_NAME; to start "
            f"over under the same name, pass --fresh (the old study is kept as "
            f"'{cfg.name}-old-<timestamp>')"
        )
    return None
