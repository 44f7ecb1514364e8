"""The architecture families side by side: parameters, training images/s and batch-1 latency.

Each family is the net a trial of ``study_configs/families.yaml`` trains (built by the one
factory, ``search.engine.arch.build_model``): the ConvNet with each ``model.block`` (plain,
residual, depthwise, inception; 3 stages of c1/c2 = 32/64 channels, 2x2 max pooling, BatchNorm, a
global-average head, l1 = 128) and torchvision's ResNet-18 from scratch (small-input stem up to 64
px, ImageNet stem above), 10 classes, at 32 and 96 px.

- training images/s: Adam steps (forward, cross-entropy, backward, step) on a random float batch
  of ``--batch`` images, after ``--warmup`` untimed steps; median of ``--rounds`` timings of
  ``--steps`` steps. The families are timed round-robin (round 1 of each, then round 2, ...),
  so a change in the machine's load touches all of them alike;
- latency: ``search.engine.evaluate.forward_latency_ms``, what ``search.constraints.max_latency_ms``
  measures (batch 1, eval mode, float32, median after warm-up).

The machine line and the load average (before and after) head the output: on a shared machine
compare the families within one run (ratios), not across runs.

    python benchmarks/families.py                 # CPU, 32 and 96 px
    python benchmarks/families.py --device cuda   # a GPU (channels-last, autocast off: fp32)
    python benchmarks/families.py --quick         # a format check: 16 px, one step
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks._common import machine, median, table
from search.config import ModelConfig
from search.engine.arch import build_model, is_small
from search.engine.evaluate import forward_latency_ms
from search.engine.model import count_parameters

BASE = {"padding": 1, "stages": 3, "pool": "max", "head": "global_avg", "batchnorm": True}
FAMILIES: dict[str, ModelConfig] = {
    **{f"convnet/{b}": ModelConfig(block=b, **BASE) for b in ("plain", "residual", "depthwise", "inception")},  # type: ignore[arg-type]
    "resnet18": ModelConfig(arch="resnet18"),
}
WIDTHS = (32, 64, 128)
N_CLASSES = 10


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def _train_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` Adam steps on the batch ``x``, ``y``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sync()
    return time.perf_counter() - start


def measure(side: int, args: argparse.Namespace, device: torch.device) -> list[list[object]]:
    """One table row per family at ``side`` px."""
    shape = (3, side, side)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, *shape), generator=gen).to(device)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    models: dict[str, nn.Module] = {}
    for name, cfg in FAMILIES.items():
        torch.manual_seed(0)
        model = build_model(cfg, *WIDTHS, shape, N_CLASSES).to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        _train_seconds(model, x, y, args.warmup)
        models[name] = model
    times: dict[str, list[float]] = {name: [] for name in FAMILIES}
    for _ in range(args.rounds):  # round-robin: load changes touch every family alike
        for name, model in models.items():
            times[name].append(_train_seconds(model, x, y, args.steps))
    rows: list[list[object]] = []
    for name, model in models.items():
        ips = args.steps * args.batch / median(times[name])
        latency = forward_latency_ms(model, shape, device, warmup=args.warmup, repeats=args.latency_repeats)
        label = (
            f"{name}, {'small-input' if is_small(shape) else 'ImageNet'} stem" if name == "resnet18" else name
        )
        rows.append([label, side, f"{count_parameters(model):,}", f"{ips:,.1f}", f"{latency:.2f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 96], help="image sizes (px)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--latency-repeats", type=int, default=30, help="timed batch-1 passes (median)")
    parser.add_argument("--quick", action="store_true", help="format check: 16 px, batch 2, 1 step")
    args = parser.parse_args(argv)
    if args.quick:
        args.sides, args.batch, args.steps, args.rounds, args.warmup = [16], 2, 1, 1, 1
        args.latency_repeats = 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda, but torch sees no CUDA GPU. Fix: run on the CPU (--device cpu)",
            file=sys.stderr,
        )
        return 2
    print(f"machine: {machine(device)}")
    print(f"before: {_load()}")
    print(
        f"training: batch {args.batch}, Adam, median of {args.rounds} round(s) of {args.steps} step(s) "
        f"after {args.warmup} warm-up step(s); latency: batch 1, eval, float32 ({device})"
    )
    rows = [row for side in args.sides for row in measure(side, args, device)]
    print(table(["family", "px", "parameters", "train img/s", "latency ms"], rows))
    print(f"after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
