"""Fine-tune the best trial FROM its saved weights, then evaluate once on the test split.

The study holds everything needed: its config (user_attr ``config``), its data facts
(``data``: normalisation mean/std) and the best trial's weights in the artifact store; the trial's
:class:`TrialRecipe` rebuilds its net from them. Steps:

1. rebuild the trial's model (:func:`load_trial`) holding its best-epoch weights;
2. measure validation accuracy before any update — on the same seeded split the search used,
   so it equals the trial's value (logged, and recorded as ``start_val_acc``);
3. continue training at ``lr * lr_scale`` with early stopping (``patience``) and keep the best
   epoch, with the trial's own config (its searched ``train.*``/``data.augment.*`` fields
   applied): the same optimizer, and its ``lr_schedule``/``warmup_epochs`` run again over the
   fine-tuning epochs (from lr x lr_scale); if no epoch beats the starting weights, the
   starting weights are kept;
4. only then load the test split and evaluate once. ``storage/finetune/<study>/`` is an export
   folder (``best.pt``, ``config.json`` with a ``finetune`` entry, the model card ``README.md``
   with the test figures: ``search predict`` and ``search app`` take it as it is) plus
   ``metrics.json``, ``per_class.csv``, ``confusion.csv``/``.png``, ``predictions.png``,
   ``filters.png`` and ``final.pt`` (the same weights as ``best.pt``, the name earlier versions
   wrote). The summary goes to the study's user_attr ``finetune``; ``final.pt`` and the
   confusion matrix picture become study artifacts (the dashboard shows them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.artifacts import upload_artifact
from torch import nn

from search.config import ConfigError, FinetuneConfig, StudyConfig, TrainConfig, with_overrides
from search.engine.arch import first_conv
from search.engine.augment import BatchTransform
from search.engine.data import ImageSet, Splits, load_splits, printable_name
from search.engine.device import resolve_precision
from search.engine.evaluate import (
    TestMetrics,
    classification_metrics,
    confusion_frame,
    plot_confusion,
    plot_filters,
    plot_predictions,
)
from search.engine.inference import eval_batch_size, predict_logits, validate
from search.engine.model import count_parameters
from search.engine.stream import place
from search.engine.train import EpochMetrics, FitResult, fit
from search.results.export_folder import export_config, model_card, write_export_folder
from search.store.artifacts import WeightStore, check_writable, save_atomic
from search.store.records import FINETUNE_ATTR
from search.study.pareto import accuracy
from search.study.recipe import RebuiltTrial, TrialRecipe, load_trial

log = logging.getLogger(__name__)

__all__ = ["FINETUNE_ATTR"]  # the study user attr of the summary (search.store.records), re-exported

SEED_OFFSET = 100_003  # fine-tuning's shuffling stream differs from every trial's
FINAL_FILE = "final.pt"  # the fine-tuned weights under their first name (best.pt holds the same)


# Fine-tuning's settings are the config's ``finetune`` section: one declaration, one set of bounds.
FinetuneSettings = FinetuneConfig
_FLAGS = {"epochs": "--epochs", "lr_scale": "--lr-scale", "patience": "--patience"}


def settings(
    cfg: StudyConfig, epochs: int | None, lr_scale: float | None, patience: int | None
) -> FinetuneSettings:
    """The study config's ``finetune`` section with any command-line values applied, validated by
    the same model; an error names the flag that was given (``--epochs``) or the config field."""
    given = {"epochs": epochs, "lr_scale": lr_scale, "patience": patience}
    changes = {f"finetune.{k}": v for k, v in given.items() if v is not None}
    try:
        return with_overrides(cfg, changes).finetune
    except ConfigError as exc:
        key = exc.field.removeprefix("finetune.")
        if given.get(key) is None:
            raise
        raise ConfigError(_FLAGS[key], exc.value, exc.problem, exc.fix) from None


def default_finetune_dir(study_name: str) -> Path:
    return Path("storage") / "finetune" / study_name


@dataclass
class FinetuneResult:
    out: Path
    trial: int
    trial_value: float
    start_val_acc: float
    final_val_acc: float
    best_epoch: int
    epochs_run: int
    test: TestMetrics
    metrics: dict[str, Any]


@dataclass
class _Tuned:
    """The fine-tuning run: the model (in place) holds the kept weights."""

    start_val_acc: float
    final_val_acc: float
    best_epoch: int  # 0: no epoch beat the starting weights, which are kept
    lr: float
    result: FitResult
    transform: BatchTransform
    board: Any  # the run's TensorBoard log, or None


def finetune(
    study: optuna.Study,
    cfg: StudyConfig,
    device: torch.device,
    ft: FinetuneSettings,
    out: str | Path | None = None,
    *,
    trial_number: int | None = None,
    started_from: str | None = None,
    tensorboard: bool = False,
) -> FinetuneResult:
    """Fine-tune trial ``trial_number`` (default: the best) from its weights, then test once.

    Raises:
        ExportError: no such completed trial, or its weights are gone or do not fit.
        UnwritableFolder: the output folder or the artifact folder cannot be written.
    """
    started = time.perf_counter()
    _warn_if_tested_before(study)
    folder = Path(out) if out is not None else default_finetune_dir(study.study_name)
    check_writable({"--out": folder, "artifacts_dir": cfg.artifacts_dir})  # before any training
    rebuilt = load_trial(study, trial_number, cfg)
    recipe = rebuilt.recipe
    splits = load_splits(recipe.cfg.data, recipe.cfg.seed, with_test=True)
    tuned = _tune(study, rebuilt, splits, device, ft, tensorboard)

    # ---- the one and only look at the test split
    assert splits.test is not None
    test = splits.test.to(device)
    metrics, pred, conf = _test_once(study.study_name, rebuilt, tuned, test, splits.classes)
    summary = _summary(study, rebuilt, tuned, ft, metrics, device, folder, started_from)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    provenance = {**summary, "test": metrics.to_dict()}  # the folder's config.json `finetune` entry
    full = {**provenance, "history": [dataclasses.asdict(m) for m in tuned.result.history]}
    final_state = _write_files(folder, study.study_name, rebuilt, provenance, full)
    _write_test_files(
        folder, study.study_name, rebuilt.model, metrics, test, (pred, conf), splits.classes, recipe.cfg.seed
    )
    summary["artifacts"] = _record_on_study(study, cfg, final_state, folder)
    study.set_user_attr(FINETUNE_ATTR, summary)
    trial_value = accuracy(rebuilt.trial)
    assert trial_value is not None
    return FinetuneResult(
        out=folder,
        trial=rebuilt.trial.number,
        trial_value=trial_value,
        start_val_acc=tuned.start_val_acc,
        final_val_acc=tuned.final_val_acc,
        best_epoch=tuned.best_epoch,
        epochs_run=tuned.result.epochs_run,
        test=metrics,
        metrics=full,
    )


def _tune(
    study: optuna.Study,
    rebuilt: RebuiltTrial,
    splits: Splits,
    device: torch.device,
    ft: FinetuneSettings,
    flag: bool,
) -> _Tuned:
    """Measure the loaded weights on the validation split, then continue training them; keeps the
    best epoch, or the starting weights when no epoch beats them."""
    recipe, trial, model = rebuilt.recipe, rebuilt.trial, rebuilt.model
    cfg = recipe.cfg
    model.to(device).to(  # as fit() holds it: same numbers as the trial
        memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    )
    transform = recipe.transform()
    train, val = place(splits.train, splits.val, device, cfg.data.device_budget)  # resident or streamed
    start_acc = _start_accuracy(study, trial, model, val, transform, cfg, recipe.batch_size)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr = recipe.lr * ft.lr_scale
    board = _board(cfg, study, dict(recipe.params), lr, trial.number, flag)
    train_cfg = dataclasses.replace(cfg.train, epochs=ft.epochs, patience=ft.patience)
    result = _fit(model, train, val, recipe, train_cfg, lr, transform, board)
    best_epoch, final_val = result.best_epoch, result.best_val_acc
    if result.best_state is None or not final_val > start_acc:
        log.info("finetune: no epoch beat the starting accuracy %.4f; keeping the trial's weights", start_acc)
        model.load_state_dict(start_state)
        best_epoch, final_val = 0, start_acc
    return _Tuned(start_acc, final_val, best_epoch, lr, result, transform, board)


def _fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    recipe: TrialRecipe,
    train_cfg: TrainConfig,
    lr: float,
    transform: BatchTransform,
    board: Any,
) -> FitResult:
    """The fine-tuning epochs (logged, and written to ``board`` when there is one)."""

    def on_epoch(epoch: int, m: EpochMetrics) -> None:
        if board is not None:
            board.epoch(m)
        log.info(
            "finetune epoch %d: train_loss %.4f val_acc %.4f (%.1fs)",
            epoch,
            m.train_loss,
            m.val_acc,
            m.seconds,
        )

    try:
        return fit(
            model,
            train,
            val,
            lr=lr,
            batch_size=recipe.batch_size,
            cfg=train_cfg,
            transform=transform,
            seed=recipe.cfg.seed + SEED_OFFSET,
            on_epoch=on_epoch,
        )
    except BaseException as exc:  # the run's log still ends with its hparams
        if board is not None:
            board.finish("INTERRUPTED" if isinstance(exc, KeyboardInterrupt) else "FAIL")
        raise


def _summary(
    study: optuna.Study,
    rebuilt: RebuiltTrial,
    tuned: _Tuned,
    ft: FinetuneSettings,
    metrics: TestMetrics,
    device: torch.device,
    folder: Path,
    started_from: str | None,
) -> dict[str, Any]:
    """The study user attr ``finetune`` (also the ``finetune`` entry of the folder's config.json)."""
    trial = rebuilt.trial
    return {
        "study": study.study_name,
        "trial": trial.number,
        "trial_value": accuracy(trial),
        "started_from": started_from or f"trial {trial.number}",
        "params": dict(rebuilt.recipe.params),
        "start_val_acc": tuned.start_val_acc,
        "final_val_acc": tuned.final_val_acc,
        "best_epoch": tuned.best_epoch,
        "epochs_run": tuned.result.epochs_run,
        "stop_reason": tuned.result.stop_reason,
        "lr": tuned.lr,
        "lr_scale": ft.lr_scale,
        "epochs": ft.epochs,
        "patience": ft.patience,
        "device": str(device),
        "test_accuracy": metrics.accuracy,
        "test_macro_f1": metrics.macro_f1,
        "n_test": metrics.n,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "out": str(folder),
    }


def _write_files(
    folder: Path, study_name: str, rebuilt: RebuiltTrial, provenance: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The folder as an export folder (best.pt, config.json with the ``finetune`` entry
    ``provenance``, README.md), plus final.pt and metrics.json; returns the weights."""
    model = rebuilt.model
    final_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = export_config(study_name, rebuilt.trial, rebuilt.recipe)
    config["val_accuracy"] = provenance["final_val_acc"]  # the model this folder holds
    config["finetune"] = provenance
    card = model_card(config, count_parameters(model), printable_name(str(folder)))
    write_export_folder(folder, final_state, config, card)
    save_atomic(final_state, folder / FINAL_FILE)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return final_state


def _test_once(
    study_name: str, rebuilt: RebuiltTrial, tuned: _Tuned, test: ImageSet, classes: Sequence[str]
) -> tuple[TestMetrics, torch.Tensor, torch.Tensor]:
    """The one look at the test split: metrics, predicted classes and their probabilities (logged;
    the TensorBoard run ends with them)."""
    recipe = rebuilt.recipe
    batch_size = eval_batch_size(recipe.cfg.train.eval_batch_size, recipe.batch_size)
    precision = resolve_precision(recipe.cfg.train, test.images.device)  # the trial's (pinned)
    logits = predict_logits(
        rebuilt.model, test.images, tuned.transform, batch_size=batch_size, precision=precision
    )
    conf, pred = logits.softmax(1).max(1)
    metrics = classification_metrics(test.labels, pred, list(classes))
    log.info("finetune %s: test accuracy %.4f on %d images", study_name, metrics.accuracy, metrics.n)
    if tuned.board is not None:
        figures = {
            "start_val_acc": tuned.start_val_acc,
            "test_acc": metrics.accuracy,
            "test_macro_f1": metrics.macro_f1,
        }
        tuned.board.finish("FAIL" if tuned.result.failed else "COMPLETE", tuned.final_val_acc, figures)
    return metrics, pred, conf


def _warn_if_tested_before(study: optuna.Study) -> None:
    previous = study.user_attrs.get(FINETUNE_ATTR)
    if isinstance(previous, dict):
        log.warning(
            "study %s was already fine-tuned and tested (%s, test accuracy %.4f); this run looks at "
            "the test split again, so its test figure is no longer an unbiased estimate",
            study.study_name,
            previous.get("finished_at"),
            previous.get("test_accuracy", float("nan")),
        )


def _board(
    cfg: StudyConfig, study: optuna.Study, params: dict[str, Any], lr: float, trial: int, flag: bool
) -> Any:
    """The finetune run's TensorBoard log (``<tensorboard_dir>/<study>/finetune/``), or None when off."""
    if not (flag or cfg.train.tensorboard):
        return None
    from search.engine.tensorboard import finetune_log, require_tensorboard

    require_tensorboard("--tensorboard" if flag else "train.tensorboard")
    return finetune_log(cfg, study.study_name, params, lr, trial)


def _write_test_files(
    folder: Path,
    study_name: str,
    model: nn.Module,
    metrics: TestMetrics,
    test: ImageSet,
    predicted: tuple[torch.Tensor, torch.Tensor],
    classes: Sequence[str],
    seed: int,
) -> None:
    """confusion.csv/png, per_class.csv, predictions.png (``predicted``: the classes and their
    probabilities), filters.png."""
    pred, conf = predicted
    confusion_frame(metrics).to_csv(folder / "confusion.csv")
    pd.DataFrame(metrics.per_class).to_csv(folder / "per_class.csv", index=False)
    plot_confusion(metrics, folder / "confusion.png", f"{study_name}: test accuracy {metrics.accuracy:.3f}")
    plot_predictions(test.images, test.labels, pred, conf, classes, folder / "predictions.png", seed=seed)
    plot_filters(first_conv(model).weight, folder / "filters.png")


def _start_accuracy(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    model: nn.Module,
    val: ImageSet,
    transform: BatchTransform,
    cfg: StudyConfig,
    batch_size: int,
) -> float:
    """Validation accuracy of the loaded weights, measured as the trial measured it (same eval
    batch, precision and cuDNN settings), so it equals the trial's value; a warning when not."""
    value = accuracy(trial)
    assert value is not None
    _, start_acc = validate(model, val, transform, batch_size=batch_size, cfg=cfg.train)
    log.info(
        "finetune %s: starting from trial %d, validation accuracy %.4f before any update (trial value %.4f)",
        study.study_name,
        trial.number,
        start_acc,
        value,
    )
    differing = round(abs(start_acc - value) * len(val))  # accuracies are counts / len(val)
    if differing:
        log.warning(
            "starting validation accuracy %.4f differs from trial %d's value %.4f by %d of %d images "
            "(different device or data cache?)",
            start_acc,
            trial.number,
            value,
            differing,
            len(val),
        )
    return start_acc


def _record_on_study(
    study: optuna.Study, cfg: StudyConfig, final_state: dict[str, torch.Tensor], folder: Path
) -> dict[str, str]:
    """Upload final.pt and the confusion matrix picture as study artifacts; returns their ids."""
    store = WeightStore(cfg.artifacts_dir)
    ids = {FINAL_FILE: store.save(study, final_state, "finetune-final.pt")}
    ids["confusion.png"] = upload_artifact(
        artifact_store=store.store,
        file_path=str(folder / "confusion.png"),
        study_or_trial=study,
        mimetype="image/png",
    )
    return ids
