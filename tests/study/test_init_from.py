"""model.init_from: every trial starts from a local state_dict file; what loads, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from search.cli import main
from search.config import ModelConfig
from search.engine.arch import build_model
from search.engine.weights import InitFromError, load_matching, read_init_state
from tests.conftest import tiny_config, write_config


def _synthetic(n_classes: int) -> dict[str, object]:
    return {
        "dataset": "synthetic",
        "synthetic": {"shape": [1, 8, 8], "n_classes": n_classes, "n_samples": 100},
    }


def _config(workdir: Path, name: str, n_classes: int, **model: object) -> Path:
    raw = tiny_config(name=name, data=_synthetic(n_classes), train={"epochs": 1, "patience": 1})
    raw["model"] = {**raw["model"], **model}
    raw["search"]["n_trials"] = 2
    raw["search"]["space"] = {**raw["search"]["space"], "c1": 4, "c2": 8, "l1": 16, "batch_size": 32}
    return write_config(workdir / f"{name}.yaml", raw)


class Payload:  # a pickled object: torch.load(weights_only=True) refuses to rebuild it
    pass


def test_a_4_class_export_starts_a_5_class_study_head_skipped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(_config(workdir, "four", 4)), "--device", "cpu"]) == 0
    assert main(["export", "four", "--out", "four-export"]) == 0
    exported = workdir / "four-export" / "best.pt"
    state = read_init_state(exported)
    assert read_init_state(workdir / "four-export").keys() == state.keys()  # the folder: its best.pt
    config = _config(workdir, "five", 5, init_from=str(exported))
    assert main(["validate", str(config)]) == 0
    assert main(["run", str(config), "--device", "cpu"]) == 0
    study = optuna.load_study(study_name="five", storage="sqlite:///storage/studies.db")
    head = {k for k, v in state.items() if k.startswith("classifier.4.")}  # Linear(l1 -> classes)
    assert head == {"classifier.4.weight", "classifier.4.bias"}
    for t in study.trials:
        assert t.user_attrs["init_from_loaded"] == len(state) - 2
        assert t.user_attrs["init_from_skipped"] == 2
    # the file is part of the experiment: the same path with other content is a config difference
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, exported)
    capsys.readouterr()
    assert main(["run", str(config), "--device", "cpu", "--n-trials", "3"]) == 2
    assert "data init_from_sha256: stored" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="five", storage="sqlite:///storage/studies.db").trials) == 2


def test_load_matching_loads_names_and_shapes_that_fit_and_counts_the_rest() -> None:
    torch.manual_seed(0)
    four = build_model(ModelConfig(), 4, 8, 16, (1, 8, 8), 4)
    five = build_model(ModelConfig(), 4, 8, 16, (1, 8, 8), 5)
    counts = load_matching(five, four.state_dict())
    assert (counts.loaded, counts.skipped) == (len(four.state_dict()) - 2, 2)
    assert torch.equal(five.state_dict()["features.0.weight"], four.state_dict()["features.0.weight"])
    assert five.state_dict()["classifier.4.weight"].shape == (5, 16)


def test_a_wrapped_state_dict_is_unwrapped(tmp_path: Path) -> None:
    model = build_model(ModelConfig(), 4, 8, 16, (1, 8, 8), 4)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # a checkpoint's layout
    assert read_init_state(tmp_path / "ckpt.pt").keys() == model.state_dict().keys()


@pytest.mark.parametrize("case", ["pickled code", "unreadable", "no state_dict", "no match", "missing"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_file_that_cannot_start_the_net_exits_2_naming_it(
    workdir: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    path = workdir / "weights.pt"
    if case == "pickled code":
        torch.save({"w": torch.zeros(2), "payload": Payload()}, path)
    elif case == "unreadable":
        path.write_bytes(b"not a torch file at all")
    elif case == "no state_dict":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif case == "no match":
        torch.save({"other.weight": torch.zeros(3, 3)}, path)
    config = _config(workdir, "bad", 3, init_from=str(path))
    args = [command, str(config), *(["--device", "cpu"] if command == "run" else [])]
    capsys.readouterr()
    if case == "no match" and command == "validate":
        assert main(args) == 0  # validate reads no data: whether the tensors fit is run's check
        return
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"model.init_from: {path}" in err or f"in {path}" in err, err
    assert "Fix:" in err
    assert not (workdir / "storage" / "studies.db").exists()
    if case == "pickled code":
        with pytest.raises(InitFromError, match="pickled code"):
            read_init_state(path)


def test_the_export_records_where_the_trials_started(workdir: Path) -> None:
    assert main(["run", str(_config(workdir, "four", 4)), "--device", "cpu", "--n-trials", "1"]) == 0
    assert main(["export", "four", "--out", "e"]) == 0
    config = _config(workdir, "again", 4, init_from=str(workdir / "e" / "best.pt"))
    assert main(["run", str(config), "--device", "cpu", "--n-trials", "1"]) == 0
    assert main(["export", "again", "--out", "e2"]) == 0
    exported = json.loads((workdir / "e2" / "config.json").read_text())
    assert exported["model"]["init_from"] == str(workdir / "e" / "best.pt")
    loaded = len(read_init_state(workdir / "e" / "best.pt"))  # same net, same classes: all of it
    assert exported["init_from"] == {"path": str(workdir / "e" / "best.pt"), "loaded": loaded, "skipped": 0}
    card = (workdir / "e2" / "README.md").read_text()
    assert f"| initialised from | {workdir / 'e' / 'best.pt'} ({loaded} tensors loaded, 0 freshly" in card


def test_a_sampled_family_the_file_does_not_fit_starts_fresh(tmp_path: Path) -> None:
    from search.config import config_from_dict
    from search.study.recipe import DataFacts, TrialRecipe

    path = tmp_path / "convnet.pt"
    torch.save(build_model(ModelConfig(), 4, 8, 16, (1, 8, 8), 3).state_dict(), path)
    space = {"model.arch": {"choices": ["convnet", "resnet18"]}}
    cfg = config_from_dict({"model": {"init_from": str(path)}, "search": {"space": space}})
    data = DataFacts((1, 8, 8), ("a", "b", "c"), (0.5,), (0.5,))
    widths = {"c1": 4, "c2": 8, "l1": 16}
    _, convnet = TrialRecipe.of(cfg, {**widths, "model.arch": "convnet"}, data).initial_model()
    model, resnet = TrialRecipe.of(cfg, {**widths, "model.arch": "resnet18"}, data).initial_model()
    assert convnet is not None and (convnet.loaded, convnet.skipped) == (
        len(torch.load(path, weights_only=True)),
        0,
    )
    assert resnet is not None and (resnet.loaded, resnet.skipped) == (0, len(model.state_dict()))
