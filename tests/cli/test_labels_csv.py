"""``data.labels_csv``: images in one folder, their classes in a CSV of path,label rows. validate
lists it as it lists class folders; bad rows stop validate and run with exit 2, naming the row."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from search.config import DataConfig
from search.engine.data import load_splits
from tests.conftest import run_cli, tiny_config, write_config
from tests.photos import make_photos


def _csv_photos(root: Path, rows: list[str] | None = None) -> Path:
    """Photos of two shapes (``root/folders/<class>/``) copied into one folder, and
    ``root/labels.csv`` naming their classes."""
    make_photos(root / "folders", classes=2, per_class=10)
    (root / "all").mkdir()
    lines = ["path,label"]
    for photo in sorted((root / "folders").rglob("*.jpg")):
        name = f"{photo.parent.name}-{photo.name}"
        shutil.copyfile(photo, root / "all" / name)
        lines.append(f"all/{name},{photo.parent.name}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(lines + (rows or [])) + "\n")
    return csv


def _config(workdir: Path, csv: str) -> Path:
    data = {"dataset": "imagefolder", "labels_csv": csv, "image_size": 16}
    return write_config(workdir / "c.yaml", tiny_config(data=data, train={"epochs": 1, "patience": 1}))


def test_validate_lists_a_labels_csv_like_class_folders(workdir: Path) -> None:
    _csv_photos(workdir / "photos")
    proc = run_cli("validate", str(_config(workdir, "photos/labels.csv")), cwd=workdir, check=0)
    assert re.search(
        r"data: imagefolder .*labels\.csv, 2 classes, 20 images \(train \d+, val \d+, test \d+\)", proc.stdout
    )
    for name in ("circles", "squares"):
        assert re.search(rf"^\s+{name}\s+10\s+\(train \d+, val \d+, test \d+\)", proc.stdout, re.M)


def test_a_labels_csv_gives_the_class_folders_images(tmp_path: Path) -> None:
    csv = _csv_photos(tmp_path / "flat")
    by_csv = load_splits(
        DataConfig(dataset="imagefolder", labels_csv=str(csv), cache_dir=str(tmp_path / "c"), image_size=16),
        seed=0,
    )
    by_folder = load_splits(
        DataConfig(
            dataset="imagefolder",
            root=str(tmp_path / "flat" / "folders"),
            cache_dir=str(tmp_path / "c"),
            image_size=16,
        ),
        seed=0,
    )
    assert by_csv.classes == by_folder.classes == ("circles", "squares")
    for a, b in ((by_csv.train, by_folder.train), (by_csv.val, by_folder.val)):
        assert torch.equal(a.images, b.images)
        assert a.labels.tolist() == b.labels.tolist()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("all/nowhere.jpg,circles", r"row 22: image .*nowhere\.jpg not found"),
        ("all/circles-IMG_0001.jpg,", r"row 22 has an empty label"),
        (",circles", r"row 22 has an empty path"),
        ("all/circles-IMG_0001.jpg,circles,extra", r"row 22 has 3 column\(s\), not 2"),
    ],
)
def test_a_bad_row_exits_2_naming_it(workdir: Path, row: str, message: str) -> None:
    _csv_photos(workdir / "photos", [row])  # the header, 20 photos, then the bad row: row 22
    config = _config(workdir, "photos/labels.csv")
    for command in (["validate"], ["run", "--device", "cpu"]):
        proc = run_cli(*command, str(config), cwd=workdir, check=2)
        assert re.search(rf"error: data\.labels_csv .*labels\.csv {message}", proc.stderr), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (workdir / "storage").exists()  # nothing written


def test_an_unreadable_or_missing_csv_exits_2(workdir: Path) -> None:
    (workdir / "labels.csv").write_bytes(b"\xff\xfe\x00bad,\x99\n")
    proc = run_cli("run", str(_config(workdir, "labels.csv")), "--device", "cpu", cwd=workdir, check=2)
    assert "cannot read data.labels_csv" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("validate", str(_config(workdir, "missing.csv")), cwd=workdir, check=2)
    assert "data.labels_csv: file not found" in proc.stderr
