"""Batched, per-sample data augmentation and normalisation on the training device.

Contract
--------
:class:`BatchTransform` turns a ``uint8`` batch ``[N, C, H, W]`` (values 0..255, on any device)
into a normalised ``float32`` batch of the same shape on the same device::

    out = (augment(x / 255) - mean) / std      # train=True
    out = (x / 255 - mean) / std               # train=False

Augmentations (configured by :class:`AugmentSpec`, the config's ``data.augment`` section) are
drawn independently for every sample and applied with a handful of batched tensor ops in the
style of airbench: no per-sample Python loops, no PIL, and no host<->device synchronisation
(no ``.item()``, no ``.cpu()``, no Python branching on tensor values). Order: random crop,
horizontal flip, rotation, colour jitter (brightness, contrast, saturation), hue. Every colour
op works on floats in ``[0, 1]`` and clamps back to ``[0, 1]``.

All random draws use ``generator`` when one is given, so a seeded generator gives reproducible
output. Pass a generator that lives on the images' device; if it lives elsewhere (e.g. a CPU
generator with CUDA images) a seed is drawn from it on the host and a generator on the images'
device is seeded from that, which keeps the output reproducible without any device copy.

:func:`channel_stats` computes the per-channel mean and (population) std of ``x / 255`` over a
whole ``uint8`` dataset tensor in chunks, for use as ``mean`` / ``std``.

This module knows nothing about datasets or the search itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search.config import AugmentConfig

__all__ = ["AugmentSpec", "BatchTransform", "channel_stats"]

# ITU-R BT.601 luma weights (the ones torchvision uses for grayscale).
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (FCC NTSC). Y is the luma; hue is the angle in the I/Q plane.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.5959, -0.2746, -0.3213),
    (0.2115, -0.5227, 0.3112),
)


# The augmentation settings are the config's ``data.augment`` section itself: one declaration,
# one set of bounds (validated when it is built), no copy here.
AugmentSpec = AugmentConfig


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """Return a generator usable for draws on ``device`` (None means the global RNG)."""
    if generator is None or _same_device(generator.device, device):
        return generator
    # The generator lives elsewhere (typically CPU generator, CUDA images). Draw a seed from it
    # on the host (a CPU-only op, no device sync) and seed a generator on the target device.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    local = torch.Generator(device=device)
    local.manual_seed(seed)
    return local


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``n`` float32 samples uniform in ``[low, high]`` on ``device``."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    return u * (high - low) + low


# --------------------------------------------------------------------------------------------
# Augmentations: each takes float images in [0, 1] of shape [N, C, H, W]
# --------------------------------------------------------------------------------------------


def _hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the samples where the bool mask ``flip`` [N] is True."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def _random_crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Pad by ``pad`` and crop back to HxW at per-sample offsets ``dy``, ``dx`` in [0, 2*pad]."""
    n, c, h, w = x.shape
    # Reflect padding needs pad < size; fall back to replicating the border otherwise.
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)  # [N, C, H+2p, W+2p]
    rows = dy.view(n, 1) + torch.arange(h, device=x.device)  # [N, H]
    cols = dx.view(n, 1) + torch.arange(w, device=x.device)  # [N, W]
    row_index = rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = torch.gather(padded, 2, row_index)  # [N, C, H, W+2p]
    col_index = cols.view(n, 1, 1, w).expand(n, c, h, w)
    return torch.gather(out, 3, col_index)  # [N, C, H, W]


def _rotate(x: torch.Tensor, angle_rad: torch.Tensor) -> torch.Tensor:
    """Rotate each sample about its centre by ``angle_rad`` [N] (bilinear, zero fill)."""
    n, c, h, w = x.shape
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    # affine_grid works in normalised coordinates ([-1, 1] along each axis); scale the
    # off-diagonal terms by the aspect ratio so non-square images rotate without shearing.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), torch.zeros_like(cos)], dim=1),
            torch.stack([sin * (w / h), cos, torch.zeros_like(cos)], dim=1),
        ],
        dim=1,
    )  # [N, 2, 3]
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [N, 1, H, W] of RGB images, or the image itself when it has one channel."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` with per-sample ``factor`` [N], clamped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    return _blend(x, mean, factor)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def _hue_matrices(shift: torch.Tensor, rgb_to_yiq: torch.Tensor, yiq_to_rgb: torch.Tensor) -> torch.Tensor:
    """Per-sample 3x3 RGB->RGB matrices [N, 3, 3] rotating hue by ``shift`` turns."""
    # Increasing HSV hue (red -> yellow -> green) is a clockwise turn in the I/Q plane.
    angle = -2.0 * math.pi * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [
            torch.stack([one, zero, zero], dim=1),
            torch.stack([zero, cos, -sin], dim=1),
            torch.stack([zero, sin, cos], dim=1),
        ],
        dim=1,
    )  # [N, 3, 3] rotation about the Y axis
    return yiq_to_rgb @ rotation @ rgb_to_yiq


