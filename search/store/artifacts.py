"""The artifact store under ``storage/artifacts/``: each kept trial's best weights.

Weights are uploaded as Optuna artifacts (``FileSystemArtifactStore``), so optuna-dashboard lists
them per trial when started with ``--artifact-dir``. Only the top-k finished trials keep their
weights; a trial beaten out of the top-k has its file deleted (its artifact entry remains in the
study, :meth:`WeightStore.exists` says whether the file is still there). Weights load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from search.store import files
from search.store.files import (
    STORAGE_ERRNOS,
    UNREADABLE_ERRORS,
    StorageFault,
    UnreadableFile,
    UnwritableFolder,
    check_writable,
    load_tensors,
    save_atomic,
    tensor_bytes,
    unwritable_reason,
    write_atomic,
)
from search.store.records import CHECKPOINT_KEY_ATTR, WEIGHTS_ATTR

__all__ = [  # the file helpers live in search.store.files (no optuna there), the attr names in records
    "CHECKPOINT_KEY_ATTR",
    "STORAGE_ERRNOS",
    "UNREADABLE_ERRORS",
    "WEIGHTS_ATTR",
    "CheckpointStore",
    "StorageFault",
    "UnreadableFile",
    "UnwritableFolder",
    "WeightStore",
    "check_writable",
    "load_tensors",
    "save_atomic",
    "tensor_bytes",
    "unwritable_reason",
    "write_atomic",
]

log = logging.getLogger(__name__)

MIMETYPE = "application/octet-stream"

_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


class _AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, but each artifact is written to a temp file and renamed into
    place: a full disk leaves no half-written weights file (and raises StorageFault)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = root

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self.root / artifact_id
        temp = self.root / f".{artifact_id}.tmp"
        try:
            files._write_file(temp, content_body.read())
            os.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise files._storage_error(final, exc) from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


class WeightStore:
    """Save, load and delete trial weights in an artifact directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._store: FileSystemArtifactStore | None = None

    @property
    def store(self) -> FileSystemArtifactStore:
        """The Optuna artifact store; its directory is created on first use, not before."""
        if self._store is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise files._storage_error(self.root / "-", exc) from exc
            self._store = _AtomicArtifactStore(self.root)
        return self._store

    def save(self, study_or_trial: Any, state_dict: Mapping[str, torch.Tensor], filename: str) -> str:
        """Upload ``state_dict`` as ``filename`` attached to a trial or study; returns the artifact id.

        The upload's source file lives in a hidden temp folder inside the store (one disk, no
        system temp dir), removed whatever happens; a full disk raises StorageFault.
        """
        data = tensor_bytes(dict(state_dict))
        store = self.store
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=self.root) as tmp:
            path = Path(tmp) / filename
            try:
                files._write_file(path, data)
            except OSError as exc:
                raise files._storage_error(self.root / filename, exc) from exc
            return upload_artifact(
                artifact_store=store,
                file_path=str(path),
                study_or_trial=study_or_trial,
                mimetype=MIMETYPE,
            )

    def path(self, artifact_id: str) -> Path:
        return self.root / artifact_id

    def load(self, artifact_id: str) -> dict[str, torch.Tensor]:
        """The state_dict stored under ``artifact_id`` (FileNotFoundError if it was removed,
        UnreadableFile if it is not a plain state_dict)."""
        try:
            with self.store.open_reader(artifact_id) as reader:
                data = reader.read()
        except ArtifactNotFound as exc:
            raise FileNotFoundError(f"weights artifact {artifact_id} is not in {self.root}") from exc
        state = load_tensors(data, self.path(artifact_id))
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UnreadableFile(self.path(artifact_id), TypeError("not a state_dict of tensors"))
        return state

    def exists(self, artifact_id: str) -> bool:
        return (self.root / artifact_id).is_file()

    def remove(self, artifact_id: str) -> None:
        with contextlib.suppress(ArtifactNotFound):
            self.store.remove(artifact_id)

    def keep_top(self, ranked_ids: Iterable[str], k: int) -> list[str]:
        """Delete every artifact in ``ranked_ids`` (best first) after the first ``k``; returns the deleted."""
        removed = []
        for artifact_id in list(ranked_ids)[k:]:
            if self.exists(artifact_id):
                self.remove(artifact_id)
                removed.append(artifact_id)
        if removed:
            # housekeeping after a trial: DEBUG (-v), so the terminal shows only trial lines
            log.debug("removed %d weights file(s) beaten out of the top %d", len(removed), k)
        return removed


