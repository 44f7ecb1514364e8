"""``fit()`` and ``evaluate()``: a plain training loop over tensors already on the device.

Batches are index slices of one uint8 tensor; augmentation and normalisation run batched on the
device (``BatchTransform``); bf16 autocast on CUDA; channels_last; optional ``torch.compile``.
The inner loop never syncs with the host: losses and hit counts accumulate on the device and
are read once per epoch. Early stopping watches validation accuracy (``patience``,
``min_delta``) and the model ends holding its best epoch's weights. A NaN/inf loss stops the run
with a reason. ``on_epoch(epoch, metrics)`` is the only way out (it may raise to stop the run,
e.g. for pruning). Does not import optuna.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search.augment import BatchTransform
from search.config import TrainConfig
from search.data import ImageSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    images_per_s: float


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    stop_reason: str
    train_seconds: float
    images_per_s: float
    compile_seconds: float = 0.0
    history: list[EpochMetrics] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def failed(self) -> bool:
        return self.stop_reason.startswith("nan_loss")


EpochCallback = Callable[[int, EpochMetrics], None]
CheckpointCallback = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA GPU when there is one, else the CPU. Raises ValueError if absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    amp: bool = True,
) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    device = images.device
    outs = []
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size], train=False)
        with _autocast(device, amp):
            outs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, device=device)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    amp: bool = True,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy over the whole of ``data`` (one host sync)."""
    logits = predict_logits(model, data.images, transform, batch_size=batch_size, amp=amp)
    loss = F.cross_entropy(logits, data.labels, reduction="sum")
    correct = (logits.argmax(1) == data.labels).sum()
    n = max(len(data), 1)
    return float(loss) / n, float(correct) / n


def eval_batch_size(configured: int, train_batch: int) -> int:
    """Evaluation batch: ``configured``, but always at least twice the training batch.

    Evaluation keeps no activations for backward, so it affords larger batches (fewer launches).
    """
    return max(configured, 2 * train_batch)


def fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    *,
    lr: float,
    batch_size: int,
    cfg: TrainConfig,
    transform: BatchTransform,
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    resume: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` and keep its best-validation-accuracy weights.

    ``train`` and ``val`` must already be on the training device (the model is moved there).
    After each finished epoch (before ``on_epoch``), ``on_checkpoint`` gets the whole fit state:
    model, optimizer, RNG, epoch, best-so-far and history. Passing such a state as ``resume``
    continues the run from the epoch after it, as if it had never stopped.
    """
    device = train.images.device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=memory_format)
    step_model: nn.Module = model
    if cfg.compile:
        step_model = torch.compile(model)  # type: ignore[assignment]
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    # fused Adam: one kernel for all parameters instead of several per parameter (CUDA only)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=cuda)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(train)
    eval_batch = eval_batch_size(cfg.eval_batch_size, batch_size)
    compiled_sizes: set[int] = set()
    t_compile = 0.0

    result = FitResult(
        best_val_acc=-math.inf,
        best_epoch=0,
        epochs_run=0,
        stop_reason="completed",
        train_seconds=0.0,
        images_per_s=0.0,
    )
    images_seen = 0
    compile_images = 0  # images of the steps timed as compilation (not counted in images_per_s)
    epochs_without_gain = 0
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["rng"])
        start_epoch = int(resume["epoch"]) + 1
        result.epochs_run = int(resume["epoch"])
        result.best_val_acc = float(resume["best_val_acc"])
        result.best_epoch = int(resume["best_epoch"])
        result.best_state = dict(resume["best_state"])
        result.train_seconds = float(resume["train_seconds"])
        result.history = [EpochMetrics(**m) for m in resume["history"]]
        images_seen = int(resume["images_seen"])
        epochs_without_gain = int(resume["epochs_without_gain"])
        if epochs_without_gain >= cfg.patience:
            result.stop_reason = f"early_stopping at epoch {result.epochs_run}"
            start_epoch = cfg.epochs + 1
        log.info("resuming from epoch %d", result.epochs_run)
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        perm = torch.randperm(n, device=device, generator=gen)
        seen = 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.shape[0] < 2:  # BatchNorm needs two samples in training mode
                continue
            first_of_size = cfg.compile and idx.shape[0] not in compiled_sizes
            if first_of_size:  # a new batch shape: this step (re)compiles; time it apart
                _sync(device)
                t_compile = time.perf_counter()
            x = transform(train.images[idx], train=True, generator=gen)
            y = train.labels[idx]
            with _autocast(device, cfg.amp):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum += loss.detach() * idx.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += idx.shape[0]
            if first_of_size:
                _sync(device)
                result.compile_seconds += time.perf_counter() - t_compile
                compiled_sizes.add(idx.shape[0])
                compile_images += idx.shape[0]
        train_loss = float(loss_sum) / max(seen, 1)  # the epoch's one sync
        train_acc = float(correct) / max(seen, 1)
        _sync(device)
        seconds = time.perf_counter() - t0
        result.train_seconds += seconds
        images_seen += seen
        result.epochs_run = epoch
        if not math.isfinite(train_loss):
            result.stop_reason = f"nan_loss at epoch {epoch}, lr={lr:g}"
            log.warning("stopping: %s", result.stop_reason)
            break

        val_loss, val_acc = evaluate(model, val, transform, batch_size=eval_batch, amp=cfg.amp)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=seconds,
            images_per_s=seen / seconds if seconds > 0 else 0.0,
        )
        result.history.append(metrics)
        if val_acc > result.best_val_acc + cfg.min_delta or result.best_epoch == 0:
            result.best_val_acc, result.best_epoch = val_acc, epoch
            result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        log.debug("epoch %d: %s", epoch, metrics)
        if on_checkpoint is not None:
            on_checkpoint(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": gen.get_state(),
                    "best_val_acc": result.best_val_acc,
                    "best_epoch": result.best_epoch,
                    "best_state": result.best_state,
                    "epochs_without_gain": epochs_without_gain,
                    "train_seconds": result.train_seconds,
                    "images_seen": images_seen,
                    "history": [asdict(m) for m in result.history],
                }
            )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if epochs_without_gain >= cfg.patience:
            result.stop_reason = f"early_stopping at epoch {epoch}"
            break

    if result.train_seconds > 0:
        train_time = result.train_seconds - result.compile_seconds
        steady_images = images_seen - compile_images
        result.images_per_s = steady_images / train_time if train_time > 0 and steady_images > 0 else 0.0
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
        result.best_state = {k: v.cpu() for k, v in result.best_state.items()}
    else:
        result.best_val_acc = float("nan")
    return result
