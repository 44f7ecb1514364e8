"""Forward passes without training: logits, loss and accuracy of a model over uint8 images, measured
exactly as :func:`search.engine.train.fit` measures validation (batch, cuDNN settings, precision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search.config import TrainConfig
from search.engine.augment import BatchTransform
from search.engine.data import ImageSet
from search.engine.device import Precision, autocast, backend_settings, resolve_precision


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor | ImageSet,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images (a tensor, or a set's), in eval mode,
    computed in ``precision`` (the one the model trained in: :func:`search.engine.device.resolve_precision`).

    On CUDA a last partial batch is padded to the full batch, so cuDNN sees one shape only.
    """
    was_training = model.training
    model.eval()
    device = images.device
    n = len(images)
    batch_size = max(1, min(batch_size, n))
    outs = []
    for start in range(0, n, batch_size):
        chunk = (
            images.chunk(start, start + batch_size)
            if isinstance(images, ImageSet)
            else images[start : start + batch_size]
        )
        real = chunk.shape[0]
        if device.type == "cuda" and real < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros((batch_size - real, *chunk.shape[1:]))])
        x = transform(chunk, train=False)
        with autocast(device, precision):
            outs.append(model(x).float()[:real])
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, device=device)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    precision: Precision = "fp32",
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy over the whole of ``data`` (one host sync)."""
    logits = predict_logits(model, data, transform, batch_size=batch_size, precision=precision)
    loss = F.cross_entropy(logits, data.labels, reduction="sum")
    correct = (logits.argmax(1) == data.labels).sum()
    n = max(len(data), 1)
    return float(loss) / n, float(correct) / n


def eval_batch_size(configured: int, train_batch: int) -> int:
    """Evaluation batch: ``configured``, but always at least twice the training batch.

    Evaluation keeps no activations for backward, so it affords larger batches (fewer launches).
    """
    return max(configured, 2 * train_batch)


def validate(
    model: nn.Module, val: ImageSet, transform: BatchTransform, *, batch_size: int, cfg: TrainConfig
) -> tuple[float, float]:
    """Validation loss and accuracy measured exactly as ``fit`` measures them (batch, cuDNN,
    precision: ``cfg``'s on this device)."""
    device = val.device
    with backend_settings(device):
        eval_batch = eval_batch_size(cfg.eval_batch_size, batch_size)
        precision = resolve_precision(cfg, device)
        return evaluate(model, val, transform, batch_size=eval_batch, precision=precision)
