"""The artifact store under ``storage/artifacts/``: each kept trial's best weights.

Weights are uploaded as Optuna artifacts (``FileSystemArtifactStore``), so optuna-dashboard lists
them per trial when started with ``--artifact-dir``. Only the top-k finished trials keep their
weights; a trial beaten out of the top-k has its file deleted (its artifact entry remains in the
study, :meth:`WeightStore.exists` says whether the file is still there). Weights load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

log = logging.getLogger(__name__)

WEIGHTS_ATTR = "weights_artifact_id"
MIMETYPE = "application/octet-stream"


class WeightStore:
    """Save, load and delete trial weights in an artifact directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._store: FileSystemArtifactStore | None = None

    @property
    def store(self) -> FileSystemArtifactStore:
        """The Optuna artifact store; its directory is created on first use, not before."""
        if self._store is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._store = FileSystemArtifactStore(str(self.root))
        return self._store

    def save(self, study_or_trial: Any, state_dict: Mapping[str, torch.Tensor], filename: str) -> str:
        """Upload ``state_dict`` as ``filename`` attached to a trial or study; returns the artifact id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            torch.save(dict(state_dict), path)
            return upload_artifact(
                artifact_store=self.store,
                file_path=str(path),
                study_or_trial=study_or_trial,
                mimetype=MIMETYPE,
            )

    def load(self, artifact_id: str) -> dict[str, torch.Tensor]:
        """The state_dict stored under ``artifact_id`` (FileNotFoundError if it was removed)."""
        try:
            with self.store.open_reader(artifact_id) as reader:
                buf = io.BytesIO(reader.read())
        except ArtifactNotFound as exc:
            raise FileNotFoundError(f"weights artifact {artifact_id} is not in {self.root}") from exc
        state: dict[str, torch.Tensor] = torch.load(buf, weights_only=True, map_location="cpu")
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
            log.info("removed %d weights file(s) beaten out of the top %d", len(removed), k)
        return removed


class CheckpointStore:
    """Per-epoch checkpoints of running trials: ``<root>/<study>/trial-<number>.pt``.

    A trial writes its checkpoint after every epoch (atomically: temp file, then rename) and
    removes it when it finishes; a retried trial (after a killed worker or an interrupt) loads
    the checkpoint of the attempt it repeats and continues from the next epoch. With workers
    on several machines the root must be a shared directory.
    """

    def __init__(self, root: str | Path, study_name: str) -> None:
        self.dir = Path(root) / study_name

    def path(self, trial_number: int) -> Path:
        return self.dir / f"trial-{trial_number}.pt"

    def save(self, trial_number: int, state: Mapping[str, Any]) -> Path:
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        final = self.path(trial_number)
        tmp = final.with_suffix(".pt.tmp")
        for attempt in range(2):  # another worker may remove the (empty) folder before we write
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_bytes(buffer.getbuffer())
                break
            except FileNotFoundError:
                if attempt:
                    raise
        tmp.replace(final)
        return final

    def load(self, trial_number: int) -> dict[str, Any] | None:
        """The checkpoint of ``trial_number`` on the CPU, or None when there is none (or it is unreadable)."""
        path = self.path(trial_number)
        if not path.is_file():
            return None
        try:
            state: dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu")
        except (OSError, RuntimeError, EOFError) as exc:
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
            return None
        return state

    def remove(self, *trial_numbers: int) -> None:
        for number in trial_numbers:
            self.path(number).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the study's folder goes once empty (not empty: kept)
            self.dir.rmdir()
