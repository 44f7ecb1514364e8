"""TensorBoard logs: a study run with --tensorboard read back with TensorBoard's own reader and
checked against the trials' reported values and hparams (completed and pruned trials), a resumed
trial's continued steps, finetune's run (nothing written when off: tests/serve/test_app.py), and
`search tensorboard` serving the page over HTTP (bad input: missing extra, no logs, port in use)."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from search import cli
from search.config import config_from_dict
from search.store.artifacts import WeightStore
from search.study.objective import Objective
from search.study.run import Outcome, RunOptions, run_study
from search.study.workers import StopRequest
from tests.conftest import popen_cli, run_cli, tiny_config, write_config
from tests.serve.test_dashboard import free_port, interrupt, read_line_with

pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

EPOCH_TAGS = ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "images_per_s")


def read_run(folder: Path) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """The run's scalars ``{tag: {step: value}}`` and its hparams, via EventAccumulator."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams: dict[str, Any] = {}
    for name, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[name] = getattr(value, kind)
    return scalars, hparams


def check_trial_log(root: Path, trial: FrozenTrial) -> dict[str, dict[int, float]]:
    """The trial's log agrees with what it reported to Optuna: per-epoch val accuracy, params, state."""
    scalars, hparams = read_run(root / f"trial-{trial.number}")
    epochs = sorted(trial.intermediate_values)
    for tag in EPOCH_TAGS:
        assert sorted(scalars[tag]) == epochs, tag  # the step is the epoch
    for epoch, value in trial.intermediate_values.items():
        assert scalars["accuracy/val"][epoch] == pytest.approx(value, abs=1e-6)
    assert list(scalars["lr"].values()) == pytest.approx([trial.params["lr"]] * len(epochs))
    assert all(v > 0 for v in scalars["images_per_s"].values())
    assert all(0 <= v <= 1 for v in scalars["accuracy/train"].values())
    assert hparams["state"] == trial.state.name
    assert hparams["trial"] == trial.number
    for name, value in trial.params.items():
        assert hparams[name] == pytest.approx(value)
    assert scalars["hparam/epochs_run"] == {epochs[-1]: epochs[-1]}
    assert scalars["hparam/final_val_acc"][epochs[-1]] == pytest.approx(trial.intermediate_values[epochs[-1]])
    best = max(trial.intermediate_values.values()) if trial.value is None else trial.value
    assert scalars["hparam/best_val_acc"][epochs[-1]] == pytest.approx(best, abs=1e-6)
    return scalars


# --------------------------------------------------------------------------- a study with --tensorboard


@pytest.fixture(scope="module")
def logged_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[FrozenTrial]]:
    """`search run --tensorboard` on a tiny digits study whose median pruner prunes a bad-lr trial."""
    root = tmp_path_factory.mktemp("tb")
    raw = tiny_config(
        name="tb",
        train={"epochs": 2, "patience": 2},
        search={
            "n_trials": 3,
            "sampler": {"name": "grid"},
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
            "space": {
                "c1": 8,
                "c2": 8,
                "l1": 16,
                "lr": {"choices": [1.0e-2, 1.0e-5, 3.0e-3]},
                "batch_size": 64,
            },
        },
    )
    write_config(root / "tb.yaml", raw)
    run_cli("run", "tb.yaml", "--tensorboard", "--device", "cpu", cwd=root, check=0)
    study = optuna.load_study(study_name="tb", storage=f"sqlite:///{root}/storage/studies.db")
    return root, study.get_trials(deepcopy=False)


def test_every_trial_logs_its_reported_values_and_hparams(
    logged_study: tuple[Path, list[FrozenTrial]],
) -> None:
    root, trials = logged_study
    logs = root / "storage" / "tensorboard" / "tb"
    assert sorted(p.name for p in logs.iterdir()) == [f"trial-{t.number}" for t in trials]
    states = {t.state for t in trials}
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states, [t.state for t in trials]
    for trial in trials:
        scalars = check_trial_log(logs, trial)
        if trial.state == TrialState.PRUNED:  # its log stops at the epoch it was pruned after
            assert sorted(scalars["accuracy/val"]) == list(range(1, trial.user_attrs["pruned_at_epoch"] + 1))


def test_a_resumed_trial_continues_its_steps(tmp_path: Path) -> None:
    """A trial interrupted after epoch 1 is retried from its checkpoint: the retry's log holds the
    attempt's epoch 1 (from the checkpoint) and then epochs 2..3, each step once."""
    raw = tiny_config(
        name="resume",
        storage=f"sqlite:///{tmp_path}/studies.db",
        artifacts_dir=str(tmp_path / "artifacts"),
        checkpoints_dir=str(tmp_path / "checkpoints"),
        tensorboard_dir=str(tmp_path / "tb"),
        data={"dataset": "digits", "cache_dir": str(tmp_path / "cache")},
        train={"epochs": 3, "patience": 3, "tensorboard": True, "checkpoint_every_s": 0},
        search={**tiny_config()["search"], "n_trials": 1},
    )
    cfg = config_from_dict(raw)

    class AfterFirstEpoch(StopRequest):  # as if Ctrl-C came during the trial's first epoch
        def __call__(self) -> bool:
            trials = optuna.load_study(study_name="resume", storage=raw["storage"]).trials
            return any(t.intermediate_values for t in trials)

    stop = AfterFirstEpoch()
    objective = Objective(cfg, torch.device("cpu"), WeightStore(cfg.artifacts_dir), stop)
    assert run_study(cfg, RunOptions(objective=objective, stop=stop)).outcome is Outcome.INTERRUPTED
    assert run_study(cfg, RunOptions(device="cpu")).outcome is Outcome.COMPLETED
    study = optuna.load_study(study_name="resume", storage=raw["storage"])

    first, retry = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_trial"] == first.number
    assert retry.user_attrs["resumed_from_epoch"] == 1
    scalars, hparams = read_run(tmp_path / "tb" / "resume" / f"trial-{first.number}")
    assert sorted(scalars["accuracy/val"]) == [1]
    assert hparams["state"] == "INTERRUPTED"
    scalars, hparams = read_run(tmp_path / "tb" / "resume" / f"trial-{retry.number}")
    assert sorted(scalars["accuracy/val"]) == [1, 2, 3]
    assert scalars["accuracy/val"][1] == pytest.approx(first.intermediate_values[1], abs=1e-6)
    for epoch in (2, 3):
        assert scalars["accuracy/val"][epoch] == pytest.approx(retry.intermediate_values[epoch], abs=1e-6)
    assert hparams["state"] == "COMPLETE"
    assert scalars["hparam/best_val_acc"][3] == pytest.approx(retry.value, abs=1e-6)


