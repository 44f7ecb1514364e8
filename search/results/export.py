"""``search export``: a finished trial, or the study's fine-tuned model, as one self-contained folder.

:func:`export_trial` rebuilds a trial with its :class:`TrialRecipe` and best-epoch weights and writes
an export folder (``best.pt``, ``config.json``, ``README.md``; see :mod:`search.results.export_folder`)
to ``storage/exports/<study>/trial-<n>/``. :func:`export_finetuned` copies the folder ``search
finetune`` wrote (itself an export folder, with its test figures) to
``storage/exports/<study>/finetuned/``. Loading and predicting are re-exported from
:mod:`search.results.export_folder`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from search.config import ConfigError, StudyConfig, config_from_dict
from search.engine.augment import BatchTransform
from search.engine.data import load_splits, printable_name
from search.engine.device import resolve_precision
from search.engine.model import count_parameters
from search.engine.onnx_model import require_onnx
from search.results.export_folder import (
    CARD_FILE,
    CONFIG_FILE,
    ExportError,
    build_from_config,
    export_config,
    load_export,
    load_images,
    model_card,
    predict_files,
    predict_tensor,
    read_export_config,
    unwritable,
    write_export_folder,
)
from search.results.finetune import default_finetune_dir
from search.results.onnx_check import MAX_CHECK_IMAGES, ONNX_FILE, OnnxCheck, export_onnx
from search.store.records import FINETUNE_ATTR
from search.study.recipe import load_trial

__all__ = [  # loading and predicting live in export_folder; callers of `export` find them here too
    "ExportError",
    "build_from_config",
    "load_export",
    "load_images",
    "predict_files",
    "predict_tensor",
    "read_export_config",
]

log = logging.getLogger(__name__)

FINETUNED_DIR = "finetuned"  # storage/exports/<study>/finetuned/: `search export STUDY --finetuned`


def default_export_dir(study_name: str, trial_number: int | None) -> Path:
    """``storage/exports/<study>/trial-<n>/``, or ``.../finetuned/`` for the fine-tuned model (None)."""
    name = FINETUNED_DIR if trial_number is None else f"trial-{trial_number}"
    return Path("storage") / "exports" / study_name / name


@dataclass
class Export:
    out: Path
    trial: int
    config: dict[str, Any]
    onnx: OnnxCheck | None = None

    @property
    def finetuned(self) -> bool:
        return isinstance(self.config.get("finetune"), Mapping)

    def line(self) -> str:
        """What ``search export`` prints."""
        what = f"the fine-tuned model of trial {self.trial}" if self.finetuned else f"trial {self.trial}"
        figures = f"val accuracy {self.config['val_accuracy']:.4f}"
        if self.finetuned:
            figures += f", test accuracy {self.config['finetune']['test']['accuracy']:.4f}"
        done = f"exported {what} ({figures}) to {self.out}"
        return done if self.onnx is None else f"{done}\n{self.onnx.line()}"


def export_trial(
    study: optuna.Study,
    cfg: StudyConfig,
    number: int | None = None,
    out: str | Path | None = None,
    *,
    onnx: bool = False,
) -> Export:
    """Write best.pt, config.json and README.md for trial ``number`` (default: the best trial);
    with ``onnx`` also model.onnx, checked against torch on the validation images
    (:func:`search.results.onnx_check.export_onnx`; its figures in config.json and the card).

    Everything is built and checked first (the weights fit the model, the graph agrees with
    torch), then written atomically (:func:`write_export_folder`): an error leaves no half-written
    export.

    Raises:
        ExportError: no such completed trial, its weights are gone or unusable, or the folder
            cannot be written.
        OnnxUnavailable: ``onnx`` without the ``[onnx]`` extra (before anything is loaded).
        RunFailure: the graph's logits do not match torch's.
    """
    if onnx:
        require_onnx("search export --onnx")
    rebuilt = load_trial(study, number, cfg)
    config = export_config(study.study_name, rebuilt.trial, rebuilt.recipe)
    recipe = rebuilt.recipe
    graph, check = _onnx_of(rebuilt.model, recipe.input_transform(), recipe.cfg) if onnx else (None, None)
    if check is not None:
        config["onnx"] = check.to_dict()
    folder = Path(out) if out is not None else default_export_dir(study.study_name, rebuilt.trial.number)
    card = model_card(config, count_parameters(rebuilt.model), printable_name(str(folder)))
    write_export_folder(folder, rebuilt.model.state_dict(), config, card, graph)
    log.info("exported trial %d of %s to %s", rebuilt.trial.number, study.study_name, folder)
    if isinstance(study.user_attrs.get(FINETUNE_ATTR), Mapping):
        log.info(
            "study %s also has a fine-tuned model: `search export %s --finetuned` exports that one",
            study.study_name,
            study.study_name,
        )
    return Export(folder, rebuilt.trial.number, config, check)


def _onnx_of(model: nn.Module, transform: BatchTransform, cfg: StudyConfig) -> tuple[bytes, OnnxCheck]:
    """``model`` as ONNX, checked on the validation images of ``cfg`` (the trial's config) in the
    precision it trained in (``cfg.train.precision``, pinned when the trial was rebuilt)."""
    val = load_splits(cfg.data, cfg.seed).val
    images = val.chunk(0, min(len(val), MAX_CHECK_IMAGES))
    precision = resolve_precision(cfg.train, torch.device("cpu"))
    return export_onnx(model, transform, images, precision)


def finetuned_folder(study: optuna.Study) -> Path:
    """The export folder ``search finetune`` wrote for ``study`` (ExportError when there is none)."""
    name = study.study_name
    summary = study.user_attrs.get(FINETUNE_ATTR)
    if not isinstance(summary, Mapping):
        raise ExportError(
            f"study {name!r} has no fine-tuned model yet. Fix: run `search finetune {name}` first"
        )
    recorded = Path(str(summary.get("out") or default_finetune_dir(name)))
    for folder in dict.fromkeys([recorded, default_finetune_dir(name)]):
        if (folder / "config.json").is_file():
            return folder
    raise ExportError(
        f"the fine-tuned model of study {name!r} is not in {recorded} (no config.json there: the "
        f"folder was moved, or it was written before fine-tune folders were export folders). "
        f"Fix: run `search finetune {name}` again"
    )


def export_finetuned(
    study: optuna.Study, out: str | Path | None = None, *, trial: int | None = None, onnx: bool = False
) -> Export:
    """Copy the study's fine-tune folder (an export folder) to ``out`` (default
    ``storage/exports/<study>/finetuned/``); its model card then names the new folder. With
    ``onnx``, the copy also gets model.onnx, checked as :func:`export_trial` checks it.

    Raises:
        ExportError: no fine-tune yet, a broken fine-tune folder, ``trial`` given, or the copy
            cannot be written.
        OnnxUnavailable, RunFailure: as :func:`export_trial`'s.
    """
    if trial is not None:
        raise ExportError(
            "--trial: not with --finetuned (the fine-tuned model is the one `search finetune` made; "
            "its own --trial picks where it starts). Fix: leave out --trial"
        )
    if onnx:
        require_onnx("search export --onnx")
    source = finetuned_folder(study)
    model, transform, config = load_export(source)  # a complete, loadable folder before anything is copied
    folder = Path(out) if out is not None else default_export_dir(study.study_name, None)
    if folder.resolve() == source.resolve():
        if onnx:
            raise ExportError(f"--out: {folder} is the fine-tune folder itself. Fix: pass another --out")
        return Export(folder, int(config["trial"]), config)
    graph, check = _onnx_of(model, transform, _trial_config(config, source)) if onnx else (None, None)
    if check is not None:
        config["onnx"] = check.to_dict()
    card = model_card(config, count_parameters(model), printable_name(str(folder)))
    _copy_folder(source, folder, card, (config, graph) if graph is not None else None)
    log.info("exported the fine-tuned model of %s (%s) to %s", study.study_name, source, folder)
    return Export(folder, int(config["trial"]), config, check)


def _copy_folder(source: Path, folder: Path, card: str, onnx: tuple[Mapping[str, Any], bytes] | None) -> None:
    """``source`` copied to ``folder`` (replacing it) with ``card`` as its model card; with ``onnx``
    (the config with its ``onnx`` entry, the graph) also model.onnx and that config.json. Built in
    a temp folder beside it and renamed into place."""
    temp = folder.parent / f".{folder.name}.tmp"
    try:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.copytree(source, temp)
        (temp / CARD_FILE).write_text(card, encoding="utf-8")
        if onnx is not None:
            (temp / ONNX_FILE).write_bytes(onnx[1])
            text = json.dumps(onnx[0], indent=2, ensure_ascii=False) + "\n"
            (temp / CONFIG_FILE).write_text(text, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        temp.rename(folder)
    except OSError as exc:
        raise unwritable(folder, exc) from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _trial_config(config: Mapping[str, Any], folder: Path) -> StudyConfig:
    """The trial's config an export folder's config.json records (its data: the images to check on)."""
    try:
        return config_from_dict(config["config"])
    except (KeyError, ConfigError) as exc:
        raise ExportError(
            f"{folder / CONFIG_FILE} records no usable study config ({exc}). Fix: run `search finetune` again"
        ) from exc
