from __future__ import annotations

import json
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
from search.engine.evaluate import classification_metrics
from search.engine.train import predict_logits
from search.results.finetune import FINETUNE_ATTR, FinetuneSettings, finetune
from search.study.objective import build_model, make_transform
from search.study.space import params_of
from search.study.stored import study_config
from tests.conftest import CIFAR_SAMPLE, png_size, run_cli
from tests.studies import build_study, cifar_sample_config, db_url, fake_trial
from tests.studies import study_config as raw_config

Fixture = tuple[Path, optuna.Study, subprocess.CompletedProcess[str]]


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

    # final.pt alone reproduces the test accuracy
    state = torch.load(folder / "final.pt", weights_only=True)
    model = build_model(cfg, params_of(study.best_trial.params, cfg.search.space), (1, 8, 8), 10)
    model.load_state_dict(state)
    data = study.user_attrs["data"]
    logits = predict_logits(model, test.images, make_transform(cfg, data["mean"], data["std"]))
    assert int((logits.argmax(1) == test.labels).sum()) == int(diag.sum())

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
