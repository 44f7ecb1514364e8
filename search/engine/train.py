"""``fit()``: a plain training loop over tensors already on the device.

Batches are index slices of one uint8 tensor; augmentation and normalisation run batched on the
device (``BatchTransform``); bf16 autocast where ``train.precision`` resolves to bf16 (CUDA, CPUs
with native bf16: :func:`search.engine.device.resolve_precision`); channels_last; optional ``torch.compile``.
Every training batch has the same shape (the last partial batch of an epoch is dropped; the
permutation changes each epoch, so every image is still used), so compilation and cuDNN
autotuning happen once, in the first step, which is timed apart from the steady rate.
The inner loop never syncs with the host: losses and hit counts accumulate on the device and
are read once per epoch. Early stopping watches validation accuracy (``patience``,
``min_delta``) and the model ends holding its best epoch's weights. A NaN/inf loss stops the run
with a reason. ``on_epoch(epoch, metrics)`` is the only way out: it returns True to prune the run
there, or raises to abort it. Does not import optuna.

Optimizer and lr schedule come from the :class:`TrainConfig` (:mod:`search.engine.optim`; the
defaults build no scheduler: the numbers the loop always gave); ``label_smoothing`` is training-only.

Resume: :class:`FitState` holds everything a run needs to continue (model, optimizer, lr
scheduler, the data generator, counters, history, timings); ``state_dict()`` is the checkpoint,
``load_state_dict()`` continues from it (the lr schedule too). Dropout is re-seeded from
(seed, epoch) at each epoch start, so on the CPU a resumed run gives the same weights and
metrics as one that never stopped.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search.config import TrainConfig
from search.engine.augment import BatchTransform
from search.engine.counts import steps_per_epoch
from search.engine.data import ImageSet
from search.engine.device import Precision, autocast, backend_settings, resolve_precision, seed_dropout, sync
from search.engine.inference import validate
from search.engine.optim import make_optimizer, make_scheduler, set_fused

log = logging.getLogger(__name__)

DROPOUT_STREAM = 0x5EED  # dropout's per-epoch seeds differ from the data order's re-seeds


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    images_per_s: float


class StopKind(Enum):
    COMPLETED = "completed"
    EARLY_STOPPING = "early_stopping"
    NAN_LOSS = "nan_loss"
    PRUNED = "pruned"

    @property
    def failed(self) -> bool:
        """The run produced no usable model (a diverged loss)."""
        return self is StopKind.NAN_LOSS


@dataclass(frozen=True)
class StopReason:
    """Why a run ended: ``str()`` is the user-visible text (``early_stopping at epoch 3``)."""

    kind: StopKind
    epoch: int = 0
    detail: str = ""

    def __str__(self) -> str:
        if self.kind is StopKind.COMPLETED:
            return "completed"
        text = f"{self.kind.value} at epoch {self.epoch}"
        return f"{text}, {self.detail}" if self.detail else text


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    stop: StopReason
    train_seconds: float
    images_per_s: float
    compile_seconds: float = 0.0  # the first step, timed apart: compilation and cuDNN autotuning
    history: list[EpochMetrics] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def stop_reason(self) -> str:
        return str(self.stop)

    @property
    def failed(self) -> bool:
        return self.stop.kind.failed


def mixed_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed derived deterministically from (seed, epoch, stream), distinct for distinct inputs."""
    return ((seed * 1_000_003 + epoch) * 65_537 + stream) % (2**63)


def _rng_device_type(rng: torch.Tensor) -> str:
    """The device kind a generator state comes from (checkpoints written before it was stored)."""
    return "cpu" if rng.numel() == torch.Generator().get_state().numel() else "cuda"


