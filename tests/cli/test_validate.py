"""`search validate` lists the data it will train on and warns, as `run` does, about data too small
for the config; it refuses (exit 2, nothing written) what `run` would refuse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from search.cli import main
from search.config import load_config
from search.engine.data import load_splits
from tests.conftest import REPO, cli_env, tiny_config, write_config


def _cli(capsys: pytest.CaptureFixture[str], *args: str, code: int) -> tuple[str, str]:
    """``search ARGS`` in-process; asserts the exit code; (stdout, stderr)."""
    capsys.readouterr()
    got = main(list(args))
    out, err = capsys.readouterr()
    assert got == code, f"exit {got}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def _folder(root: Path, sizes: dict[str, int]) -> Path:
    """An imagefolder of small PNG and JPEG files (a colour per class)."""
    from PIL import Image

    for c, (name, n) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * c, i, 0)).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _imagefolder_config(workdir: Path, root: Path, **data: Any) -> Path:
    raw = tiny_config(data={"dataset": "imagefolder", "root": str(root), **data})
    return write_config(workdir / "folder.yaml", raw)


def _warnings(err: str) -> list[str]:
    return [
        line.split(": ", 1)[1] for line in err.splitlines() if " WARNING search.study.preflight: " in line
    ]


def test_lists_every_class_with_the_counts_run_will_use(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(workdir / "images", {"cat": 60, "dog": 57, "eel": 55})
    cfg = _imagefolder_config(workdir, root, val_fraction=0.15)
    out, _ = _cli(capsys, "validate", str(cfg), code=0)
    lines = out.splitlines()
    assert lines[0].startswith("ok: study 'tiny' on imagefolder")
    assert lines[1] == f"data: imagefolder {root}, 3 classes, 172 images (train 117, val 21, test 34)"
    listed = [
        re.fullmatch(r"  (\w+) +(\d+)  \(train (\d+), val (\d+), test (\d+)\)", line) for line in lines[2:]
    ]
    assert all(listed) and len(listed) == 3
    rows = [(m[1], *map(int, m.groups()[1:])) for m in listed if m]
    assert [r[:2] for r in rows] == [("cat", 60), ("dog", 57), ("eel", 55)]

    # exactly what `run` splits: decode the same folder with the same config and compare
    splits = load_splits(load_config(cfg).data, load_config(cfg).seed, with_test=True)
    assert splits.test is not None
    per_split = [
        torch.bincount(s.labels, minlength=3).tolist() for s in (splits.train, splits.val, splits.test)
    ]
    assert [r[2:] for r in rows] == [tuple(col) for col in zip(*per_split, strict=True)]


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"cat": 4, "dog": 0}, "class folder {root}/dog has no images"),
        ({"cat": 4}, "data.root {root} has 1 class folder(s); a classifier needs at least 2"),
        (None, "data.root: folder not found (got '{root}')"),
    ],
    ids=["empty class", "single class", "missing root"],
)
def test_refuses_what_run_refuses_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], sizes: dict[str, int] | None, message: str
) -> None:
    root = workdir / "images"
    if sizes is not None:
        _folder(root, sizes)
    cfg = _imagefolder_config(workdir, root)
    before = sorted(workdir.rglob("*"))
    out, err = _cli(capsys, "validate", str(cfg), code=2)
    assert f"error: {message.format(root=root)}" in err and "Fix:" in err
    assert "ok:" not in out
    assert sorted(workdir.rglob("*")) == before
    if sizes is not None:  # run refuses the same folder with the same message
        assert message.format(root=root) in _cli(capsys, "run", str(cfg), "--device", "cpu", code=2)[1]
        assert sorted(workdir.rglob("*")) == before


def test_warns_of_few_steps_a_small_val_split_and_a_class_without_val_images(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(workdir / "images", {"cat": 60, "dog": 57, "eel": 55, "yak": 2})
    cfg = _imagefolder_config(workdir, root)  # tiny_config: batch_size choices [64]
    out, err = _cli(capsys, "validate", str(cfg), code=0)
    assert "  yak   2  (train 1, val 0, test 1)" in out
    steps, val, no_val = _warnings(err)
    assert steps == (
        "search.space.batch_size can be 64: on 125 training images that is 1 optimizer step per epoch "
        "(fewer than 4), and dropping the last partial batch leaves 61 images an epoch unseen. "
        "Fix: lower search.space.batch_size (choices up to 16: 16 gives 7 steps)"
    )
    assert val.startswith(
        "the validation split holds only 14 images: each validation image is worth 7.1 points"
    )
    assert val.endswith("Fix: add images or raise data.val_fraction (now 0.1)")
    assert no_val.startswith("class 'yak' (2 images) gets no validation image")


def test_the_bundled_digits_config_lists_its_counts_and_warns_of_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _cli(capsys, "validate", str(REPO / "study_configs" / "digits.yaml"), code=0)
    assert out.splitlines()[1] == "data: digits, 10 classes, 1797 images (train 1295, val 143, test 359)"
    assert "WARNING" not in err


def test_run_warns_once_before_training(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(workdir / "images", {"cat": 12, "dog": 12})
    raw = tiny_config(data={"dataset": "imagefolder", "root": str(root)}, train={"epochs": 1, "patience": 1})
    raw["search"]["n_trials"] = 1
    cfg = write_config(workdir / "folder.yaml", raw)
    out, err = _cli(capsys, "run", str(cfg), "--device", "cpu", code=0)
    warnings = _warnings(err)
    assert len(warnings) == 2, err
    assert warnings[0].startswith(
        "search.space.batch_size can be 64: on 18 training images that is 1 optimizer step"
    )
    assert "holds only 2 images: each validation image is worth 50.0 points" in warnings[1]
    assert err.index("batch_size can be 64") < err.index("data imagefolder: 18 train / 2 val")
    assert "study tiny: 1/1 trials finished" in out


def test_validate_of_an_imagefolder_imports_no_torch(workdir: Path) -> None:
    root = _folder(workdir / "images", {"cat": 5, "dog": 5})
    cfg = _imagefolder_config(workdir, root)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "search", "validate", str(cfg)],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "search.engine.counts" in imported and "  cat  5  (train 3, val 1, test 1)" in proc.stdout
    for heavy in ("torch", "optuna", "PIL"):
        assert heavy not in imported, heavy
