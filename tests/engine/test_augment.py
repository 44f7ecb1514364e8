"""Tests for search.engine.augment: batched per-sample augmentation and normalisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from search.config import ConfigError, config_from_dict
from search.engine.augment import (
    AugmentSpec,
    BatchTransform,
    _adjust_hue,
    _hue_matrices,
    _rotate,
    channel_stats,
)

MEAN3 = (0.49, 0.48, 0.45)
STD3 = (0.25, 0.24, 0.26)
IDENTITY3 = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean=0, std=1: output == x/255 (augmented)


def _images(n: int = 8, c: int = 3, h: int = 6, w: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


# ------------------------------------------------------------------------------------------
# Normalisation / eval path
# ------------------------------------------------------------------------------------------


def test_eval_path_is_exact_normalisation() -> None:
    images = _images(n=5, h=4, w=7)
    spec = AugmentSpec(hflip=True, crop_pad=2, rotate_deg=10, color_jitter=0.3, hue=0.1)
    out = BatchTransform(MEAN3, STD3, spec)(images, train=False, generator=_gen())
    assert out.dtype == torch.float32
    assert out.shape == images.shape
    assert out.device == images.device
    torch.testing.assert_close(out, _reference(images, MEAN3, STD3), rtol=0, atol=1e-6)


def test_train_with_disabled_spec_equals_eval() -> None:
    images = _images()
    spec = AugmentSpec()
    assert not spec.enabled
    transform = BatchTransform(MEAN3, STD3, spec)
    assert torch.equal(transform(images, train=True), transform(images, train=False))
    # spec=None behaves like an all-disabled spec
    assert torch.equal(BatchTransform(MEAN3, STD3)(images, train=True), transform(images, train=False))


def test_spec_enabled_flags() -> None:
    assert not AugmentSpec().enabled
    assert not AugmentSpec(rotate_deg=0.0, crop_pad=0).enabled
    for spec in (
        AugmentSpec(hflip=True),
        AugmentSpec(crop_pad=1),
        AugmentSpec(rotate_deg=5.0),
        AugmentSpec(color_jitter=0.1),
        AugmentSpec(hue=0.05),
    ):
        assert spec.enabled


def test_empty_batch() -> None:
    images = torch.zeros((0, 3, 4, 4), dtype=torch.uint8)
    spec = AugmentSpec(hflip=True, crop_pad=1, rotate_deg=5, color_jitter=0.2, hue=0.1)
    out = BatchTransform(MEAN3, STD3, spec)(images, train=True)
    assert out.shape == (0, 3, 4, 4)
    assert out.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Flip
# ------------------------------------------------------------------------------------------


def test_hflip_outputs_are_input_or_flip_and_both_occur() -> None:
    images = _images(n=64, h=4, w=5)
    mean, std = IDENTITY3
    out = BatchTransform(mean, std, AugmentSpec(hflip=True))(images, train=True, generator=_gen(1))
    x = images.float() / 255.0
    same = (out == x).flatten(1).all(dim=1)
    flipped = (out == x.flip(3)).flatten(1).all(dim=1)
    assert bool((same | flipped).all())
    assert bool((same & ~flipped).any())
    assert bool((flipped & ~same).any())


# ------------------------------------------------------------------------------------------
# Crop
# ------------------------------------------------------------------------------------------


def test_crop_constant_image_unchanged() -> None:
    images = torch.full((16, 3, 5, 5), 77, dtype=torch.uint8)
    transform = BatchTransform(MEAN3, STD3, AugmentSpec(crop_pad=2))
    out = transform(images, train=True, generator=_gen())
    assert out.shape == images.shape
    torch.testing.assert_close(out, transform(images, train=False), rtol=0, atol=0)


def test_crop_changes_random_images() -> None:
    images = _images(n=16)
    mean, std = IDENTITY3
    out = BatchTransform(mean, std, AugmentSpec(crop_pad=2))(images, train=True, generator=_gen())
    assert out.shape == images.shape
    differs = (out != images.float() / 255.0).flatten(1).any(dim=1)
    assert bool(differs.any())


@pytest.mark.parametrize(("pad", "size", "mode"), [(1, 4, "reflect"), (2, 3, "reflect"), (3, 3, "replicate")])
def test_crop_is_a_window_of_the_padded_input(pad: int, size: int, mode: str) -> None:
    images = _images(n=32, c=2, h=size, w=size, seed=3)
    transform = BatchTransform((0.0, 0.0), (1.0, 1.0), AugmentSpec(crop_pad=pad))
    out = transform(images, train=True, generator=_gen(5))
    padded = F.pad(images.float() / 255.0, (pad, pad, pad, pad), mode=mode)
    offsets = list(itertools.product(range(2 * pad + 1), repeat=2))
    seen = set()
    for i in range(images.shape[0]):
        matches = [
            (dy, dx)
            for dy, dx in offsets
            if torch.equal(out[i], padded[i, :, dy : dy + size, dx : dx + size])
        ]
        assert matches, f"sample {i} is not a window of the padded input"
        seen.update(matches)
    assert len(seen) > 1  # offsets really vary per sample


# ------------------------------------------------------------------------------------------
# Rotation
# ------------------------------------------------------------------------------------------


def test_rotate_zero_degrees_is_identity() -> None:
    images = _images()
    transform = BatchTransform(MEAN3, STD3, AugmentSpec(rotate_deg=0.0))
    assert torch.equal(transform(images, train=True, generator=_gen()), transform(images, train=False))
    x = images.float() / 255.0
    torch.testing.assert_close(_rotate(x, torch.zeros(x.shape[0])), x, rtol=0, atol=1e-5)


def test_rotate_90_degrees_matches_rot90() -> None:
    x = torch.rand(2, 3, 5, 5, generator=_gen())
    out = _rotate(x, torch.full((2,), math.pi / 2))
    candidates = [torch.rot90(x, k, dims=(2, 3)) for k in (1, -1)]
    assert any(torch.allclose(out, c, atol=1e-5) for c in candidates)


def test_rotate_non_square_image_without_shear() -> None:
    # A single bright pixel 2 px right of the centre of a 9x15 image must land 2 px above or
    # below the centre after a 90 degree turn (it would land off-grid if the grid were sheared).
    x = torch.zeros(1, 1, 9, 15)
    x[0, 0, 4, 9] = 1.0
    out = _rotate(x, torch.tensor([math.pi / 2]))
    expected = [torch.zeros_like(x), torch.zeros_like(x)]
    expected[0][0, 0, 2, 7] = 1.0
    expected[1][0, 0, 6, 7] = 1.0
    assert any(torch.allclose(out, e, atol=1e-5) for e in expected)


def test_rotate_keeps_shape_and_normalised_range() -> None:
    images = _images(n=16, h=7, w=5)
    transform = BatchTransform(MEAN3, STD3, AugmentSpec(rotate_deg=30.0))
    out = transform(images, train=True, generator=_gen())
    assert out.shape == images.shape
    low = _reference(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), MEAN3, STD3)
    high = _reference(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), MEAN3, STD3)
    assert bool((out >= low - 1e-5).all())
    assert bool((out <= high + 1e-5).all())
    assert not torch.allclose(out, transform(images, train=False))


# ------------------------------------------------------------------------------------------
# Colour
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        AugmentSpec(color_jitter=0.5),
        AugmentSpec(hue=0.5),
        AugmentSpec(color_jitter=0.9, hue=0.3),
    ],
)
def test_colour_ops_stay_in_unit_range_and_change_image(spec: AugmentSpec) -> None:
    images = _images(n=16)
    mean, std = IDENTITY3
    out = BatchTransform(mean, std, spec)(images, train=True, generator=_gen(2))
    assert out.shape == images.shape
    assert bool((out >= 0.0).all())
    assert bool((out <= 1.0).all())
    assert not torch.allclose(out, images.float() / 255.0, atol=1e-3)


def test_colour_ops_on_single_channel() -> None:
    images = _images(n=16, c=1)
    spec = AugmentSpec(color_jitter=0.5, hue=0.5)
    out = BatchTransform((0.0,), (1.0,), spec)(images, train=True, generator=_gen())
    assert out.shape == images.shape
    assert bool((out >= 0.0).all()) and bool((out <= 1.0).all())
    assert not torch.allclose(out, images.float() / 255.0, atol=1e-3)  # brightness/contrast
    # hue alone is skipped for one channel: identical to the eval path
    hue_only = BatchTransform((0.0,), (1.0,), AugmentSpec(hue=0.5))
    assert torch.equal(hue_only(images, train=True), hue_only(images, train=False))


def test_hue_rotation_keeps_grays_and_turns_red_towards_green() -> None:
    transform = BatchTransform(MEAN3, STD3)
    consts = transform._device_constants(torch.device("cpu"))
    gray = torch.full((1, 3, 2, 2), 0.4)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0

    def shift(x: torch.Tensor, turns: float) -> torch.Tensor:
        m = _hue_matrices(torch.tensor([turns]), consts.rgb_to_yiq, consts.yiq_to_rgb)
        return _adjust_hue(x.clone(), m)

    torch.testing.assert_close(shift(gray, 0.37), gray, rtol=0, atol=1e-5)
    torch.testing.assert_close(shift(red, 0.0), red, rtol=0, atol=1e-5)
    # Same direction as torchvision's ColorJitter hue: +1/3 turn maps red to (mostly) green.
    turned = shift(red, 1.0 / 3.0).flatten()
    assert int(turned.argmax()) == 1


# ------------------------------------------------------------------------------------------
# Randomness
# ------------------------------------------------------------------------------------------


def test_identical_samples_get_different_augmentations() -> None:
    one = _images(n=1, h=6, w=6, seed=7)
    images = one.expand(64, -1, -1, -1).contiguous()
    mean, std = IDENTITY3
    spec = AugmentSpec(hflip=True, crop_pad=2)
    out = BatchTransform(mean, std, spec)(images, train=True, generator=_gen())
    distinct = {tuple(sample.flatten().tolist()) for sample in out}
    assert len(distinct) > 5


def test_same_seed_same_output_different_seed_different_output() -> None:
    images = _images(n=16)
    spec = AugmentSpec(hflip=True, crop_pad=2, rotate_deg=15, color_jitter=0.4, hue=0.1)
    transform = BatchTransform(MEAN3, STD3, spec)
    a = transform(images, train=True, generator=_gen(42))
    b = transform(images, train=True, generator=_gen(42))
    c = transform(images, train=True, generator=_gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_used_without_generator() -> None:
    images = _images(n=16)
    transform = BatchTransform(MEAN3, STD3, AugmentSpec(hflip=True, crop_pad=2))
    torch.manual_seed(0)
    a = transform(images, train=True)
    torch.manual_seed(0)
    b = transform(images, train=True)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Memory format
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_channels_last(train: bool) -> None:
    images = _images()
    spec = AugmentSpec(hflip=True, crop_pad=1)
    out = BatchTransform(MEAN3, STD3, spec, channels_last=True)(images, train=train)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.shape == images.shape
    plain = BatchTransform(MEAN3, STD3, spec)(images, train=False)
    assert plain.is_contiguous()
    if not train:
        assert torch.equal(out, plain)


# ------------------------------------------------------------------------------------------
# channel_stats
# ------------------------------------------------------------------------------------------


def test_channel_stats_matches_torch() -> None:
    images = _images(n=10, c=3, h=5, w=4, seed=11)
    mean, std = channel_stats(images, batch=3)  # several chunks, last one partial
    x = images.double() / 255.0
    ref_mean = x.mean(dim=(0, 2, 3))
    ref_std = x.std(dim=(0, 2, 3), correction=0)
    assert len(mean) == len(std) == 3
    assert all(isinstance(v, float) for v in mean + std)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), ref_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref_std, rtol=0, atol=1e-5)
    # the chunk size does not change the result
    mean_one, std_one = channel_stats(images)
    assert mean_one == pytest.approx(mean, abs=1e-12)
    assert std_one == pytest.approx(std, abs=1e-12)


def test_channel_stats_constant_tensor_has_positive_std() -> None:
    images = torch.full((4, 2, 3, 3), 200, dtype=torch.uint8)
    mean, std = channel_stats(images)
    assert mean == pytest.approx([200 / 255, 200 / 255])
    assert all(s > 0 for s in std)
    out = BatchTransform(mean, std)(images, train=False)  # usable for normalisation
    assert bool(torch.isfinite(out).all())


def test_channel_stats_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        channel_stats(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        channel_stats(torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch"):
        channel_stats(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), batch=0)


# ------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean": (0.5, 0.5), "std": (0.2,)}, "same length"),
        ({"mean": (), "std": ()}, "empty"),
        ({"mean": (0.5,), "std": (0.0,)}, "std"),
        ({"mean": (0.5,), "std": (-1.0,)}, "std"),
        ({"mean": (0.5,), "std": (float("nan"),)}, "std"),
        ({"mean": (float("inf"),), "std": (1.0,)}, "mean"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"mean": (0.5,), "std": (0.2,), **kwargs}
    with pytest.raises(ValueError, match=match):
        BatchTransform(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_pad": -1}, "crop_pad"),
        ({"crop_pad": 1.5}, "crop_pad"),
        ({"rotate_deg": -1.0}, "rotate_deg"),
        ({"rotate_deg": 181.0}, "rotate_deg"),  # the config's bound, not a second copy
        ({"rotate_deg": float("inf")}, "rotate_deg"),
        ({"color_jitter": 1.0}, "color_jitter"),
        ({"color_jitter": -0.1}, "color_jitter"),
        ({"hue": 0.6}, "hue"),
        ({"hue": -0.1}, "hue"),
    ],
)
def test_bad_augment_specs_are_refused_when_built(kwargs: dict[str, object], match: str) -> None:
    """AugmentSpec is the config's data.augment section: the same bounds, checked on construction."""
    with pytest.raises(ValueError, match=match):
        AugmentSpec(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"data.augment.{match}"):
        config_from_dict({"data": {"augment": kwargs}})


