"""Optimizer and lr schedule of a run, from its :class:`TrainConfig`.

``optimizer`` adam (the default), adamw or sgd (``momentum``, ``nesterov``) with ``weight_decay``;
``lr_schedule`` constant (the default), cosine or onecycle with ``warmup_epochs``, applied per
optimizer step (:func:`lr_factor`). The defaults build no scheduler at all. Does not import optuna.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search.config import TrainConfig

ONECYCLE_START = 1 / 25  # onecycle: lr rises from lr x this (torch's OneCycleLR div_factor 25)
ONECYCLE_END = 1 / 25e4  # ... and anneals to lr x this (final_div_factor 1e4)
ONECYCLE_RISE = 0.3  # share of the steps that rise when train.warmup_epochs is 0 (pct_start)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """The lr multiplier before optimizer step ``step`` (0-based) of ``total`` steps.

    ``constant``: 1, after a linear warm-up over the first ``warmup`` steps (from 1/warmup to 1).
    ``cosine``: the same warm-up, then a half cosine from 1 to 0 at step ``total``.
    ``onecycle``: a half cosine up from 1/25 to 1 over ``warmup`` steps (30% of ``total`` when
    0), then down to 1/25e4 at the end; the warm-up is this rising phase (momentum is not cycled).
    """
    total = max(total, 1)
    if schedule == "onecycle":
        rise = warmup if warmup > 0 else round(ONECYCLE_RISE * total)
        rise = min(max(rise, 1), total)
        if step < rise:
            t = step / rise
            return ONECYCLE_START + (1 - ONECYCLE_START) * (1 - math.cos(math.pi * t)) / 2
        t = min((step - rise) / max(total - rise, 1), 1.0)
        return ONECYCLE_END + (1 - ONECYCLE_END) * (1 + math.cos(math.pi * t)) / 2
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        return (1 + math.cos(math.pi * t)) / 2
    return 1.0


def make_optimizer(model: nn.Module, lr: float, cfg: TrainConfig, *, fused: bool) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the model's parameters (fused: one kernel for all of them, CUDA only)."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            fused=fused,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The per-step lr schedule over ``cfg.epochs`` epochs of ``steps`` steps; None for a constant
    lr without warm-up (the loop then never touches the lr)."""
    if cfg.lr_schedule == "constant" and cfg.warmup_epochs == 0:
        return None
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
    schedule = cfg.lr_schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total, warmup))


def set_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Make a loaded Adam fused (CUDA) or not (CPU), whatever the checkpoint's device used.

    Fused Adam keeps its ``step`` counters on the parameters' device, the plain one on the CPU.
    """
    for group in optimizer.param_groups:
        group["fused"] = fused
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "step" in st:
                st["step"] = st["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)
