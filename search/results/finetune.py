"""Fine-tune the best trial FROM its saved weights, then evaluate once on the test split.

The study holds everything needed: its config (user_attr ``config``), its data facts
(``data``: normalisation mean/std) and the best trial's weights in the artifact store. Steps:

1. rebuild the best trial's model and load its best-epoch weights;
2. measure validation accuracy before any update — on the same seeded split the search used,
   so it equals the trial's value (logged, and recorded as ``start_val_acc``);
3. continue training at ``lr * lr_scale`` with early stopping (``patience``) and keep the best
   epoch, with the trial's own config (its searched ``train.*``/``data.augment.*`` fields
   applied): the same optimizer, and its ``lr_schedule``/``warmup_epochs`` run again over the
   fine-tuning epochs (from lr x lr_scale); if no epoch beats the starting weights, the
   starting weights are kept;
4. only then load the test split and evaluate once: ``metrics.json``, ``per_class.csv``,
   ``confusion.csv``/``.png``, ``predictions.png``, ``filters.png`` and ``final.pt`` under
   ``storage/finetune/<study>/``; the summary goes to the study's user_attr ``finetune`` and
   ``final.pt`` and the confusion matrix picture become study artifacts (the dashboard shows them).
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

from search.config import ConfigError, FinetuneConfig, StudyConfig, trial_config, with_overrides
from search.engine.augment import BatchTransform
from search.engine.data import ImageSet, load_splits
from search.engine.evaluate import (
    TestMetrics,
    classification_metrics,
    confusion_frame,
    plot_confusion,
    plot_filters,
    plot_predictions,
)
from search.engine.model import ConvNet
from search.engine.train import EpochMetrics, eval_batch_size, fit, predict_logits, validate
from search.results.export import load_weights_into, pick_trial, trial_weights
from search.store.artifacts import WeightStore, check_writable, save_atomic
from search.store.storage import DATA_ATTR
from search.study.objective import build_model, make_transform
from search.study.space import params_of

log = logging.getLogger(__name__)

FINETUNE_ATTR = "finetune"
SEED_OFFSET = 100_003  # fine-tuning's shuffling stream differs from every trial's


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


def _stored_normalisation(study: optuna.Study) -> tuple[list[float], list[float]]:
    data = study.user_attrs.get(DATA_ATTR)
    if not isinstance(data, dict) or "mean" not in data:
        raise ConfigError(
            "study",
            study.study_name,
            f"has no stored data facts (user_attr {DATA_ATTR!r})",
            "create the study with `search run`",
        )
    return [float(v) for v in data["mean"]], [float(v) for v in data["std"]]


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
    """Fine-tune trial ``trial_number`` (default: the best) from its weights, then test once."""
    started = time.perf_counter()
    _warn_if_tested_before(study)
    trial = pick_trial(study, trial_number)
    assert trial.value is not None
    folder = Path(out) if out is not None else default_finetune_dir(study.study_name)
    check_writable({"--out": folder, "artifacts_dir": cfg.artifacts_dir})  # before any training
    state = trial_weights(study, trial, cfg)
    # the trial's config: its optimizer, schedule, augmentation, ... (dotted params applied)
    cfg = trial_config(cfg, params := params_of(trial.params, cfg.search.space))
    mean, std = _stored_normalisation(study)
    splits = load_splits(cfg.data, cfg.seed, with_test=True)
    assert splits.test is not None
    model: ConvNet = build_model(cfg, params, splits.in_shape, splits.n_classes)
    load_weights_into(model, state, f"the weights of trial {trial.number}")
    model.to(device).to(  # as fit() holds it: same numbers as the trial
        memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    )
    transform = make_transform(cfg, mean, std)
    train, val = splits.train.to(device), splits.val.to(device)
    batch_size = int(params["batch_size"])
    eval_batch = eval_batch_size(cfg.train.eval_batch_size, batch_size)

    start_acc = _start_accuracy(study, trial, model, val, transform, cfg, batch_size)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr = float(params["lr"]) * ft.lr_scale

    board = _board(cfg, study, params, lr, trial.number, tensorboard)

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

    train_cfg = dataclasses.replace(cfg.train, epochs=ft.epochs, patience=ft.patience)
    try:
        result = fit(
            model,
            train,
            val,
            lr=lr,
            batch_size=batch_size,
            cfg=train_cfg,
            transform=transform,
            seed=cfg.seed + SEED_OFFSET,
            on_epoch=on_epoch,
        )
    except BaseException as exc:  # the run's log still ends with its hparams
        if board is not None:
            board.finish("INTERRUPTED" if isinstance(exc, KeyboardInterrupt) else "FAIL")
        raise
    best_epoch, final_val = result.best_epoch, result.best_val_acc
    if result.best_state is None or not final_val > start_acc:
        log.info("finetune: no epoch beat the starting accuracy %.4f; keeping the trial's weights", start_acc)
        model.load_state_dict(start_state)
        best_epoch, final_val = 0, start_acc

    # ---- the one and only look at the test split
    test = splits.test.to(device)
    metrics, pred, conf = _test_once(model, test, transform, eval_batch, cfg.train.amp, splits.classes)
    log.info("finetune %s: test accuracy %.4f on %d images", study.study_name, metrics.accuracy, metrics.n)
    if board is not None:
        board.finish(
            "FAIL" if result.failed else "COMPLETE",
            final_val,
            {"start_val_acc": start_acc, "test_acc": metrics.accuracy, "test_macro_f1": metrics.macro_f1},
        )

    final_state = _write_test_files(
        folder, study.study_name, model, metrics, test, pred, conf, splits.classes, cfg.seed
    )
    summary = {
        "study": study.study_name,
        "trial": trial.number,
        "trial_value": trial.value,
        "started_from": started_from or f"trial {trial.number}",
        "params": params,
        "start_val_acc": start_acc,
        "final_val_acc": final_val,
        "best_epoch": best_epoch,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "lr": lr,
        "lr_scale": ft.lr_scale,
        "epochs": ft.epochs,
        "patience": ft.patience,
        "device": str(device),
        "test_accuracy": metrics.accuracy,
        "test_macro_f1": metrics.macro_f1,
        "n_test": metrics.n,
        "seconds": round(time.perf_counter() - started, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "out": str(folder),
    }
    full = {**summary, "test": metrics.to_dict(), "history": [dataclasses.asdict(m) for m in result.history]}
    (folder / "metrics.json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    summary["artifacts"] = _record_on_study(study, cfg, final_state, folder)
    study.set_user_attr(FINETUNE_ATTR, summary)
    return FinetuneResult(
        out=folder,
        trial=trial.number,
        trial_value=trial.value,
        start_val_acc=start_acc,
        final_val_acc=final_val,
        best_epoch=best_epoch,
        epochs_run=result.epochs_run,
        test=metrics,
        metrics=full,
    )


def _test_once(
    model: ConvNet,
    test: ImageSet,
    transform: BatchTransform,
    batch_size: int,
    amp: bool,
    classes: Sequence[str],
) -> tuple[TestMetrics, torch.Tensor, torch.Tensor]:
    """The one look at the test split: metrics, predicted classes and their probabilities."""
    logits = predict_logits(model, test.images, transform, batch_size=batch_size, amp=amp)
    conf, pred = logits.softmax(1).max(1)
    return classification_metrics(test.labels, pred, list(classes)), pred, conf


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
    model: ConvNet,
    metrics: TestMetrics,
    test: ImageSet,
    pred: torch.Tensor,
    conf: torch.Tensor,
    classes: Sequence[str],
    seed: int,
) -> dict[str, torch.Tensor]:
    """final.pt, confusion.csv/png, per_class.csv, predictions.png, filters.png; returns the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    final_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic(final_state, folder / "final.pt")
    confusion_frame(metrics).to_csv(folder / "confusion.csv")
    pd.DataFrame(metrics.per_class).to_csv(folder / "per_class.csv", index=False)
    plot_confusion(metrics, folder / "confusion.png", f"{study_name}: test accuracy {metrics.accuracy:.3f}")
    plot_predictions(test.images, test.labels, pred, conf, classes, folder / "predictions.png", seed=seed)
    plot_filters(model.first_conv.weight, folder / "filters.png")
    return final_state


