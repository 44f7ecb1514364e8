"""Training images/s: the seed notebook's pipeline against ours, same model, same augmentation, same run.

Seed-style: CIFAR-shaped uint8 images held on the host as HWC arrays (as torchvision's CIFAR10
holds them), turned into a PIL image per sample and put through torchvision's per-sample
transforms inside a ``DataLoader``; fp32, NCHW; ``loss.item()`` every step (the seed's running
loss); ``torch.nn``'s Dropout and Flatten, as the seed wrote its net (ours are
:mod:`search.engine.layers`': the same function, cheaper on the CPU). Ours:
``search.engine.train.fit`` on the same images as one uint8 tensor on the device, index-slice
batches, ``BatchTransform`` (batched per-sample augmentation on the device), channels_last,
optionally ``torch.compile``; twice: the default path (``train.precision: auto``: bf16 autocast on
CUDA and on CPUs with native bf16, fp32 elsewhere) and fp32 (``train.precision: fp32``).

Both train the seed's net (c1 48, c2 96, l1 256, padding 0) on 3x32x32 images, 10 classes, with
Adam at lr 1e-3, and apply the same augmentation. Repeats alternate seed/ours so both see the same
machine load; each figure is the median over the repeats. The last lines are ``speedup fp32:
X.XXx`` (ours in fp32 / seed-style) and ``speedup: X.XXx`` (the default path / seed-style, training
images per second).

Fair to the seed: its DataLoader is made once with persistent workers (started and warmed up
before any timing), and its clock starts when the first batch is in hand, so worker start-up is
never timed. ``torch.backends.cudnn.benchmark`` is set once, before either side's warm-up, to
the value ``fit`` trains with (on), so neither side's timed repeats pay cuDNN's autotuning.

    python benchmarks/throughput.py --device cpu            # the CPU measurement
    python benchmarks/throughput.py --device cuda           # on a GPU
    python benchmarks/throughput.py --quick                 # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from benchmarks._common import machine, median, table
from search.config import ModelConfig, TrainConfig
from search.engine.augment import AugmentSpec, BatchTransform
from search.engine.data import ImageSet
from search.engine.device import resolve_device, resolve_precision
from search.engine.model import ConvNet, build_convnet
from search.engine.train import fit

C1, C2, L1 = 48, 96, 256
SHAPE = (3, 32, 32)
N_CLASSES = 10
MEAN = STD = (0.5, 0.5, 0.5)
LR = 1e-3
CUDNN_BENCHMARK = True  # what search.engine.train.fit trains with on CUDA

log = logging.getLogger("throughput")


@dataclass(frozen=True)
class Augmentation:
    description: str
    ours: AugmentSpec
    seed: Callable[[], list[nn.Module]]


AUGMENTATIONS = {
    # The seed notebook's own augmentation (DESIGN.md, study_configs/cifar10_grid.yaml).
    "seed": Augmentation(
        "rotation 20 deg, colour jitter 0.2 / hue 0.1, horizontal flip",
        AugmentSpec(hflip=True, rotate_deg=20, color_jitter=0.2, hue=0.1),
        lambda: [T.RandomRotation(20), T.ColorJitter(0.2, 0.2, 0.2, 0.1), T.RandomHorizontalFlip()],
    ),
    # The common CIFAR recipe: a cheaper augmentation.
    "flip-crop": Augmentation(
        "random crop 32 with 4 px reflect padding, horizontal flip",
        AugmentSpec(hflip=True, crop_pad=4),
        lambda: [T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()],
    ),
}


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` CIFAR-shaped uint8 images [n, 3, 32, 32] (a smooth pattern per class plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(N_CLASSES, 3, 8, 8, generator=gen)
    patterns = F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False)
    labels = torch.arange(n) % N_CLASSES
    noise = torch.randn(n, *SHAPE, generator=gen) * 0.2
    images = ((patterns[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def new_model(seed: int) -> ConvNet:
    torch.manual_seed(seed)
    return build_convnet(ModelConfig(padding=0), C1, C2, L1, SHAPE, N_CLASSES)


def seed_model(seed: int) -> ConvNet:
    """``new_model(seed)`` with the seed notebook's own layers: ``torch.nn``'s Dropout and Flatten
    in place of ours (:mod:`search.engine.layers`: the same function, cheaper on the CPU)."""
    model = new_model(seed)
    model.classifier[0] = nn.Flatten()
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.Dropout):
            model.features[i] = nn.Dropout(layer.p)
    return model


# ------------------------------------------------------------------------------------- seed-style


class SeedStyleDataset(Dataset[tuple[torch.Tensor, int]]):
    """Like torchvision's CIFAR10: HWC uint8 arrays, a PIL image and the transforms per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[..., torch.Tensor]):
        self.data: np.ndarray = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets: list[int] = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def seed_transform(aug: Augmentation) -> T.Compose:
    return T.Compose([*aug.seed(), T.ToTensor(), T.Normalize(MEAN, STD)])


