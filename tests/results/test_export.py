from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from search.cli import main
from search.config import config_from_dict
from search.engine.data import load_splits
from search.engine.device import autocast
from search.results.export import (
    build_from_config,
    export_trial,
    load_export,
    predict_files,
    predict_tensor,
)
from search.results.export_folder import export_precision
from search.store.artifacts import WEIGHTS_ATTR, WeightStore
from search.store.records import PRECISION_ATTR
from search.study.recipe import rebuild, trials_with_weights
from search.study.stored import study_config
from tests.conftest import CIFAR_SAMPLE, run_cli
from tests.studies import build_study, cifar_sample_config, db_url
from tests.studies import study_config as raw_config

LINE = re.compile(r"^(?P<path>\S+): (?P<rest>.+)$")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study]:
    """3 one-epoch digits trials; only the best keeps its weights (keep_top_k 1)."""
    root = tmp_path_factory.mktemp("export")
    raw = raw_config(root, train={"epochs": 1, "patience": 1}, search={"keep_top_k": 1})
    return root, build_study(raw)


def _val_images(study: optuna.Study) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = study_config(study)
    splits = load_splits(cfg.data, cfg.seed)
    return splits.val.images, splits.val.labels


def test_export_cli_writes_weights_config_and_card(digits: tuple[Path, optuna.Study]) -> None:
    root, study = digits
    best = study.best_trial
    proc = run_cli("export", "tiny", "--storage", db_url(root), cwd=root, check=0)
    folder = root / "storage" / "exports" / "tiny" / f"trial-{best.number}"
    assert f"exported trial {best.number}" in proc.stdout and str(folder.relative_to(root)) in proc.stdout
    state = torch.load(folder / "best.pt", weights_only=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == {
        "c1": best.params["c1"],
        "c2": 8,
        "l1": 16,
        "padding": 1,
        "dropout": [0.1, 0.5],
        "stages": 2,
        "kernel_size": 3,
        "pool": "none",
        "head": "flatten",
        "batchnorm": False,
        "residual": False,
        "block": "plain",
        "arch": "convnet",
        "init_from": None,
    }
    assert config["family"] == "convnet/plain" and config["init_from"] is None
    assert config["in_shape"] == [1, 8, 8] and config["color_mode"] == "L"
    assert config["classes"] == [str(i) for i in range(10)] and config["n_classes"] == 10
    data = study.user_attrs["data"]
    assert config["normalize"] == {"mean": data["mean"], "std": data["std"]}
    assert config["val_accuracy"] == best.value and config["train"]["lr"] == best.params["lr"]
    fresh = build_from_config(config)
    fresh.load_state_dict(state)  # strict: every key and shape matches
    # an export from before the configurable net records only widths, padding and dropout
    old = {k: config["model"][k] for k in ("c1", "c2", "l1", "padding", "dropout")}
    build_from_config({**config, "model": old}).load_state_dict(state)
    card = (folder / "README.md").read_text()
    assert f"{best.value:.4f}" in card and "load_export" in card and "digits" in card
    assert f"{sum(p.numel() for p in fresh.parameters()):,}" in card


def test_exported_weights_give_the_trials_predictions(
    digits: tuple[Path, optuna.Study], tmp_path: Path
) -> None:
    _, study = digits
    cfg = study_config(study)
    best = study.best_trial
    done = export_trial(study, cfg, out=tmp_path / "e")
    model, transform, config = load_export(done.out)
    assert not model.training
    images, labels = _val_images(study)
    precision = export_precision(config)  # what the trial trained in
    assert precision == best.user_attrs[PRECISION_ATTR]
    probs = predict_tensor(model, transform, images, precision)
    # the same weights straight from the artifact store, in a model built the way trials build it
    recipe = rebuild(study, best)
    reference = recipe.model()
    reference.load_state_dict(WeightStore(cfg.artifacts_dir).load(best.user_attrs[WEIGHTS_ATTR]))
    reference.eval()
    assert [config["normalize"]["mean"], config["normalize"]["std"]] == [
        list(recipe.data.mean),
        list(recipe.data.std),
    ]
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        ref_logits = reference(recipe.transform()(images, train=False))
    assert torch.equal(probs, ref_logits.float().softmax(1))
    # and the trial's recorded validation accuracy
    assert int((probs.argmax(1) == labels).sum()) / len(labels) == best.value


def test_predict_cli_prints_top3_per_image(digits: tuple[Path, optuna.Study], tmp_path: Path) -> None:
    _, study = digits
    folder = export_trial(study, study_config(study), out=tmp_path / "e").out
    images, _ = _val_images(study)
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i, 0].numpy()).save(path)
        paths.append(path)
    big = tmp_path / "big_rgb.png"  # an RGB 32x32 picture: converted to grayscale, resized to 8x8
    Image.fromarray(images[0, 0].numpy()).convert("RGB").resize((32, 32)).save(big)
    proc = run_cli("predict", str(folder), *map(str, [*paths, big]), cwd=tmp_path, check=0)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4
    model, transform, config = load_export(folder)
    expected = predict_tensor(model, transform, images[:3], export_precision(config)).argmax(1).tolist()
    for i, line in enumerate(lines):
        m = LINE.match(line)
        assert m is not None, line
        pairs = re.findall(r"(\S+) (\d\.\d{3})", m["rest"])
        assert len(pairs) == 3
        probs = [float(p) for _, p in pairs]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.001
        assert all(name in [str(d) for d in range(10)] for name, _ in pairs)
        if i < 3:
            assert m["path"] == str(paths[i]) and pairs[0][0] == str(expected[i])