def _adjust_hue(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply per-sample 3x3 colour matrices [N, 3, 3] to RGB images [N, 3, H, W]."""
    n, c, h, w = x.shape
    out = torch.bmm(matrices, x.reshape(n, c, h * w)).view(n, c, h, w)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Constants:
    """Tensors a :class:`BatchTransform` needs on one device."""

    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor  # [1, C, 1, 1]
    rgb_to_yiq: torch.Tensor  # [3, 3]
    yiq_to_rgb: torch.Tensor  # [3, 3]


class BatchTransform:
    """Turns a uint8 NCHW batch (on any device) into normalised float NCHW."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        spec: AugmentSpec | None = None,
        channels_last: bool = False,
    ) -> None:
        mean_f = [float(m) for m in mean]
        std_f = [float(s) for s in std]
        if len(mean_f) == 0:
            raise ValueError("mean must have one entry per channel, got an empty sequence")
        if len(mean_f) != len(std_f):
            raise ValueError(f"mean and std must have the same length, got {len(mean_f)} and {len(std_f)}")
        if not all(math.isfinite(m) for m in mean_f):
            raise ValueError(f"mean must be finite, got {mean_f}")
        if not all(0.0 < s < math.inf for s in std_f):
            raise ValueError(f"every std must be finite and > 0, got {std_f}")
        self.spec = spec if spec is not None else AugmentSpec()
        self.mean: tuple[float, ...] = tuple(mean_f)
        self.std: tuple[float, ...] = tuple(std_f)
        self.channels_last = channels_last
        # Per-device constants, built once per device so later calls need no host->device copy.
        self._constants: dict[torch.device, _Constants] = {}

    @property
    def channels(self) -> int:
        """Number of channels this transform expects."""
        return len(self.mean)

    def _device_constants(self, device: torch.device) -> _Constants:
        consts = self._constants.get(device)
        if consts is None:
            # Inverted on the CPU: torch.linalg.inv on an accelerator would sync to check errors.
            yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
            consts = _Constants(
                mean=torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                std=torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                rgb_to_yiq=yiq.to(device=device, dtype=torch.float32),
                yiq_to_rgb=torch.linalg.inv(yiq).to(device=device, dtype=torch.float32),
            )
            self._constants[device] = consts
        return consts

    def _check_input(self, images_u8: torch.Tensor) -> None:
        if images_u8.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 tensor, got dtype {images_u8.dtype}")
        if images_u8.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images_u8.shape)}")
        if images_u8.shape[1] != self.channels:
            raise ValueError(
                f"images have {images_u8.shape[1]} channels but mean/std have {self.channels} entries"
            )

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the random augmentations of ``spec`` to float images in [0, 1]."""
        spec = self.spec
        n, c, _, _ = x.shape
        device = x.device
        gen = _device_generator(generator, device)
        if spec.crop_pad > 0:
            high = 2 * spec.crop_pad + 1
            dy = torch.randint(0, high, (n,), generator=gen, device=device)
            dx = torch.randint(0, high, (n,), generator=gen, device=device)
            x = _random_crop(x, spec.crop_pad, dy, dx)
        if spec.hflip:
            flip = torch.rand(n, generator=gen, device=device) < 0.5
            x = _hflip(x, flip)
        if spec.rotate_deg > 0:
            max_rad = math.radians(spec.rotate_deg)
            x = _rotate(x, _uniform(n, -max_rad, max_rad, gen, device))
        if spec.color_jitter > 0:
            lo, hi = 1.0 - spec.color_jitter, 1.0 + spec.color_jitter
            x = _adjust_brightness(x, _uniform(n, lo, hi, gen, device))
            x = _adjust_contrast(x, _uniform(n, lo, hi, gen, device))
            if c == 3:
                x = _adjust_saturation(x, _uniform(n, lo, hi, gen, device))
        if spec.hue > 0 and c == 3:
            consts = self._device_constants(device)
            shift = _uniform(n, -spec.hue, spec.hue, gen, device)
            x = _adjust_hue(x, _hue_matrices(shift, consts.rgb_to_yiq, consts.yiq_to_rgb))
        return x

    def __call__(
        self,
        images_u8: torch.Tensor,
        *,
        train: bool,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalise ``images_u8`` [N, C, H, W] (uint8); with ``train=True`` augment first.

        Returns float32 [N, C, H, W] on the input's device (channels_last memory format when
        the transform was built with ``channels_last=True``).
        """
        self._check_input(images_u8)
        consts = self._device_constants(images_u8.device)
        x = images_u8.float() / 255.0
        if train and self.spec.enabled and x.shape[0] > 0:
            x = self.augment(x, generator)
        out = (x - consts.mean) / consts.std
        if self.channels_last:
            return out.contiguous(memory_format=torch.channels_last)
        return out.contiguous()

    def __repr__(self) -> str:
        return (
            f"BatchTransform(mean={list(self.mean)}, std={list(self.std)}, spec={self.spec}, "
            f"channels_last={self.channels_last})"
        )


def channel_stats(
    images_u8: torch.Tensor, batch: int = 4096, index: torch.Tensor | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of ``images_u8 / 255`` over a uint8 [N, C, H, W]
    (only its rows ``index`` when given: a split of a shared, memory-mapped array, never copied whole).

    Sums are accumulated exactly in int64, ``batch`` images at a time, on the tensor's device,
    and combined in float64. Every std is clamped to at least 1e-6, so the result is always safe
    to divide by.
    """
    if images_u8.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor, got dtype {images_u8.dtype}")
    if images_u8.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images_u8.shape)}")
    if (images_u8.shape[0] if index is None else len(index)) == 0 or images_u8[0].numel() == 0:
        raise ValueError("cannot compute channel statistics of an empty tensor")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    _, c, h, w = images_u8.shape
    n = images_u8.shape[0] if index is None else len(index)
    total = torch.zeros(c, dtype=torch.int64, device=images_u8.device)
    total_sq = torch.zeros(c, dtype=torch.int64, device=images_u8.device)
    for start in range(0, n, batch):
        rows = images_u8[start : start + batch] if index is None else images_u8[index[start : start + batch]]
        chunk = rows.to(torch.int64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
    count = float(n * h * w)
    means: list[float] = []
    stds: list[float] = []
    for s1, s2 in zip(total.tolist(), total_sq.tolist(), strict=True):
        mean = s1 / count  # in 0..255 units
        var = max(s2 / count - mean * mean, 0.0)
        means.append(mean / 255.0)
        stds.append(max(math.sqrt(var) / 255.0, 1e-6))
    return means, stds
