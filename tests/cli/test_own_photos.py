"""A folder of photos, end to end as README's "Your own photos" walks it: validate, a short run, report,
finetune, predict on the fine-tuned model, from a working directory outside the repository, with
the bundled study_configs/imagefolder.yaml. The photos are JPEGs of several sizes, some stored
rotated with an EXIF orientation tag (as phone cameras write them)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_cli
from tests.photos import draw_photo, make_photos, save_photo

CONFIG = REPO / "study_configs" / "imagefolder.yaml"
SHORT = [
    "--set", "data.root=photos",
    "--set", "data.image_size=32",
    "--set", "search.n_trials=2",
    "--set", "train.epochs=2",
    "--set", "finetune.epochs=2",
    "--set", "search.space.batch_size={choices: [16]}",
    "--set", "search.space.c1={choices: [8]}",
    "--set", "search.space.c2={choices: [16]}",
    "--set", "search.space.l1={choices: [32]}",
]  # fmt: skip
CLASSES = ("circles", "squares", "triangles")


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory after validate, run, finetune and report (each must exit 0)."""
    work = tmp_path_factory.mktemp("own-photos")
    assert not work.is_relative_to(REPO)
    make_photos(work / "photos", classes=3, per_class=24)
    run_cli("validate", str(CONFIG), *SHORT, cwd=work, check=0)
    run = run_cli("run", str(CONFIG), *SHORT, cwd=work, check=0)
    (work / "run.out").write_text(run.stdout)
    run_cli("finetune", "imagefolder", cwd=work, check=0)
    run_cli("report", "imagefolder", cwd=work, check=0)
    return work


def test_run_trains_the_photos_and_says_what_to_do_next(walked: Path) -> None:
    out = (walked / "run.out").read_text()
    assert re.search(r"study imagefolder: 2/2 trials finished", out)
    assert "search report imagefolder" in out and "search finetune imagefolder" in out


def test_validate_lists_the_photos_without_decoding_them(tmp_path: Path) -> None:
    make_photos(tmp_path / "photos", classes=3, per_class=24)
    proc = run_cli("validate", str(CONFIG), *SHORT, cwd=tmp_path, check=0)
    assert re.search(r"3 classes, 72 images \(train \d+, val \d+, test \d+\)", proc.stdout)
    for name in CLASSES:
        assert re.search(rf"^\s+{name}\s+24\s+\(train \d+, val \d+, test \d+\)", proc.stdout, re.M)
    assert "each validation image is worth" in proc.stderr
    assert not (tmp_path / "storage").exists()  # validate writes nothing


def test_the_fine_tuned_model_predicts_a_new_photo(walked: Path, tmp_path: Path) -> None:
    folder = walked / "storage" / "finetune" / "imagefolder"
    config = json.loads((folder / "config.json").read_text())
    assert config["classes"] == list(CLASSES)
    photo = tmp_path / "new.jpg"
    save_photo(draw_photo("triangle", (300, 200), random.Random(7)), photo, exif_rotated=False)
    proc = run_cli("predict", str(folder), str(photo), cwd=walked, check=0)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{photo}: ")
    probs = [float(p) for p in re.findall(r"(?:circles|squares|triangles) ([0-9.]+)", line)]
    assert len(probs) == 3 and abs(sum(probs) - 1.0) < 0.01


def test_predict_reads_an_exif_rotated_photo_upright(walked: Path, tmp_path: Path) -> None:
    """The same picture stored upright and stored sideways with an orientation tag reaches the
    fine-tuned model as the same input (predict applies the tag, as the training decoder does)."""
    from search.results.export_folder import load_images, read_export_config

    picture = draw_photo("triangle", (320, 240), random.Random(3))
    upright, tagged, sideways = tmp_path / "upright.jpg", tmp_path / "tagged.jpg", tmp_path / "sideways.jpg"
    save_photo(picture, upright, exif_rotated=False)
    save_photo(picture, tagged, exif_rotated=True)
    Image.open(tagged).save(sideways, quality=90)  # the same pixels without the tag
    assert Image.open(tagged).size == (240, 320)  # stored sideways
    folder = walked / "storage" / "finetune" / "imagefolder"
    images = load_images([upright, tagged, sideways], read_export_config(folder)).float()
    assert (images[1] - images[0]).abs().mean() < 3.0  # the same picture, up to JPEG noise
    assert (images[2] - images[0]).abs().mean() > 3 * (images[1] - images[0]).abs().mean()
    proc = run_cli("predict", str(folder), str(upright), str(tagged), cwd=walked, check=0)
    first, second = (line.split(": ", 1)[1].split()[0] for line in proc.stdout.strip().splitlines()[-2:])
    assert first == second  # the same top class


def test_the_report_shows_the_fine_tune_stage(walked: Path) -> None:
    summary = json.loads((walked / "storage" / "reports" / "imagefolder" / "summary.json").read_text())
    assert "finetune" in json.dumps(summary)


def test_the_app_says_it_serves_the_fine_tuned_model(walked: Path) -> None:
    from search.serve.app import load_predictor

    folder = walked / "storage" / "finetune" / "imagefolder"
    finetune = json.loads((folder / "config.json").read_text())["finetune"]
    text = load_predictor(folder).description()
    assert "(fine-tuned)" in text
    assert f"test accuracy **{finetune['test_accuracy']:.4f}** on {finetune['n_test']} images" in text