def test_export_of_a_trial_without_weights_exits_2(
    digits: tuple[Path, optuna.Study], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, study = digits
    monkeypatch.chdir(root)
    kept = trials_with_weights(study, WeightStore(study_config(study).artifacts_dir))
    assert kept == [study.best_trial.number]  # keep_top_k: 1
    other = next(t.number for t in study.trials if t.number not in kept)
    assert main(["export", "tiny", "--storage", db_url(root), "--trial", str(other), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"trial {other} of study 'tiny' has no weights" in err
    assert f"Trials that still have weights: {kept[0]}." in err and "--trial" in err
    assert not (root / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "nope"], "no study named 'nope'"),
        (["export", "tiny", "--trial", "99"], "trial 99 of study 'tiny' is not a completed trial"),
        (["predict", "no-such-dir", "a.png"], "no-such-dir is not an export folder"),
    ],
)
def test_bad_input_exits_2(
    digits: tuple[Path, optuna.Study],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    root, _ = digits
    monkeypatch.chdir(root)
    storage = ["--storage", db_url(root)] if args[0] == "export" else []
    assert main([*args, *storage]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err


def test_predict_unreadable_image_exits_2(
    digits: tuple[Path, optuna.Study], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, study = digits
    folder = export_trial(study, study_config(study), out=tmp_path / "e").out
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert main(["predict", str(folder), str(bad)]) == 2
    assert f"cannot read image {bad}" in capsys.readouterr().err


def test_cifar_sample_export_and_predict(tmp_path: Path) -> None:
    raw = cifar_sample_config(tmp_path, search={"n_trials": 2})
    study = build_study(raw)
    done = export_trial(study, config_from_dict(raw), out=tmp_path / "e")
    config = done.config
    assert config["in_shape"] == [3, 32, 32] and config["color_mode"] == "RGB"
    assert config["classes"][:2] == ["airplane", "automobile"] and len(config["classes"]) == 10
    files = [sorted((CIFAR_SAMPLE / c).iterdir())[0] for c in ("cat", "frog")]
    results = predict_files(done.out, files)
    assert len(results) == 2
    for top in results:
        assert len(top) == 3 and all(name in config["classes"] for name, _ in top)
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    # the file path gives the same answer as the decoded tensor the study trained on
    model, transform, _ = load_export(done.out)
    arr = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    probs = predict_tensor(model, transform, torch.from_numpy(arr.copy())[None])
    assert config["classes"][int(probs.argmax())] == results[0][0][0]


# --------------------------------------------------------------------------- round two: faults

BAD_WEIGHTS = {
    "truncated": lambda good: good[: len(good) // 2],
    "random": lambda good: bytes(range(256)) * 10,
    "pickled-code": lambda good: __import__("pickle").dumps({"w": _Payload()}, protocol=2),
}


class _Payload:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("pwned",))


@pytest.fixture
def own_study(tmp_path: Path) -> tuple[Path, optuna.Study]:
    """A one-trial study of this test's own (its weights get corrupted)."""
    raw = raw_config(tmp_path, train={"epochs": 1, "patience": 1}, search={"n_trials": 1})
    return tmp_path, build_study(raw)


@pytest.mark.parametrize("kind", sorted(BAD_WEIGHTS))
def test_bad_weights_exit_2_naming_the_file(
    own_study: tuple[Path, optuna.Study], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Truncated, random or pickled-code weights: `export`, `finetune` and `predict` exit 2 naming
    the file, never suggest weights_only=False, and write nothing."""
    root, study = own_study
    cfg = study_config(study)
    exported = export_trial(study, cfg, out=root / "good").out
    artifact = Path(cfg.artifacts_dir) / study.best_trial.user_attrs[WEIGHTS_ATTR]
    artifact.write_bytes(BAD_WEIGHTS[kind](artifact.read_bytes()))
    (exported / "best.pt").write_bytes(BAD_WEIGHTS[kind]((exported / "best.pt").read_bytes()))
    image = root / "x.png"
    Image.new("L", (8, 8)).save(image)
    commands = {
        "export": (["export", "tiny", "--storage", db_url(root), "--out", str(root / "e")], artifact),
        "finetune": (
            ["finetune", "tiny", "--storage", db_url(root), "--device", "cpu", "--out", str(root / "f")],
            artifact,
        ),
        "predict": (["predict", str(exported), str(image)], exported / "best.pt"),
    }
    for args, path in commands.values():
        assert main(args) == 2, args
        out = capsys.readouterr()
        assert out.err.count("error:") == 1 and str(path) in out.err, out.err
        assert "weights_only=False" not in out.err and "pwned" not in out.out
    assert not (root / "e").exists() and not (root / "f").exists()


def test_predict_a_decompression_bomb_exits_2(digits: tuple[Path, optuna.Study], tmp_path: Path) -> None:
    from tests.engine.test_data import _bomb_png

    _, study = digits
    folder = export_trial(study, study_config(study), out=tmp_path / "e").out
    bomb = _bomb_png(tmp_path / "bomb.png")
    proc = run_cli("predict", str(folder), str(bomb), cwd=tmp_path, check=2)
    assert f"image {bomb} is too large to decode safely" in proc.stderr and "Traceback" not in proc.stderr


def test_export_with_a_non_utf8_class_folder_and_no_half_written_files(tmp_path: Path) -> None:
    from tests.engine.test_data import _folder

    root = _folder(tmp_path / "imgs", [b"caf\xe9", "b"])
    raw = raw_config(
        tmp_path,
        data={"dataset": "imagefolder", "root": str(root), "cache_dir": str(tmp_path / "cache")},
        train={"epochs": 1, "patience": 1},
        search={"n_trials": 1},
    )
    study = build_study(raw)
    proc = run_cli("export", "tiny", "--storage", db_url(tmp_path), "--out", "e", cwd=tmp_path, check=0)
    config = json.loads((tmp_path / "e" / "config.json").read_text(encoding="utf-8"))
    assert config["classes"] == ["b", "caf\\xe9"]
    assert "caf\\xe9" in (tmp_path / "e" / "README.md").read_text(encoding="utf-8")
    image = next((root / "b").iterdir())
    proc = run_cli("predict", "e", str(image), cwd=tmp_path, check=0)
    assert "caf\\xe9" in proc.stdout or "b " in proc.stdout

    # A write that fails half-way (here: the card's temp name is taken by a folder) leaves nothing.
    (tmp_path / "e2" / ".README.md.tmp").mkdir(parents=True)
    proc = run_cli("export", "tiny", "--storage", db_url(tmp_path), "--out", "e2", cwd=tmp_path, check=2)
    assert "cannot write the export to e2" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "e2").iterdir()) == [".README.md.tmp"]
    assert study.best_trial is not None


def test_predict_refuses_an_export_config_without_what_it_needs(
    digits: tuple[Path, optuna.Study], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json with "classes": [], too few names, a missing key, n_classes other than the
    weights' outputs (issue 26 row 11): exit 2 naming the file and the key, no IndexError."""
    _, study = digits
    good = export_trial(study, study_config(study), out=tmp_path / "good").out
    config = json.loads((good / "config.json").read_text())
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    cases = {
        "empty": ({**config, "classes": []}, "key 'classes' names 0 classes but n_classes is 10"),
        "two": ({**config, "classes": ["a", "b"]}, "key 'classes' names 2 classes but n_classes is 10"),
        "no-model": ({k: v for k, v in config.items() if k != "model"}, "key 'model' is missing"),
        "no-classes": ({k: v for k, v in config.items() if k != "classes"}, "key 'classes' is missing"),
        "one-class": ({**config, "n_classes": 1, "classes": ["a"]}, "key 'n_classes' is not a count of 2"),
        "shape": ({**config, "in_shape": [2, 8, 8]}, "key 'in_shape' is not [channels (1 or 3)"),
        "outputs": (
            {**config, "n_classes": 3, "classes": ["a", "b", "c"]},
            "key 'n_classes' is 3 but the weights in",
        ),
    }
    for name, (changed, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "best.pt").write_bytes((good / "best.pt").read_bytes())
        (folder / "config.json").write_text(json.dumps(changed))
        assert main(["predict", str(folder), str(image)]) == 2, name
        err = capsys.readouterr().err
        assert f"error: {folder / 'config.json'}: {message}" in err, err
    proc = run_cli("predict", str(tmp_path / "empty"), str(image), cwd=tmp_path, check=2)
    assert f"error: {tmp_path / 'empty' / 'config.json'}: key 'classes' names 0 classes" in proc.stderr
    assert "Fix: export the study again" in proc.stderr and "Traceback" not in proc.stderr
