from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from search.cli import main
from search.config import config_from_dict
from search.engine.data import load_splits
from search.engine.device import resolve_precision
from search.engine.evaluate import classification_metrics
from search.engine.inference import predict_logits
from search.results.export import load_export
from search.results.finetune import FINETUNE_ATTR, FinetuneSettings, finetune
from search.store.records import PRECISION_ATTR
from search.study.recipe import rebuild
from search.study.stored import study_config
from tests.conftest import CIFAR_SAMPLE, png_size, run_cli
from tests.studies import build_study, cifar_sample_config, db_url, fake_trial
from tests.studies import study_config as raw_config

Fixture = tuple[Path, optuna.Study, subprocess.CompletedProcess[str]]
LINE = re.compile(r"^(?P<path>\S+): (?P<rest>.+)$")  # a line of `search predict`


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """A 3-trial digits study, then `search finetune` with the study config's finetune defaults."""
    root = tmp_path_factory.mktemp("finetune")
    raw = raw_config(
        root,
        train={"epochs": 2, "patience": 1},
        finetune={"epochs": 2, "lr_scale": 0.5, "patience": 1},
    )
    study = build_study(raw)
    proc = run_cli("finetune", "tiny", "--storage", db_url(root), "--device", "cpu", cwd=root, check=0)
    return root, study, proc


def _metrics(root: Path) -> dict[str, object]:
    out: dict[str, object] = json.loads((root / "storage" / "finetune" / "tiny" / "metrics.json").read_text())
    return out


def test_same_seed_same_validation_split(tmp_path: Path) -> None:
    cfg = config_from_dict(raw_config(tmp_path))
    search_time = load_splits(cfg.data, cfg.seed, with_test=False)
    finetune_time = load_splits(cfg.data, cfg.seed, with_test=True)
    assert torch.equal(search_time.val.images, finetune_time.val.images)
    assert torch.equal(search_time.train.labels, finetune_time.train.labels)
    assert finetune_time.test is not None and search_time.test is None


def test_starts_from_the_trials_weights_and_accuracy(digits: Fixture) -> None:
    root, study, proc = digits
    best = study.best_trial
    m = _metrics(root)
    assert m["trial"] == best.number and m["trial_value"] == best.value
    assert m["start_val_acc"] == best.value  # exact: same weights, same seeded split
    logged = f"validation accuracy {best.value:.4f} before any update (trial value {best.value:.4f})"
    assert logged in proc.stderr and "differs" not in proc.stderr
    assert f"trial {best.number} val {best.value:.4f} ->" in proc.stdout
    # the ordering of the log: start accuracy first, then the first fine-tuning epoch, then the test
    start = proc.stderr.index("before any update")
    assert start < proc.stderr.index("finetune epoch 1") < proc.stderr.index("test accuracy")


def test_defaults_come_from_the_study_config(digits: Fixture) -> None:
    root, study, _ = digits
    m = _metrics(root)
    assert (m["epochs"], m["lr_scale"], m["patience"]) == (2, 0.5, 1)
    assert m["lr"] == pytest.approx(study.best_trial.params["lr"] * 0.5)
    assert 1 <= m["epochs_run"] <= 2 and 0 <= m["best_epoch"] <= m["epochs_run"]  # type: ignore[operator]
    assert m["final_val_acc"] >= m["start_val_acc"]  # type: ignore[operator]
    assert len(m["history"]) == m["epochs_run"]  # type: ignore[arg-type]