def seed_loader(dataset: SeedStyleDataset, batch_size: int, workers: int, seed: int) -> DataLoader[object]:
    """The seed's loader, made once: with workers, they persist across epochs (started only once)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=gen,
        persistent_workers=workers > 0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_epoch(model: nn.Module, loader: DataLoader[object], device: torch.device) -> float:
    """One seed-style training epoch; returns training images/s.

    The clock starts when the first batch is in hand (loader start-up not timed); the loader's
    steady-state time per batch is timed, as the DataLoader and its transforms are the seed's.
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    _sync(device)
    t0 = 0.0
    seen, running_loss = 0, 0.0
    for cpu_x, cpu_y in loader:
        if seen == 0:
            t0 = time.perf_counter()
        x, y = cpu_x.to(device), cpu_y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        running_loss += loss.item()  # the seed's per-step host sync
        seen += x.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- ours


def train_config(compile_model: bool, precision: str = "auto") -> TrainConfig:
    """The default path (``precision`` auto) or a pinned precision, one epoch."""
    return TrainConfig(
        epochs=1,
        patience=1,
        channels_last=True,
        compile=compile_model,
        precision=precision,  # type: ignore[arg-type]
    )


def ours_epoch(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    transform: BatchTransform,
    args: argparse.Namespace,
    seed: int,
    precision: str = "auto",
) -> tuple[float, float]:
    """One epoch through ``search.engine.train.fit``; returns (training images/s, compile seconds)."""
    result = fit(
        model,
        train,
        val,
        lr=LR,
        batch_size=args.batch_size,
        cfg=train_config(args.compile, precision),
        transform=transform,
        seed=seed,
    )
    return result.images_per_s, result.compile_seconds


# ------------------------------------------------------------------------------- the machine's limit


def train_gflop_per_image(model: nn.Module, shape: tuple[int, int, int] = SHAPE) -> tuple[float, float]:
    """(forward, training) GFLOP per image: multiply-adds x 2 of the convolutions and linear layers,
    from the shapes one forward pass sees; training = 3 x forward (forward, input and weight grads)."""
    flops = [0.0]

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            flops[0] += 2.0 * k * output[0].numel()
        elif isinstance(module, nn.Linear):
            flops[0] += 2.0 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return flops[0] / 1e9, 3 * flops[0] / 1e9


def sgemm_gflops(n: int, repeats: int) -> float:
    """fp32 matrix-multiply rate of this process's torch threads: ``torch.mm`` of two n x n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / median(times) / 1e9


def limit_line(ours: float, quick: bool) -> str:
    """``limit: sgemm X GFLOPS ...; ours Y img/s = Z % of it``: the CPU's fp32 ceiling for this net."""
    n = 256 if quick else 1024
    gflops = sgemm_gflops(n, 2 if quick else 10)
    fwd, train_gflop = train_gflop_per_image(new_model(0))
    limit = gflops / train_gflop
    return (
        f"limit: sgemm {gflops:.1f} GFLOPS (torch.mm {n}x{n} fp32, {torch.get_num_threads()} thread(s)); "
        f"net {train_gflop:.3f} GFLOP per training image (3 x {fwd:.3f} forward) -> {limit:.1f} img/s; "
        f"ours {ours:.1f} img/s = {100 * ours / limit:.0f} % of it; load average {os.getloadavg()[0]:.1f}"
    )


