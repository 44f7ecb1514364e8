"""TensorBoard logs of trials and fine-tuning runs, and ``search tensorboard`` to serve them.

Optional (extra ``[tensorboard]``): this module is imported only when ``train.tensorboard`` is
on, ``search run --tensorboard`` / ``search finetune --tensorboard`` ask for it, or for
``search tensorboard``. Each trial writes one run, ``<tensorboard_dir>/<study>/trial-<n>/``:
its net's graph (traced once, as it starts), per epoch (the step is the epoch number)
``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``, ``lr`` and ``images_per_s``,
and when it ends, however it ends (complete,
pruned, failed, interrupted), its hparams: the trial's params, its state and final metrics
(``hparam/*``). A trial that resumes an earlier attempt's checkpoint first writes that attempt's
epochs from the checkpoint's history, so its curve starts at epoch 1 and continues where the
attempt stopped. Fine-tuning writes ``<study>/finetune/``. Everything is written from the
per-epoch callback, from metrics already on the host: the training loop gains no sync.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from search.config import ConfigError, StudyConfig
from search.errors import InputError

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'convnet-search[tensorboard]'"
SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val": "val_acc",
    "images_per_s": "images_per_s",
}


class TensorBoardError(InputError):
    """TensorBoard cannot be used: the extra is missing, no logs, a port in use."""


def require_tensorboard(field_path: str = "train.tensorboard") -> None:
    """ConfigError naming ``field_path`` when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            field_path,
            True,
            "TensorBoard logging needs the tensorboard package, which is not installed",
            f"{EXTRA_HINT}, or turn TensorBoard logging off",
        ) from exc


def study_log_dir(root: str | Path, study: str) -> Path:
    return Path(root) / study


def trial_log_dir(root: str | Path, study: str, number: int) -> Path:
    return study_log_dir(root, study) / f"trial-{number}"


def _fresh_dir(path: Path) -> Path:
    """``path``, emptied: files left by an earlier run of that name are moved beside it, not lost.

    (``search run --fresh`` restarts trial numbers under the same study name; its old logs end up
    as ``trial-<n>.old-<UTC time>``, a run of their own.)
    """
    if path.exists() and any(path.iterdir()):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        kept = path.with_name(f"{path.name}.old-{stamp}")
        shutil.move(str(path), str(kept))
        log.warning("%s already held TensorBoard logs (an earlier run of that name); kept as %s", path, kept)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hparam_value(value: Any) -> float | int | str | bool:
    return value if isinstance(value, bool | int | float | str) else str(value)


@dataclass
class RunLog:
    """One TensorBoard run: scalars per epoch, then hparams once at the end."""

    log_dir: Path
    lr: float
    params: Mapping[str, Any] = field(default_factory=dict)
    extra_hparams: Mapping[str, Any] = field(default_factory=dict)
    best_val_acc: float = -math.inf
    last: Any = None
    epochs: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        _fresh_dir(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)

    def epoch(self, metrics: Any) -> None:
        """Write one finished epoch (an ``EpochMetrics``: plain floats, already on the host)."""
        step = int(metrics.epoch)
        for tag, attr in SCALARS.items():
            value = float(getattr(metrics, attr))
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("lr", self.lr, step)
        self.best_val_acc = max(self.best_val_acc, float(metrics.val_acc))
        self.last = metrics
        self.epochs = max(self.epochs, step)

    def graph(self, model: Any, in_shape: Sequence[int]) -> None:
        """The net's graph (TensorBoard's Graphs tab), traced on two all-zero images in eval mode
        (no BatchNorm statistic changes, no random numbers drawn); a net that cannot be traced
        is logged and left out."""
        import torch

        was_training = model.training
        device = next(model.parameters()).device
        try:
            model.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # add_graph traces with torch.jit
                self.writer.add_graph(model, torch.zeros((2, *in_shape), device=device))
        except (RuntimeError, ValueError, TypeError) as exc:  # tracing is best-effort
            log.warning("no TensorBoard graph of this net: %s", str(exc).splitlines()[0][:200])
        finally:
            model.train(was_training)

    def history(self, epochs: Iterable[Any]) -> None:
        """Write epochs run before (a resumed attempt's checkpointed history)."""
        for metrics in epochs:
            self.epoch(metrics)

    def finish(
        self, state: str, value: float | None = None, extra_metrics: Mapping[str, float] | None = None
    ) -> None:
        """The run's hparams (params, ``state``) and final metrics (``hparam/*``); closes the writer.

        ``value`` (a completed trial's objective) is its ``hparam/best_val_acc``; otherwise the
        best validation accuracy logged stands in.
        """
        if self.finished:
            return
        self.finished = True
        hparams: dict[str, Any] = {k: _hparam_value(v) for k, v in self.params.items()}
        hparams.update({k: _hparam_value(v) for k, v in self.extra_hparams.items()})
        hparams["state"] = state
        metrics: dict[str, float] = {"hparam/epochs_run": float(self.epochs)}
        best = value if value is not None and math.isfinite(value) else self.best_val_acc
        if math.isfinite(best):
            metrics["hparam/best_val_acc"] = float(best)
        if self.last is not None:
            for name in ("val_acc", "val_loss", "train_acc", "train_loss"):
                v = float(getattr(self.last, name))
                if math.isfinite(v):
                    metrics[f"hparam/final_{name}"] = v
        metrics.update({f"hparam/{k}": float(v) for k, v in (extra_metrics or {}).items()})
        # run_name=".": the hparams go into this run's own folder, not a timestamped sub-run
        self.writer.add_hparams(hparams, metrics, run_name=".", global_step=self.epochs)
        self.writer.close()


def trial_log(
    cfg: StudyConfig,
    study: str,
    number: int,
    params: Mapping[str, Any],
    resume: Mapping[str, Any] | None = None,
) -> RunLog:
    """The run of trial ``number``; with ``resume`` (a checkpoint), its earlier epochs already written."""
    from search.engine.train import EpochMetrics

    run = RunLog(
        trial_log_dir(cfg.tensorboard_dir, study, number),
        lr=float(params["lr"]),
        params=dict(params),
        extra_hparams={"trial": number},
    )
    if resume is not None:
        run.history(EpochMetrics(**m) for m in resume.get("history", []))
    return run


def finetune_log(cfg: StudyConfig, study: str, params: Mapping[str, Any], lr: float, trial: int) -> RunLog:
    """The fine-tuning run, ``<tensorboard_dir>/<study>/finetune/``."""
    return RunLog(
        study_log_dir(cfg.tensorboard_dir, study) / "finetune",
        lr=lr,
        params={**params, "lr": lr},
        extra_hparams={"trial": trial},
    )