def _start_accuracy(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    model: ConvNet,
    val: ImageSet,
    transform: BatchTransform,
    cfg: StudyConfig,
    batch_size: int,
) -> float:
    """Validation accuracy of the loaded weights, measured as the trial measured it (same eval
    batch, autocast and cuDNN settings), so it equals the trial's value; a warning when not."""
    assert trial.value is not None
    _, start_acc = validate(model, val, transform, batch_size=batch_size, cfg=cfg.train)
    log.info(
        "finetune %s: starting from trial %d, validation accuracy %.4f before any update (trial value %.4f)",
        study.study_name,
        trial.number,
        start_acc,
        trial.value,
    )
    differing = round(abs(start_acc - trial.value) * len(val))  # accuracies are counts / len(val)
    if differing:
        log.warning(
            "starting validation accuracy %.4f differs from trial %d's value %.4f by %d of %d images "
            "(different device or data cache?)",
            start_acc,
            trial.number,
            trial.value,
            differing,
            len(val),
        )
    return start_acc


def _record_on_study(
    study: optuna.Study, cfg: StudyConfig, final_state: dict[str, torch.Tensor], folder: Path
) -> dict[str, str]:
    """Upload final.pt and the confusion matrix picture as study artifacts; returns their ids."""
    store = WeightStore(cfg.artifacts_dir)
    ids = {"final.pt": store.save(study, final_state, "finetune-final.pt")}
    ids["confusion.png"] = upload_artifact(
        artifact_store=store.store,
        file_path=str(folder / "confusion.png"),
        study_or_trial=study,
        mimetype="image/png",
    )
    return ids
