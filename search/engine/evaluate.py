"""Test-set metrics and pictures: per-class accuracy/precision/recall/F1, confusion matrix,
a grid of sample predictions and the first conv layer's filters; a model's forward latency.

Everything is computed over the whole test set at once (the seed notebook's per-class accuracy
came from its last batch only). Pictures are drawn with matplotlib's Agg backend (no display).
This module never searches or trains.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pandas is imported where a frame is made: a trial's latency check needs none
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestMetrics:
    accuracy: float
    n: int
    classes: tuple[str, ...]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    per_class: list[dict[str, Any]]
    macro_f1: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "macro_f1": self.macro_f1,
            "classes": list(self.classes),
            "per_class": self.per_class,
            "confusion": self.confusion,
        }


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """int64 [n_classes, n_classes]: entry (i, j) counts samples of class i predicted as j."""
    index = y_true.long().cpu() * n_classes + y_pred.long().cpu()
    return torch.bincount(index, minlength=n_classes * n_classes).view(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, classes: Sequence[str]) -> TestMetrics:
    """Accuracy, per-class accuracy (= recall), precision, F1 and the confusion matrix."""
    n_classes = len(classes)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    per_class: list[dict[str, Any]] = []
    for i, name in enumerate(classes):
        precision = _ratio(float(tp[i]), float(predicted[i]))
        recall = _ratio(float(tp[i]), float(support[i]))
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append(
            {
                "class": name,
                "support": int(support[i]),
                "correct": int(tp[i]),
                "accuracy": recall,
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    n = int(cm.sum())
    return TestMetrics(
        accuracy=_ratio(float(tp.sum()), n),
        n=n,
        classes=tuple(classes),
        confusion=cm.tolist(),
        per_class=per_class,
        macro_f1=sum(c["f1"] for c in per_class) / max(n_classes, 1),
    )


def confusion_frame(metrics: TestMetrics) -> pd.DataFrame:
    """The confusion matrix with class names: index = true class, columns = predicted class."""
    import pandas as pd

    names = list(metrics.classes)
    df = pd.DataFrame(metrics.confusion, index=names, columns=names)
    df.index.name = "true\\predicted"
    return df


LATENCY_WARMUP = 5  # forward passes before timing: allocator, cuDNN algorithm choice, caches
LATENCY_REPEATS = 20  # timed forward passes; the median is robust to a stray slow one


def forward_latency_ms(
    model: torch.nn.Module,
    in_shape: Sequence[int],
    device: torch.device,
    *,
    warmup: int = LATENCY_WARMUP,
    repeats: int = LATENCY_REPEATS,
) -> float:
    """Median milliseconds of one batch-1 forward pass of ``model`` on ``device``.

    The model is moved to ``device`` and timed in eval mode under ``no_grad`` in float32 (no
    autocast, default memory format: how ``search predict`` runs an fp32 export), on an
    all-zero input of shape ``(1, *in_shape)`` (no random numbers drawn, so training's seeded
    stream is untouched). ``warmup`` passes go first; on CUDA each timed pass is bracketed by
    ``torch.cuda.synchronize`` so the time is the kernels', not the launch's. The model's
    training mode is restored afterwards.
    """
    was_training = model.training
    model.to(device).eval()
    x = torch.zeros((1, *in_shape), device=device)
    cuda = device.type == "cuda"
    times: list[float] = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forward_flops(model: torch.nn.Module, in_shape: Sequence[int]) -> int:
    """Forward FLOPs of one image through ``model`` (``search.objectives``' ``flops``).

    Counted by torch's own ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2
    FLOPs; convolutions and matrix products, the ops it counts) on an all-zero ``(1, *in_shape)``
    input on the meta device: no memory, no time, no random numbers. The model's device and
    training mode are left as they were (a copy is counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        probe = copy.deepcopy(model).to("meta").eval()
        x = torch.zeros((1, *in_shape))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(x)
    return int(counter.get_total_flops())


def plot_confusion(metrics: TestMetrics, path: Path, title: str = "") -> None:
    """A heatmap of the confusion matrix with counts in the cells."""
    plt = _pyplot()
    cm = torch.tensor(metrics.confusion)
    n = len(metrics.classes)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(n), labels=list(metrics.classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(metrics.classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = float(cm.max()) / 2 if cm.numel() else 0.0
    for i in range(n):
        for j in range(n):
            value = int(cm[i, j])
            if value:
                color = "white" if value > threshold else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=11)
    ax.set_title(title or f"test accuracy {metrics.accuracy:.3f} (n={metrics.n})", fontsize=13)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(
    images: torch.Tensor,
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    probs: torch.Tensor,
    classes: Sequence[str],
    path: Path,
    n: int = 32,
    seed: int = 0,
) -> None:
    """A grid of ``n`` test images (a seeded sample) titled "predicted p (true)": green right, red wrong."""
    plt = _pyplot()
    total = images.shape[0]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=gen)[: min(n, total)].sort().values
    cols = 8
    rows = max(1, (len(pick) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 2.0 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick.tolist(), strict=False):
        img = images[i].cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        right = int(y_pred[i]) == int(y_true[i])
        ax.set_title(
            f"{classes[int(y_pred[i])]} {float(probs[i]):.2f}\n({classes[int(y_true[i])]})",
            color="green" if right else "red",
            fontsize=11,
        )
    fig.suptitle("test predictions: predicted prob (true); green right, red wrong", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_filters(weight: torch.Tensor, path: Path) -> None:
    """The first conv layer's filters [out, in, k, k], each scaled to [0, 1] (RGB when in=3)."""
    plt = _pyplot()
    w = weight.detach().float().cpu()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-8)
    count = w.shape[0]
    cols = min(8, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, cols * 1.0), rows * 1.0 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, w, strict=False):
        if f.shape[0] == 3:
            ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            ax.imshow(f[0].numpy(), cmap="gray", interpolation="nearest")
    fig.suptitle(f"first conv layer: {count} filters", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