def test_test_metrics_cover_the_whole_test_set(digits: Fixture) -> None:
    root, study, _ = digits
    folder = root / "storage" / "finetune" / "tiny"
    cfg = study_config(study)
    test = load_splits(cfg.data, cfg.seed, with_test=True).test
    assert test is not None
    from sklearn.datasets import load_digits

    per_class = Counter(load_digits().target.tolist())
    assert len(test) == sum(round(0.2 * n) for n in per_class.values())  # 20 % held out per class

    confusion = pd.read_csv(folder / "confusion.csv", index_col=0)
    assert confusion.shape == (10, 10) and int(confusion.to_numpy().sum()) == len(test)
    assert list(confusion.sum(axis=1)) == [int((test.labels == c).sum()) for c in range(10)]
    m = _metrics(root)
    assert m["n_test"] == len(test)
    assert m["test_accuracy"] == pytest.approx(confusion.to_numpy().trace() / len(test))
    table = pd.read_csv(folder / "per_class.csv")
    assert list(table.columns) == ["class", "support", "correct", "accuracy", "precision", "recall", "f1"]
    assert len(table) == 10 and table["support"].sum() == len(test)
    diag = confusion.to_numpy().diagonal()
    assert list(table["accuracy"]) == pytest.approx(list(diag / confusion.to_numpy().sum(axis=1)))
    assert list(table["precision"]) == pytest.approx(list(diag / confusion.to_numpy().sum(axis=0)))

    # final.pt alone reproduces the test accuracy, in the net the trial's recipe builds
    state = torch.load(folder / "final.pt", weights_only=True)
    recipe = rebuild(study, study.best_trial)
    model = recipe.model()
    model.load_state_dict(state)
    precision = resolve_precision(recipe.cfg.train, test.images.device)  # the trial's, as finetune tested
    logits = predict_logits(model, test.images, recipe.transform(), precision=precision)
    assert int((logits.argmax(1) == test.labels).sum()) == int(diag.sum())
    best = torch.load(folder / "best.pt", weights_only=True)  # the export folder's name for them
    assert best.keys() == state.keys() and all(torch.equal(best[k], state[k]) for k in state)

    for name in ("confusion.png", "predictions.png", "filters.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    # saved large enough that the 11 pt titles of the 8x4 grid have room (was 896x512 with 7 pt)
    height, width = png_size(folder / "predictions.png")
    assert width >= 1200 and height >= 800


def test_results_recorded_on_the_study(digits: Fixture) -> None:
    root, study, _ = digits
    study = optuna.load_study(study_name="tiny", storage=db_url(root))
    recorded = study.user_attrs[FINETUNE_ATTR]
    m = _metrics(root)
    assert recorded["test_accuracy"] == m["test_accuracy"] and recorded["start_val_acc"] == m["start_val_acc"]
    cfg = study_config(study)
    metas = {meta.artifact_id: meta for meta in get_all_artifact_meta(study)}
    for name, artifact_id in recorded["artifacts"].items():
        assert artifact_id in metas and (Path(cfg.artifacts_dir) / artifact_id).is_file()
        assert metas[artifact_id].filename.endswith(name.split(".")[-1])


# ------------------------------------------------------------------------ the fine-tuned model as an export


def _test_pngs(study: optuna.Study, folder: Path, n: int = 6) -> tuple[list[Path], torch.Tensor]:
    """The first ``n`` test images of the study as PNG files (what a user would pass to predict)."""
    from PIL import Image

    cfg = study_config(study)
    test = load_splits(cfg.data, cfg.seed, with_test=True).test
    assert test is not None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"test{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    return paths, test.images[:n]


def _predicted(capsys: pytest.CaptureFixture[str], folder: Path, paths: list[Path]) -> list[str]:
    """`search predict FOLDER IMAGES` in-process: exit 0, the top class of each image."""
    assert main(["predict", str(folder), *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(paths)
    matches = [LINE.match(line) for line in lines]
    return [m["rest"].split()[0] for m in matches if m is not None]


def _fine_tuned_classes(study: optuna.Study, folder: Path, images: torch.Tensor) -> list[str]:
    """What the fine-tuned weights (final.pt) compute, in the net the trial's recipe builds."""
    recipe = rebuild(study, study.best_trial)
    model = recipe.model()
    model.load_state_dict(torch.load(folder / "final.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        logits = model(recipe.input_transform()(images, train=False))
    return [recipe.data.classes[int(i)] for i in logits.argmax(1)]


def test_predict_on_the_finetune_folder(digits: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    root, study, _ = digits
    folder = root / "storage" / "finetune" / "tiny"
    paths, images = _test_pngs(study, root / "images")
    assert _predicted(capsys, folder, paths) == _fine_tuned_classes(study, folder, images)
    # the app loads it as it loads an export (its page names the study and the trial)
    from search.serve.app import load_predictor

    predictor = load_predictor(folder)
    top = [max(predictor.top(images[i : i + 1]).items(), key=lambda kv: kv[1])[0] for i in range(len(paths))]
    assert top == _fine_tuned_classes(study, folder, images)
    assert f"tiny: trial {study.best_trial.number}" in predictor.description()


def test_finetune_folder_is_an_export_folder_with_a_model_card(digits: Fixture) -> None:
    root, study, _ = digits
    folder = root / "storage" / "finetune" / "tiny"
    m = _metrics(root)
    config = json.loads((folder / "config.json").read_text())
    export = json.loads(json.dumps(load_export(folder)[2]))
    assert export == config and config["format"] == 1 and config["trial"] == study.best_trial.number
    assert config["in_shape"] == [1, 8, 8] and config["classes"] == [str(i) for i in range(10)]
    assert config["val_accuracy"] == m["final_val_acc"]  # the model this folder holds
    ft = config["finetune"]
    for key in ("trial", "trial_value", "start_val_acc", "final_val_acc", "lr", "epochs", "test_accuracy"):
        assert ft[key] == m[key], key
    per_class = pd.read_csv(folder / "per_class.csv")
    assert [c["support"] for c in ft["test"]["per_class"]] == list(per_class["support"])
    assert ft["test"]["accuracy"] == m["test_accuracy"]
    card = (folder / "README.md").read_text()
    assert f"trial {study.best_trial.number}, fine-tuned" in card and "of study tiny" in card
    assert f"| test accuracy | {m['test_accuracy']:.4f} on {m['n_test']} images" in card
    trained = study.best_trial.user_attrs[PRECISION_ATTR]  # fine-tuned and tested in the trial's precision
    assert config["precision"] == trained and f"| precision | {trained} (" in card
    assert f"{m['start_val_acc']:.4f} at the start, {m['final_val_acc']:.4f} at the end" in card
    assert f"lr {m['lr']:.3g} (the trial's lr x 0.5), up to 2 epochs, patience 1" in card
    rows = [line for line in card.splitlines() if re.match(r"\| \d \| \d+ \| \d\.\d{4} \|", line)]
    assert len(rows) == 10 and rows[3].startswith(
        f"| 3 | {per_class['support'][3]} | {per_class['accuracy'][3]:.4f} |"
    )
    assert "search predict storage/finetune/tiny IMAGE" in card


def test_export_finetuned_copies_the_folder_and_predict_works_on_the_copy(
    digits: Fixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, study, _ = digits
    monkeypatch.chdir(root)
    source = root / "storage" / "finetune" / "tiny"
    assert main(["export", "tiny", "--storage", db_url(root), "--finetuned"]) == 0
    m = _metrics(root)
    copy = root / "storage" / "exports" / "tiny" / "finetuned"
    assert capsys.readouterr().out.strip() == (
        f"exported the fine-tuned model of trial {study.best_trial.number} (val accuracy "
        f"{m['final_val_acc']:.4f}, test accuracy {m['test_accuracy']:.4f}) to storage/exports/tiny/finetuned"
    )
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in source.iterdir())
    assert (copy / "best.pt").read_bytes() == (source / "best.pt").read_bytes()
    assert "search predict storage/exports/tiny/finetuned IMAGE" in (copy / "README.md").read_text()
    paths, images = _test_pngs(study, root / "images")
    assert _predicted(capsys, copy, paths) == _fine_tuned_classes(study, source, images)
    # a plain export still ships the trial's own weights, and says where the fine-tuned one is
    assert main(["export", "tiny", "--storage", db_url(root), "--out", str(root / "plain")]) == 0
    trial_state = torch.load(root / "plain" / "best.pt", weights_only=True)
    tuned_state = torch.load(copy / "best.pt", weights_only=True)
    assert m["best_epoch"] == 0 or any(not torch.equal(trial_state[k], tuned_state[k]) for k in trial_state)
    assert "`search export tiny --finetuned` exports that one" in capsys.readouterr().err


def test_report_shows_the_finetune_stage(digits: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    root, _, _ = digits
    out = root / "report"
    assert main(["report", "tiny", "--storage", db_url(root), "--out", str(out)]) == 0
    m = _metrics(root)
    line = (
        f"finetune: trial {m['trial']}, val {m['start_val_acc']:.4f} -> {m['final_val_acc']:.4f}, "
        f"test accuracy {m['test_accuracy']:.4f} on {m['n_test']} images (model in storage/finetune/tiny)"
    )
    assert line in capsys.readouterr().out.splitlines()
    assert f"- {line}" in (out / "report.md").read_text().splitlines()
    summary = json.loads((out / "summary.json").read_text())["finetune"]
    for key in (
        "trial",
        "start_val_acc",
        "final_val_acc",
        "test_accuracy",
        "n_test",
        "best_epoch",
        "epochs_run",
    ):
        assert summary[key] == m[key], key


def test_classification_metrics_known_values() -> None:
    m = classification_metrics(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]] and m.n == 5 and m.accuracy == 0.6
    a, b, c = m.per_class
    assert (a["precision"], a["recall"], a["f1"]) == (0.5, 0.5, 0.5)
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)


def test_cifar_sample_finetune(tmp_path: Path) -> None:
    raw = cifar_sample_config(tmp_path, search={"n_trials": 2})
    study = build_study(raw)
    cfg = config_from_dict(raw)
    res = finetune(study, cfg, torch.device("cpu"), FinetuneSettings(1, 0.8, 1), tmp_path / "ft")
    assert res.start_val_acc == study.best_value and res.trial == study.best_trial.number
    counts = [len(list(d.iterdir())) for d in sorted(CIFAR_SAMPLE.iterdir()) if d.is_dir()]
    assert res.test.n == sum(round(0.2 * n) for n in counts)
    confusion = pd.read_csv(tmp_path / "ft" / "confusion.csv", index_col=0)
    assert int(confusion.to_numpy().sum()) == res.test.n and confusion.columns[0] == "airplane"
    assert (tmp_path / "ft" / "filters.png").stat().st_size > 0


def test_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storage").mkdir()
    url = db_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr("config", raw_config(tmp_path))
    data = {"in_shape": [1, 8, 8], "classes": list("0123456789"), "mean": [0.3], "std": [0.4]}
    study.set_user_attr("data", data)
    params = {"c1": 4, "c2": 8, "l1": 16, "lr": 1e-3, "batch_size": 64}
    study.add_trial(fake_trial(0, TrialState.COMPLETE, 0.9, params, 10, 2))  # no weights saved

    assert main(["finetune", "s", "--storage", url, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trial 0 of study 's' has no weights" in err and "still have weights: none" in err
    assert main(["finetune", "nope", "--storage", url]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    assert main(["finetune", "s", "--storage", url, "--lr-scale", "0"]) == 2
    assert "--lr-scale: must be within (0, 10]" in capsys.readouterr().err
    assert main(["finetune", "s", "--storage", url, "--epochs", "0", "--patience", "2"]) == 2
    assert "error: --epochs: must be >= 1 (got 0). Fix: use e.g. 40" in capsys.readouterr().err
    assert main(["finetune", "../../escaped", "--storage", url]) == 2
    assert "error: STUDY: not a safe study name" in capsys.readouterr().err
    assert not (tmp_path / "storage" / "finetune").exists()
    # no fine-tune yet: export --finetuned names the command to run first
    assert main(["export", "s", "--storage", url, "--finetuned"]) == 2
    err = capsys.readouterr().err
    assert "error: study 's' has no fine-tuned model yet. Fix: run `search finetune s` first" in err
    assert main(["export", "s", "--storage", url, "--finetuned", "--trial", "0"]) == 2
    assert "error: --trial: not with --finetuned" in capsys.readouterr().err
    assert not (tmp_path / "storage" / "exports").exists()
