"""preflight: a config checked against its data's counts, as a library user calls it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from search.config import ParamSpec, StudyConfig, config_from_dict, load_config
from search.engine.counts import DataError
from search.study.preflight import preflight, sampled_batch_sizes
from tests.conftest import REPO, tiny_config


def _config(data: dict[str, Any], batch_size: Any = 64, **sections: Any) -> StudyConfig:
    raw = tiny_config(data=data, **sections)
    raw["search"]["space"]["batch_size"] = batch_size
    return config_from_dict(raw)


SMALL = {"dataset": "synthetic", "synthetic": {"n_classes": 2, "n_samples": 240}}  # 172 / 20 / 48 images


def _folder(root: Path, sizes: dict[str, int]) -> Path:
    from PIL import Image

    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (6, 6), (i, 0, 0)).save(root / name / f"{i}.jpg")
    return root


def test_the_bundled_digits_config_warns_of_nothing(caplog: pytest.LogCaptureFixture) -> None:
    report = preflight(load_config(REPO / "study_configs" / "digits.yaml"))
    c = report.counts
    assert (c.images, len(c.classes), c.train, c.val, c.test) == (1797, 10, 1295, 143, 359)
    assert report.warnings == ()
    assert report.listing() == ["data: digits, 10 classes, 1797 images (train 1295, val 143, test 359)"]
    with caplog.at_level(logging.WARNING):
        report.log_warnings()
    assert caplog.records == []


def test_too_few_steps_names_the_batch_size_the_drop_and_the_fix() -> None:
    (warning,) = [w for w in preflight(_config(SMALL, {"choices": [32, 64, 128]})).warnings if "batch" in w]
    assert warning.startswith("search.space.batch_size can be 64, 128: on 172 training images")
    assert "they give 2, 1 optimizer steps per epoch (fewer than 4)" in warning
    assert "dropping the last partial batch leaves 44, 44 images an epoch unseen" in warning
    assert warning.endswith("Fix: lower search.space.batch_size (choices up to 32: 32 gives 5 steps)")

    (warning,) = [w for w in preflight(_config(SMALL, 128)).warnings if "batch" in w]
    assert "is 128: on 172 training images that is 1 optimizer step per epoch" in warning
    assert "leaves 44 images an epoch unseen" in warning and "(value: 32 gives 5 steps)" in warning

    ranged = preflight(_config(SMALL, {"low": 16, "high": 95, "step": 10})).warnings
    assert any("can be 86: " in w and "(high: 32 gives 5 steps)" in w for w in ranged)  # 16 + 7 * 10


def test_enough_steps_is_no_warning() -> None:
    assert not any("batch" in w for w in preflight(_config(SMALL, {"choices": [16, 32]})).warnings)


def test_a_small_validation_split_says_what_one_image_is_worth() -> None:
    warnings = preflight(_config(SMALL, 16)).warnings
    assert warnings == (
        "the validation split holds only 20 images: each validation image is worth 5.0 points of "
        "accuracy, so trials closer than that are a tie. Fix: add images or raise data.val_fraction "
        "(now 0.1)",
    )
    big = {**SMALL, "val_fraction": 0.3}  # 2 x round(0.3 * 96) = 58: still under 100
    assert "only 58 images" in preflight(_config(big, 16)).warnings[0]
    assert "worth 1.7 points" in preflight(_config(big, 16)).warnings[0]


def test_a_class_without_a_validation_image_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": 40, "dog": 2, "yak": 1})
    warnings = preflight(_config({"dataset": "imagefolder", "root": str(root)}, 8)).warnings
    (line,) = [w for w in warnings if "no validation image" in w]
    assert line == (
        "classes 'dog' (2 images), 'yak' (1 image) get no validation image: with data.test_fraction 0.2 "
        "and data.val_fraction 0.1 a class needs at least 3 images. Fix: add images to them "
        "(or remove those classes)"
    )


def test_a_class_too_small_for_the_configured_folds_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": 40, "dog": 5})  # dog: 1 test, 4 train+val
    data = {"dataset": "imagefolder", "root": str(root)}
    assert not any("folds" in w for w in preflight(_config(data, 8)).warnings)  # confirm.folds 0: seeds
    (line,) = [w for w in preflight(_config(data, 8, confirm={"folds": 5})).warnings if "folds" in w]
    assert line.startswith(
        "class 'dog' (4 train+val images) holds fewer train+val images than confirm.folds (5)"
    )
    assert line.endswith("Fix: add images or lower confirm.folds")


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"cat": 3, "empty": 0}, r"class folder .*empty has no images"),
        ({"cat": 3}, r"data.root .*imgs has 1 class folder\(s\); a classifier needs at least 2"),
    ],
)
def test_refuses_what_run_refuses(tmp_path: Path, sizes: dict[str, int], message: str) -> None:
    root = _folder(tmp_path / "imgs", sizes)
    with pytest.raises(DataError, match=message):
        preflight(_config({"dataset": "imagefolder", "root": str(root)}))


def test_sampled_batch_sizes() -> None:
    assert sampled_batch_sizes(ParamSpec(value=48)) == [48]
    assert sampled_batch_sizes(ParamSpec(choices=(128, 32))) == [32, 128]
    assert sampled_batch_sizes(ParamSpec(low=16, high=95, step=10)) == [16, 86]
    assert sampled_batch_sizes(ParamSpec(low=16, high=100)) == [16, 100]