def test_finetune_writes_its_run_beside_the_trials(logged_study: tuple[Path, list[FrozenTrial]]) -> None:
    root, trials = logged_study
    proc = run_cli("finetune", "tb", "--epochs", "2", "--patience", "2", "--device", "cpu", cwd=root, check=0)
    scalars, hparams = read_run(root / "storage" / "tensorboard" / "tb" / "finetune")
    assert sorted(scalars["accuracy/val"]) == [1, 2]
    assert hparams["state"] == "COMPLETE"
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value or 0.0)
    assert hparams["trial"] == best.number
    test_acc = float(proc.stdout.split("test accuracy ")[1].split()[0])
    assert scalars["hparam/test_acc"][2] == pytest.approx(test_acc, abs=1e-4)


# --------------------------------------------------------------------------- search tensorboard


def test_search_tensorboard_serves_the_logs(logged_study: tuple[Path, list[FrozenTrial]]) -> None:
    root, trials = logged_study
    port = free_port()
    proc = popen_cli("tensorboard", "tb", "--port", str(port), cwd=root)
    try:
        url = read_line_with(proc, "http://", timeout_s=120)
        assert url.startswith(f"http://127.0.0.1:{port}")
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200
            assert b"TensorBoard" in resp.read()
        runs = read_json(f"{url.rstrip('/')}/data/runs")
        on_disk = {p.name for p in (root / "storage" / "tensorboard" / "tb").iterdir()}
        assert {f"trial-{t.number}" for t in trials} <= on_disk
        assert set(runs) == on_disk
    finally:
        code, _, err = interrupt(proc)
    assert code == 0, err


def read_json(url: str) -> Any:
    import json
    import time

    deadline = time.monotonic() + 60
    while True:  # TensorBoard loads the runs in the background after it starts
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = json.load(resp)
        if data or time.monotonic() > deadline:
            return data
        time.sleep(0.5)


def tb_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = cli.main(["tensorboard", *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_no_logs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = tb_error(capsys, "nope", "--logdir", str(tmp_path), "--port", str(free_port()))
    assert line.startswith(f"error: no TensorBoard logs at {tmp_path / 'nope'}. Fix: run a study with")


def test_port_in_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = tb_error(capsys, "--logdir", str(tmp_path), "--port", str(port))
    assert line.startswith(f"error: --port {port}: port already in use on 127.0.0.1 (another server?)")


def test_missing_extra_exits_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = workdir
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    line = tb_error(capsys, "--logdir", str(tmp_path), "--port", str(free_port()))
    assert line == (
        "error: search tensorboard needs the tensorboard package, which is not installed. "
        "Fix: pip install 'convnet-search[tensorboard]'"
    )
    write_config(tmp_path / "tb.yaml", tiny_config())
    assert cli.main(["run", str(tmp_path / "tb.yaml"), "--tensorboard", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert err.strip().splitlines()[-1] == (
        "error: train.tensorboard: TensorBoard logging needs the tensorboard package, which is not "
        "installed (got True). Fix: pip install 'convnet-search[tensorboard]', or turn TensorBoard "
        "logging off"
    )
    assert not (tmp_path / "storage").exists()


def test_other_addresses_warn() -> None:
    from search.serve.tensorboard import server_warning

    assert server_warning("127.0.0.1", 6006) is None
    warning = server_warning("0.0.0.0", 6006)
    assert warning is not None and "ssh -L 6006:127.0.0.1:6006" in warning


@pytest.mark.parametrize(
    ("model", "node"),
    [
        ({"block": "plain"}, "Conv2d"),
        ({"block": "residual"}, "ResidualStage"),
        ({"block": "depthwise", "batchnorm": True}, "SeparableConv"),
        ({"block": "inception"}, "InceptionStage"),
        ({"arch": "resnet18"}, "BasicBlock"),
    ],
)
def test_every_family_writes_its_graph(tmp_path: Path, model: dict[str, Any], node: str) -> None:
    from tests.studies import build_study, study_config

    raw = study_config(tmp_path, train={"epochs": 1, "patience": 1, "tensorboard": True})
    raw["tensorboard_dir"] = str(tmp_path / "tb")
    raw["data"] = {
        **raw["data"],
        "dataset": "synthetic",
        "synthetic": {"shape": [1, 8, 8], "n_classes": 3, "n_samples": 60},
    }
    raw["model"] = {**raw["model"], **model}
    raw["search"] = {
        **raw["search"],
        "n_trials": 1,
        "space": {"c1": 4, "c2": 8, "l1": 8, "lr": 0.01, "batch_size": 16},
    }
    study = build_study(raw)
    acc = EventAccumulator(str(tmp_path / "tb" / study.study_name / "trial-0"))
    acc.Reload()
    names = [n.name for n in acc.Graph().node]
    assert any(node in name for name in names), names[:20]