@dataclass
class FitState:
    """A run's whole state: the live model, optimizer and data generator, and its counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    seed: int = 0
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    epoch: int = 0
    best_val_acc: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_gain: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    compile_seconds: float = 0.0
    compile_images: int = 0  # images of the steps timed apart (not counted in images_per_s)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (plain tensors, numbers and strings: loadable with ``weights_only=True``)."""
        return {
            "device": self.device.type,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": self.generator.get_state(),
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "epochs_without_gain": self.epochs_without_gain,
            "history": [asdict(m) for m in self.history],
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "compile_seconds": self.compile_seconds,
            "compile_images": self.compile_images,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint, also one written on another device type."""
        self.model.load_state_dict(state["model"])
        # a copy: Optimizer.load_state_dict keeps the given tensors, and training updates them in place
        self.optimizer.load_state_dict(copy.deepcopy(dict(state["optimizer"])))
        set_fused(self.optimizer, fused=self.device.type == "cuda")
        sched = state.get("scheduler")
        if self.scheduler is not None and sched is not None:
            self.scheduler.load_state_dict(dict(sched))  # where the schedule stood, and the lr
        self.epoch = int(state["epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_epoch = int(state["best_epoch"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device, copy=True) for k, v in best.items()}
        self.epochs_without_gain = int(state["epochs_without_gain"])
        self.history = [EpochMetrics(**m) for m in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        self.images_seen = int(state["images_seen"])
        self.compile_seconds = float(state.get("compile_seconds", 0.0))
        self.compile_images = int(state.get("compile_images", 0))
        self._load_generator(state["rng"], str(state.get("device") or _rng_device_type(state["rng"])))

    def _load_generator(self, rng: torch.Tensor, saved_device: str) -> None:
        if saved_device == self.device.type:
            try:
                self.generator.set_state(rng)
                return
            except (RuntimeError, ValueError) as exc:
                log.warning("checkpoint's generator state does not load (%s)", exc)
        # A CUDA generator state (16 bytes) does not fit a CPU generator (5056) or the reverse.
        seed = mixed_seed(self.seed, self.epoch)
        self.generator.manual_seed(seed)
        log.warning(
            "checkpoint written on %s, resuming on %s: data order re-seeded from seed %d and epoch %d",
            saved_device,
            self.device.type,
            self.seed,
            self.epoch,
        )

    def record(self, metrics: EpochMetrics, min_delta: float) -> None:
        """Add an evaluated epoch: history, best-so-far (weights kept) and the patience counter."""
        self.history.append(metrics)
        if metrics.val_acc > self.best_val_acc + min_delta or self.best_epoch == 0:
            self.best_val_acc, self.best_epoch = metrics.val_acc, metrics.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.epochs_without_gain = 0
        else:
            self.epochs_without_gain += 1

    def patience_spent(self, patience: int) -> StopReason | None:
        if self.epoch > 0 and self.epochs_without_gain >= patience:
            return StopReason(StopKind.EARLY_STOPPING, self.epoch)
        return None


EpochCallback = Callable[[int, EpochMetrics], bool | None]
CheckpointCallback = Callable[[FitState], None]


@dataclass(frozen=True)
class _EpochStats:
    loss: float
    acc: float
    seen: int
    seconds: float


def _train_epoch(
    step_model: nn.Module,
    state: FitState,
    train: ImageSet,
    batch_size: int,
    cfg: TrainConfig,
    transform: BatchTransform,
    time_first_step: bool,
    precision: Precision,
) -> _EpochStats:
    """One epoch of full batches; the first step is timed apart when ``time_first_step``."""
    device = state.device
    state.model.train()
    seed_dropout(device, mixed_seed(state.seed, state.epoch + 1, DROPOUT_STREAM))
    sync(device)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = len(train)
    batch = min(batch_size, n)
    steps = steps_per_epoch(n, batch_size)
    perm = torch.randperm(n, device=device, generator=state.generator)
    order = perm.cpu() if train.stream_to is not None else perm  # streamed: batches gathered on the host
    for step in range(steps):
        timed = time_first_step and step == 0
        if timed:
            sync(device)
            t_first = time.perf_counter()
        idx = perm[step * batch : (step + 1) * batch]
        x = transform(
            train.batch(order[step * batch : (step + 1) * batch]), train=True, generator=state.generator
        )
        y = train.labels[idx]
        with autocast(device, precision):
            logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        state.optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        loss_sum += loss.detach() * batch
        correct += (logits.detach().argmax(1) == y).sum()
        if timed:  # compilation / cuDNN autotuning: kept out of the steady rate
            sync(device)
            state.compile_seconds += time.perf_counter() - t_first
            state.compile_images += batch
    seen = steps * batch
    mean_loss, acc = float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1)  # the epoch's one sync
    sync(device)
    seconds = time.perf_counter() - t0
    state.epoch += 1
    state.train_seconds += seconds
    state.images_seen += seen
    return _EpochStats(mean_loss, acc, seen, seconds)


def _prepare(
    model: nn.Module, device: torch.device, lr: float, cfg: TrainConfig, seed: int, steps: int
) -> FitState:
    model.to(device)
    model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    # fused: one kernel for all parameters instead of several per parameter (CUDA only)
    optimizer = make_optimizer(model, lr, cfg, fused=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(seed)
    return FitState(model, optimizer, generator, seed, scheduler=make_scheduler(optimizer, cfg, steps))


def _compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    if not cfg.compile:
        return model
    # A fresh compile cache for each run: every architecture adds compiled variants of
    # ConvNet.forward, and past dynamo's recompile limit (8) later trials silently ran eager.
    torch.compiler.reset()
    compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
    return compiled


def _result(state: FitState, stop: StopReason) -> FitResult:
    """The run's summary; the model is left holding its best epoch's weights."""
    train_time = state.train_seconds - state.compile_seconds
    steady = state.images_seen - state.compile_images
    result = FitResult(
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stop=stop,
        train_seconds=state.train_seconds,
        images_per_s=steady / train_time if train_time > 0 and steady > 0 else 0.0,
        compile_seconds=state.compile_seconds,
        history=list(state.history),
    )
    if state.best_state is not None:
        state.model.load_state_dict(state.best_state)
        result.best_state = {k: v.cpu() for k, v in state.best_state.items()}
    else:
        result.best_val_acc = float("nan")
    return result


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

    ``train`` and ``val`` must already be placed for the training device (resident there or
    streamed to it, :func:`search.engine.stream.place`; the model is moved there).
    After each evaluated epoch (before ``on_epoch``), ``on_checkpoint`` gets the :class:`FitState`;
    passing its ``state_dict()`` as ``resume`` continues the run from the epoch after it.
    """
    device = train.device
    state = _prepare(model, device, lr, cfg, seed, steps_per_epoch(len(train), batch_size))
    step_model = _compiled(model, cfg)
    if resume is not None:
        state.load_state_dict(resume)
        log.debug("resuming from epoch %d", state.epoch)  # the trial logs it
    time_first_step = cfg.compile or device.type == "cuda"
    precision = resolve_precision(cfg, device)
    stop = state.patience_spent(cfg.patience)  # a resumed run may have stopped already
    with backend_settings(device):
        while stop is None and state.epoch < cfg.epochs:
            stats = _train_epoch(
                step_model, state, train, batch_size, cfg, transform, time_first_step, precision
            )
            time_first_step = False
            if not math.isfinite(stats.loss):
                stop = StopReason(StopKind.NAN_LOSS, state.epoch, f"lr={lr:g}")
                log.warning("stopping: %s", stop)
                break
            val_loss, val_acc = validate(model, val, transform, batch_size=batch_size, cfg=cfg)
            metrics = EpochMetrics(
                epoch=state.epoch,
                train_loss=stats.loss,
                train_acc=stats.acc,
                val_loss=val_loss,
                val_acc=val_acc,
                seconds=stats.seconds,
                images_per_s=stats.seen / stats.seconds if stats.seconds > 0 else 0.0,
            )
            state.record(metrics, cfg.min_delta)
            log.debug("epoch %d: %s", state.epoch, metrics)
            if on_checkpoint is not None:
                on_checkpoint(state)
            if on_epoch is not None and on_epoch(state.epoch, metrics):
                stop = StopReason(StopKind.PRUNED, state.epoch)
            else:
                stop = state.patience_spent(cfg.patience)
    return _result(state, stop or StopReason(StopKind.COMPLETED))
