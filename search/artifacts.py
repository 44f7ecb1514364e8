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