# --------------------------------------------------------------------------- checkpoints


def new_checkpoint_key(study_name: str) -> str:
    """A key no other study has: a filesystem-safe form of the name plus a random uuid."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name).lstrip(".")[:80] or "study"
    return f"{safe}-{uuid.uuid4().hex[:12]}"


def ensure_checkpoint_key(study: optuna.Study) -> str:
    """The study's checkpoint key (user attr ``checkpoint_key``), created with the study.

    A new study gets a fresh key, so it never meets the checkpoints of an older study of the
    same name (after ``--fresh`` or a delete and re-create); ``--fresh``'s archived copy keeps
    its key (``copy_study`` copies user attrs) and so its files. A study from before keys existed
    (it has trials but no key) keeps its old folder, named after the study.
    """
    key = study.user_attrs.get(CHECKPOINT_KEY_ATTR)
    if isinstance(key, str):
        return key
    has_trials = bool(study.get_trials(deepcopy=False))
    key = study.study_name if has_trials and _SAFE_KEY.fullmatch(study.study_name) else None
    study.set_user_attr(CHECKPOINT_KEY_ATTR, key or new_checkpoint_key(study.study_name))
    return str(study.user_attrs[CHECKPOINT_KEY_ATTR])  # re-read: a concurrent start may have won


def checkpoint_key(study: optuna.Study) -> str:
    """The checkpoint key stored on ``study`` (created when missing); ValueError if unsafe."""
    key = study.user_attrs.get(CHECKPOINT_KEY_ATTR)
    if not isinstance(key, str):
        key = ensure_checkpoint_key(study)
    if not _SAFE_KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"study {study.study_name!r} has an unsafe {CHECKPOINT_KEY_ATTR} {key!r}")
    return key


class CheckpointStore:
    """Per-epoch checkpoints of running trials: ``<root>/<study key>/trial-<number>.pt``.

    The key (:func:`checkpoint_key`) is unique to the study, not its name, so a new study of an
    old name never resumes from, or deletes, the old study's files. A trial writes its checkpoint
    (atomically: temp file, then rename; the temp file never outlives a failed save) and removes it
    when it finishes; a retried trial (after a killed worker or an interrupt) loads the checkpoint
    of the attempt it repeats and continues from the next epoch; an unreadable checkpoint counts
    as none. With workers on several machines the root must be a shared directory.
    """

    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / key

    @classmethod
    def for_study(cls, root: str | Path, study: optuna.Study) -> CheckpointStore:
        return cls(root, checkpoint_key(study))

    def path(self, trial_number: int) -> Path:
        return self.dir / f"trial-{trial_number}.pt"

    def _tmp(self, trial_number: int) -> Path:
        return self.dir / f"trial-{trial_number}.pt.tmp"

    def save(self, trial_number: int, state: Mapping[str, Any]) -> Path:
        for attempt in range(2):  # another worker may remove the (empty) folder between mkdir and write
            try:
                return save_atomic(dict(state), self.path(trial_number), self._tmp(trial_number))
            except FileNotFoundError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def load(self, trial_number: int) -> dict[str, Any] | None:
        """The checkpoint of ``trial_number`` on the CPU, or None when there is none (or it is unreadable)."""
        path = self.path(trial_number)
        if not path.is_file():
            return None
        try:
            state = load_tensors(path)
        except (UnreadableFile, OSError) as exc:
            log.warning("ignoring unreadable checkpoint %s (%s); the trial starts over", path, exc)
            return None
        if not isinstance(state, dict) or "epoch" not in state:
            log.warning("ignoring checkpoint %s: not a trial checkpoint; the trial starts over", path)
            return None
        return state

    def remove(self, *trial_numbers: int) -> None:
        for number in trial_numbers:
            self.path(number).unlink(missing_ok=True)
            self._tmp(number).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the study's folder goes once empty (not empty: kept)
            self.dir.rmdir()
