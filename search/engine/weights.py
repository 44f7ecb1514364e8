"""``model.init_from``: start a net from a local state_dict file instead of from scratch.

The file is read once with ``torch.load(weights_only=True)`` (:func:`read_init_state`), so a file
carrying pickled code is refused, never run. It may be a plain state_dict (an export's
``best.pt``, or the export folder itself; the artifact store's weights;
``torch.save(model.state_dict(), PATH)`` of e.g. torchvision weights) or a dict that wraps one
under ``model`` / ``state_dict`` / ``model_state_dict`` (a resume checkpoint, many training
scripts' files). :func:`load_matching` loads the tensors whose names and shapes match the net's
and leaves the rest freshly initialised (a classifier for another class count, a stem for other
channels), and says how many of each. Its content hash (:func:`file_sha256`) is part of the
study's experiment. Does not import optuna.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import InputError
from search.store.files import UnreadableFile, load_tensors

EXPORT_WEIGHTS = "best.pt"  # an export folder's weights: the folder may be given instead
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")  # where wrapped files keep the state_dict
FIX = (
    "give a file saved with torch.save(model.state_dict(), PATH) (e.g. an export's best.pt), or set "
    "it to null"
)


class InitFromError(InputError):
    """A ``model.init_from`` file that cannot start a net: unreadable, pickled code, no state_dict,
    or no tensor matching the net (the message names the file)."""


@dataclass(frozen=True)
class InitCounts:
    """How a net was started from the file: tensors loaded, and tensors left freshly initialised."""

    loaded: int
    skipped: int


def init_file(path: str | Path) -> Path:
    """The file ``model.init_from`` names: the path itself, or an export folder's ``best.pt``."""
    folder_weights = Path(path) / EXPORT_WEIGHTS
    return folder_weights if Path(path).is_dir() and folder_weights.is_file() else Path(path)


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex): the init file's identity in the study's experiment."""
    digest = hashlib.sha256()
    with init_file(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return None


def read_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path`` (plain, or wrapped under one of :data:`WRAPPER_KEYS`).

    Raises:
        InitFromError: no such file, an unreadable one, pickled code, or no state_dict of tensors.
    """
    where = f"model.init_from: {path}"
    try:
        obj = load_tensors(init_file(path))
    except UnreadableFile as exc:
        raise InitFromError(f"{where} cannot be used: {exc}. Fix: {FIX}") from exc
    except OSError as exc:
        raise InitFromError(f"{where} cannot be read ({exc.strerror or exc}). Fix: {FIX}") from exc
    state = _tensors(obj)
    if state is None and isinstance(obj, Mapping):
        state = next((s for s in (_tensors(obj.get(k)) for k in WRAPPER_KEYS) if s is not None), None)
    if state is None:
        kind = (
            f"a dict with keys {sorted(map(str, obj))[:6]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise InitFromError(f"{where} holds no state_dict of tensors ({kind}). Fix: {FIX}")
    return state


def matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` whose names and shapes are the net's."""
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> InitCounts:
    """Load the matching tensors of ``state`` into ``model``; the others stay as initialised."""
    match = matching(model, state)
    model.load_state_dict(match, strict=False)
    return InitCounts(len(match), len(model.state_dict()) - len(match))


def no_match_error(path: str | Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> InitFromError:
    """The error for a file none of whose tensors fits the net (names a few of each side)."""
    theirs, ours = list(state)[:3], list(model.state_dict())[:3]
    return InitFromError(
        f"model.init_from: no tensor in {path} matches the net by name and shape (the file has "
        f"{', '.join(theirs)}, ...; the net has {', '.join(ours)}, ...). Fix: give weights of this "
        "architecture (e.g. an export of a study with the same model section), or set it to null"
    )
