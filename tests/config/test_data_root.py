"""Where a relative data.root is looked up: the working directory first, then the folder of the
config file that set it; the first that exists is used, as an absolute path. Through the CLI."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.cli import main
from search.config import load_config
from tests.conftest import CIFAR_SAMPLE, REPO, tiny_config, write_config

BUNDLED_SAMPLE = REPO / "study_configs" / "cifar10_sample.yaml"
FIX = "Fix: point data.root at a folder with one sub-folder of images per class"


def _imagefolder(root: Path, classes: int = 2, per_class: int = 12) -> Path:
    """A tiny ImageFolder: ``classes`` folders of 8x8 PNGs, each class its own colour."""
    from PIL import Image

    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (120 * c + i, 40, 200 - 90 * c)).save(folder / f"{i}.png")
    return root


def _folder_config(path: Path, root: str, **sections: object) -> Path:
    raw = tiny_config(data={"dataset": "imagefolder", "root": root}, **sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_config(path, raw)


def test_the_bundled_sample_config_validates_from_a_directory_outside_the_repo(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert REPO not in workdir.parents
    assert main(["validate", str(BUNDLED_SAMPLE)]) == 0
    assert "ok: study 'cifar10_sample' on imagefolder" in capsys.readouterr().out
    assert load_config(BUNDLED_SAMPLE).data.root == str(CIFAR_SAMPLE)  # absolute: every step reads it
    assert not (workdir / "storage").exists()


def test_the_bundled_sample_config_finds_the_same_folder_from_the_repo_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert not (REPO.parent / "tests" / "data" / "cifar10-sample").exists()  # nothing else is found first
    assert main(["validate", "study_configs/cifar10_sample.yaml"]) == 0
    assert "ok: study 'cifar10_sample' on imagefolder" in capsys.readouterr().out
    assert load_config("study_configs/cifar10_sample.yaml").data.root == str(CIFAR_SAMPLE)


def test_a_root_relative_to_the_working_directory_still_works_and_wins(workdir: Path) -> None:
    _imagefolder(workdir / "images")
    _imagefolder(workdir / "configs" / "images")  # also next to the config: the working directory wins
    cfg = _folder_config(workdir / "configs" / "c.yaml", "images")
    assert main(["validate", str(cfg)]) == 0
    assert load_config(cfg).data.root == str(workdir / "images")


def test_a_root_relative_to_the_config_file_is_found_from_elsewhere(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _imagefolder(workdir / "project" / "images")
    cfg = _folder_config(workdir / "project" / "configs" / "c.yaml", "../images")
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    assert main(["validate", str(cfg)]) == 0
    assert load_config(cfg).data.root == str(workdir / "project" / "images")


def test_a_missing_root_names_every_place_looked(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _folder_config(workdir / "configs" / "c.yaml", "nope")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: data.root: folder not found (got 'nope'). Looked in {workdir / 'nope'} and "
        f"{workdir / 'configs' / 'nope'}. {FIX}\n"
    )
    assert main(["run", str(cfg), "--device", "cpu"]) == 2  # run refuses it the same way, writing nothing
    assert capsys.readouterr().err == err
    assert not (workdir / "storage").exists()


def test_a_root_set_on_the_command_line_is_looked_up_in_the_working_directory_only(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _imagefolder(workdir / "configs" / "images")  # next to the config, but --set is not the file
    cfg = _folder_config(workdir / "configs" / "c.yaml", "nope")
    assert main(["validate", str(cfg), "--set", "data.root=images"]) == 2
    assert capsys.readouterr().err == (
        f"error: data.root: folder not found (got 'images'). Looked in {workdir / 'images'}. {FIX}\n"
    )
    assert load_config(cfg, ["data.root=configs/images"]).data.root == str(workdir / "configs" / "images")


def test_an_absolute_missing_root_keeps_its_message(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = workdir / "absent"
    cfg = _folder_config(workdir / "c.yaml", str(missing))
    assert main(["validate", str(cfg)]) == 2
    assert capsys.readouterr().err == f"error: data.root: folder not found (got '{missing}'). {FIX}\n"


def test_output_paths_stay_relative_to_the_working_directory(workdir: Path) -> None:
    _imagefolder(workdir / "configs" / "images")
    (workdir / "configs" / "storage" / "data" / "cache").mkdir(parents=True)  # never looked up
    raw = tiny_config(data={"dataset": "imagefolder", "root": "images", "cache_dir": "storage/data/cache"})
    cfg = load_config(write_config(workdir / "configs" / "c.yaml", raw))
    assert cfg.data.root == str(workdir / "configs" / "images")
    assert (cfg.data.cache_dir, cfg.artifacts_dir, cfg.checkpoints_dir) == (
        "storage/data/cache",
        "storage/artifacts",
        "storage/checkpoints",
    )
    assert cfg.storage == "sqlite:///storage/studies.db"


def test_datasets_that_do_not_read_the_root_keep_it_as_written(workdir: Path) -> None:
    (workdir / "storage" / "data").mkdir(parents=True)
    for dataset in ("digits", "synthetic"):
        raw = tiny_config(data={"dataset": dataset, "root": "storage/data"})
        assert load_config(write_config(workdir / "c.yaml", raw)).data.root == "storage/data"
    raw = tiny_config(data={"dataset": "mnist", "root": "downloads"})  # not there yet: torchvision makes it
    assert load_config(write_config(workdir / "c.yaml", raw)).data.root == "downloads"


def _stored_root(workdir: Path, name: str, root: str) -> None:
    """Rewrite the study's stored config as a run before the lookup stored it: data.root as written."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/storage/studies.db")
    stored = dict(study.user_attrs["config"])
    stored["data"] = {**stored["data"], "root": root}
    study.set_user_attr("config", stored)


def test_a_study_stored_with_a_cwd_relative_root_resumes_with_the_config_relative_one(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled sample config said ``root: tests/data/...`` (relative to the clone's root) and now
    says ``../tests/data/...`` (relative to study_configs/): its studies resume from the clone's root."""
    _imagefolder(workdir / "tests" / "images")
    cfg = _folder_config(workdir / "study_configs" / "c.yaml", "../tests/images", train={"epochs": 1})
    assert main(["run", str(cfg), "--device", "cpu", "--n-trials", "1"]) == 0
    _stored_root(workdir, "tiny", "tests/images")
    capsys.readouterr()
    assert main(["run", str(cfg), "--device", "cpu", "--n-trials", "2"]) == 0
    assert "study tiny: 2/2 trials finished" in capsys.readouterr().out

    _imagefolder(workdir / "other")  # a stored root that is another folder is still refused
    _stored_root(workdir, "tiny", "other")
    assert main(["run", str(cfg), "--device", "cpu", "--n-trials", "3"]) == 2
    err = capsys.readouterr().err
    assert f'data.root: stored "{workdir / "other"}", now "{workdir / "tests" / "images"}"' in err