# -------------------------------------------------------------------------------------- breakdown


def _rate(n_images: int, fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n_images / median(times)


def breakdown(
    args: argparse.Namespace,
    device: torch.device,
    loader: DataLoader[object],
    dataset: SeedStyleDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
) -> list[list[object]]:
    """Images/s of each pipeline's parts alone: input pipeline, and one training step."""
    bs = args.batch_size
    rows: list[list[object]] = []

    def drain() -> None:
        for _ in loader:
            pass

    drain()  # its workers are already running (persistent); this pass warms them as well
    n_loader = (len(dataset) // bs) * bs
    rows.append(["seed-style: DataLoader + PIL transforms only", f"{_rate(n_loader, drain, device, 1):.1f}"])
    batch_u8, y = images[:bs].to(device), labels[:bs].to(device)
    rows.append(
        [
            "ours: BatchTransform only",
            f"{_rate(bs, lambda: transform(batch_u8, train=True), device, args.repeats):.1f}",
        ]
    )
    default = resolve_precision(train_config(False), device)
    parts = (
        ("seed-style: train step only (fp32, NCHW)", False),
        (f"ours: train step only ({default})", True),
    )
    for name, channels_last in parts:
        model = (new_model(0) if channels_last else seed_model(0)).to(device)
        x = transform(batch_u8, train=False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        amp = channels_last and default == "bf16"

        def step(
            model: nn.Module = model,
            x: torch.Tensor = x,
            opt: torch.optim.Optimizer = optimizer,
            amp: bool = amp,
        ) -> None:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()

        step()  # warm-up
        rows.append([name, f"{_rate(bs, step, device, args.repeats):.1f}"])
    return rows


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--quick", action="store_true", help="tiny run (batch 8, 2 steps, 1 repeat)")
    p.add_argument("--batch-size", type=int, default=None, help="default 512 (8 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps a repeat (cpu 3, cuda 50)")
    p.add_argument("--repeats", type=int, default=None, help="repeats a pipeline (cpu 3, cuda 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (cpu 1, cuda 10)")
    p.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="seed", help="default: seed")
    p.add_argument(
        "--seed-workers",
        type=int,
        default=None,
        help="DataLoader workers for the seed-style pipeline (default: 0 on cpu, min(8, cores) on cuda)",
    )
    p.add_argument("--compile", action="store_true", help="ours with torch.compile (compile time apart)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--breakdown", action="store_true", help="also time each pipeline's parts alone")
    p.add_argument(
        "--torch-layers",
        action="store_true",
        help="also ours (the default path) with torch.nn's Dropout and Flatten, alternating with the rest",
    )
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.batch_size is None:
        args.batch_size = 8 if args.quick else 512
    if args.steps is None:
        args.steps = 2 if args.quick else (50 if cuda else 3)
    if args.repeats is None:
        args.repeats = 1 if args.quick else (5 if cuda else 3)
    if args.warmup is None:
        args.warmup = 1 if args.quick or not cuda else 10
    if args.seed_workers is None:
        args.seed_workers = min(8, os.cpu_count() or 1) if cuda else 0
    for name in ("batch_size", "steps", "repeats", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (BatchNorm)")
    return args


def timed_repeats(
    args: argparse.Namespace,
    device: torch.device,
    loader: DataLoader[object],
    train: ImageSet,
    val: ImageSet,
    transform: BatchTransform,
) -> dict[str, list[float]]:
    """Each pipeline's images/s per repeat, the pipelines alternating within every repeat."""
    rates: dict[str, list[float]] = {"seed": [], "ours": [], "fp32": [], "torch-layers": []}
    for r in range(args.repeats):
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK  # as fit left it, whatever that did
        rates["seed"].append(seed_epoch(seed_model(r), loader, device))
        rates["ours"].append(ours_epoch(new_model(r), train, val, transform, args, r)[0])
        rates["fp32"].append(ours_epoch(new_model(r), train, val, transform, args, r, "fp32")[0])
        if args.torch_layers:
            rates["torch-layers"].append(ours_epoch(seed_model(r), train, val, transform, args, r)[0])
        log.info("repeat %d: %s", r, {k: round(v[-1], 1) for k, v in rates.items() if v})
    return rates


def _row(name: str, rates: list[float]) -> list[object]:
    """A table row: the pipeline, its median, min and max images/s."""
    return [name, f"{median(rates):.1f}", f"{min(rates):.1f}", f"{max(rates):.1f}"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    aug = AUGMENTATIONS[args.augment]
    bs = args.batch_size
    images, labels = cifar_like(max(args.steps, args.warmup) * bs + 2 * bs)
    train_n = args.steps * bs
    warm_n = args.warmup * bs
    dataset = SeedStyleDataset(images[:train_n], labels[:train_n], seed_transform(aug))
    transform = BatchTransform(MEAN, STD, aug.ours, channels_last=True)
    train = ImageSet(images[:train_n], labels[:train_n]).to(device)
    warm = ImageSet(images[:warm_n], labels[:warm_n]).to(device)
    val = ImageSet(images[-2 * bs :], labels[-2 * bs :]).to(device)  # fit evaluates; not timed
    loader = seed_loader(dataset, bs, args.seed_workers, 0)  # one loader: its workers start once

    # the same cuDNN setting for both sides (fit's), before either warms up: no timed repeat
    # pays the autotuning of a shape the other side's warm-up already tuned
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    # warm-up (loader workers, allocators, kernel choice, oneDNN primitive caches; compilation for ours)
    seed_epoch(seed_model(0), loader, device)
    _, compile_s = ours_epoch(new_model(0), warm, val, transform, args, 0)
    ours_epoch(new_model(0), warm, val, transform, args, 0, "fp32")

    rates = timed_repeats(args, device, loader, train, val, transform)
    seed_rates, our_rates, fp32_rates = rates["seed"], rates["ours"], rates["fp32"]

    default = resolve_precision(train_config(args.compile), device)
    compiled = f", torch.compile ({compile_s:.1f} s compile, not timed)" if args.compile else ""
    ours_name = "ours: uint8 on device, BatchTransform, channels_last"
    rows = [
        _row(
            f"seed-style: PIL transforms in a DataLoader ({args.seed_workers} workers), fp32, NCHW",
            seed_rates,
        ),
        _row(f"{ours_name}, {default} (the default: train.precision auto){compiled}", our_rates),
        _row(f"{ours_name}, fp32 (train.precision fp32){compiled}", fp32_rates),
    ]
    if rates["torch-layers"]:
        rows.append(_row(f"{ours_name}, {default}, torch.nn's Dropout and Flatten", rates["torch-layers"]))
    print(f"machine: {machine(device)}")
    cudnn = ""
    if device.type == "cuda":
        cudnn = f"; cudnn.benchmark {'on' if CUDNN_BENCHMARK else 'off'} for both"
    print(
        f"device: {device}{cudnn}; net c1 {C1} c2 {C2} l1 {L1} padding 0 on "
        f"{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, "
        f"{N_CLASSES} classes; batch {bs}; {args.steps} timed steps x {args.repeats} repeat(s), "
        f"alternating, median; warm-up: one seed-style epoch, {args.warmup} step(s) of ours; "
        f"augmentation: {args.augment} ({aug.description})"
    )
    print()
    print(table(["pipeline", "train images/s (median)", "min", "max"], rows))
    if args.breakdown:
        print()
        parts = breakdown(args, device, loader, dataset, images, labels, transform)
        print(table(["part (timed alone)", "images/s"], parts))
    if device.type == "cpu":
        print()
        print(limit_line(median(fp32_rates), args.quick))  # the fp32 ceiling: ours in fp32
    print()
    print(f"speedup fp32: {median(fp32_rates) / median(seed_rates):.2f}x")
    print(f"speedup: {median(our_rates) / median(seed_rates):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