def test_channel_mismatch_at_call_time_names_both_numbers() -> None:
    transform = BatchTransform(MEAN3, STD3)
    with pytest.raises(ValueError, match=r"1 channels.*3 entries"):
        transform(_images(c=1), train=False)


def test_bad_images_rejected() -> None:
    transform = BatchTransform(MEAN3, STD3)
    with pytest.raises(TypeError, match="uint8"):
        transform(torch.zeros(2, 3, 4, 4), train=False)
    with pytest.raises(ValueError, match="shape"):
        transform(torch.zeros(3, 4, 4, dtype=torch.uint8), train=False)


# ------------------------------------------------------------------------------------------
# Accelerator: no host<->device synchronisation
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_sync_and_device_preserved() -> None:
    images = _images(n=32, h=8, w=8).cuda()
    spec = AugmentSpec(hflip=True, crop_pad=2, rotate_deg=10, color_jitter=0.4, hue=0.1)
    transform = BatchTransform(MEAN3, STD3, spec, channels_last=True)
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    transform(images, train=True, generator=cuda_gen)  # warm-up: builds per-device constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = transform(images, train=True, generator=cuda_gen)
        out_eval = transform(images, train=False)
        out_cpu_gen = transform(images, train=True, generator=_gen(3))  # CPU generator works
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for o in (out, out_eval, out_cpu_gen):
        assert o.device == images.device
        assert o.dtype == torch.float32
        assert o.is_contiguous(memory_format=torch.channels_last)
    again = transform(images, train=True, generator=_gen(3))
    assert torch.equal(out_cpu_gen, again)
    torch.testing.assert_close(out_eval.cpu(), _reference(images.cpu(), MEAN3, STD3))
