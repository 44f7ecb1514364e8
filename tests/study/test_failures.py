"""Reliability: failing trials, bad data, resumed studies, broken storage, fuzzed configs, secrets, disk.

Every test runs a real study on disk (tiny digits or a tiny image folder, 1-2 epochs). Most drive
the CLI in-process (``cli.main``, the function behind ``python -m search``) to keep the file fast
on a small machine; a few run it as a subprocess, exactly as a user would.
"""

from __future__ import annotations

import os
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

import search.study.objective
from search import cli
from search.config import ConfigError, StudyConfig, config_from_dict, load_config, mask_url
from search.store.artifacts import WEIGHTS_ATTR, UnreadableFile, WeightStore
from search.study.failures import describe_failure, is_device_fatal
from search.study.study import StorageError, make_storage, open_study
from tests.conftest import cli_env, run_cli, tiny_config, write_config

DB = "storage/studies.db"


def _study(workdir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / DB}")


def _cli(capsys: pytest.CaptureFixture[str], *args: str, code: int) -> tuple[str, str]:
    """Run ``search ARGS`` in-process; assert the exit code; return (stdout, stderr)."""
    capsys.readouterr()
    got = cli.main(list(args))
    out, err = capsys.readouterr()
    assert got == code, f"exit {got}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def _fail_reasons(study: optuna.Study) -> list[str]:
    return [t.user_attrs.get("fail_reason", "") for t in study.get_trials(states=(TrialState.FAIL,))]


# --------------------------------------------------------------------------- failing trials


def test_nan_oom_and_other_errors_fail_the_trial_and_the_study_goes_on(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 1 diverges (a real NaN loss), trial 2 runs out of memory, trial 3 raises; the rest complete."""
    real_fit = search.study.objective.fit
    calls = {"fit": 0, "free": 0}
    real_free = search.study.objective.free_memory

    def faulty_fit(*args: Any, **kwargs: Any) -> Any:
        calls["fit"] += 1
        if calls["fit"] == 1:
            return real_fit(*args, **{**kwargs, "lr": 1e10})  # diverges for real
        if calls["fit"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if calls["fit"] == 3:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
        return real_fit(*args, **kwargs)

    def counting_free() -> None:
        calls["free"] += 1
        real_free()

    monkeypatch.setattr(search.study.objective, "fit", faulty_fit)
    monkeypatch.setattr(search.study.objective, "free_memory", counting_free)
    raw = tiny_config(train={"epochs": 1, "patience": 1}, search={**tiny_config()["search"], "n_trials": 6})
    cfg = write_config(workdir / "tiny.yaml", raw)
    assert cli.main(["run", str(cfg), "--device", "cpu"]) == 0
    out = capsys.readouterr().out

    study = _study(workdir)
    states = [t.state for t in study.trials]
    # failed trials are replaced: n_trials counts finished (COMPLETE + PRUNED) trials
    assert states == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 6
    reasons = _fail_reasons(study)
    assert reasons[0] == "nan_loss at epoch 1, lr=1e+10"
    assert reasons[1] == "oom (batch_size=64)"
    assert reasons[2] == "RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"
    assert calls["free"] == 2  # memory is freed after each exception
    assert "reason='oom (batch_size=64)'" in out
    assert "best trial" in out

    # status shows the failure counts and reasons
    status, _ = _cli(capsys, "status", "--study-name", "tiny", code=0)
    row = next(line for line in status.splitlines() if line.startswith("tiny"))
    assert row.split()[1:4] == ["6", "0", "3"]
    for reason in reasons:
        assert f"failed x1: {reason}" in status

    # failed trials do not count as finished: a re-run fills in the remainder
    assert cli.main(["run", str(cfg), "--device", "cpu"]) == 0
    assert len(_study(workdir).get_trials(states=(TrialState.COMPLETE,))) == 6


def test_max_failures_stops_the_run_with_exit_1(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_fit(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("bad batch")

    monkeypatch.setattr(search.study.objective, "fit", broken_fit)
    cfg = write_config(workdir / "tiny.yaml", tiny_config())
    code = cli.main(
        ["run", str(cfg), "--device", "cpu", "--n-trials", "10", "--set", "search.max_failures=2"]
    )
    assert code == 1
    assert "stopped after 2 failed trials (search.max_failures=2)" in capsys.readouterr().out
    study = _study(workdir)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert _fail_reasons(study) == ["ValueError: bad batch"] * 2


def test_a_study_whose_every_trial_fails_still_ends(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_failures null: failed trials are replaced, but a run stops after n_trials failures."""

    def broken_fit(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("bad batch")

    monkeypatch.setattr(search.study.objective, "fit", broken_fit)
    cfg = write_config(workdir / "tiny.yaml", tiny_config())  # n_trials 3, max_failures null
    assert cli.main(["run", str(cfg), "--device", "cpu"]) == 1
    assert "stopped after 3 failed trials (as many as search.n_trials" in capsys.readouterr().out
    assert [t.state for t in _study(workdir).trials] == [TrialState.FAIL] * 3


def test_describe_failure_texts() -> None:
    assert describe_failure(torch.OutOfMemoryError("x"), {"batch_size": 512}) == "oom (batch_size=512)"
    assert describe_failure(KeyError("c9"), {}) == "KeyError: 'c9'"
    assert describe_failure(RuntimeError(), {}) == "RuntimeError"
    assert len(describe_failure(RuntimeError("x" * 5000), {})) < 400


def test_a_broken_gpu_context_is_not_a_trial_failure() -> None:
    illegal = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    assert is_device_fatal(illegal)
    assert is_device_fatal(RuntimeError("CUDA error: device-side assert triggered"))  # torch < 2.8
    assert not is_device_fatal(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_device_fatal(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
    assert describe_failure(illegal, {}) == (
        "device error: AcceleratorError: CUDA error: an illegal memory access was encountered"
    )


# `search` with fit raising torch.AcceleratorError after the first epoch of the first trial
BROKEN_GPU = """
import sys, torch, search.study.objective
real_fit, calls = search.study.objective.fit, []
def fit(*args, **kwargs):
    calls.append(1)
    inner = kwargs["on_epoch"]
    def on_epoch(epoch, metrics):
        inner(epoch, metrics)
        if len(calls) == 1:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    return real_fit(*args, **{**kwargs, "on_epoch": on_epoch})
search.study.objective.fit = fit
from search.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_broken_gpu_context_ends_the_worker_and_its_trial_is_retried(workdir: Path) -> None:
    raw = tiny_config(train={"epochs": 2, "patience": 2, "checkpoint_every_s": 0})
    raw["search"] = {**raw["search"], "n_trials": 2}
    write_config(workdir / "tiny.yaml", raw)
    proc = subprocess.run(
        [sys.executable, "-c", BROKEN_GPU, "run", "tiny.yaml", "--device", "cpu"],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    reason = "device error: AcceleratorError: CUDA error: an illegal memory access was encountered"
    assert f"error: device: trial 0: {reason}" in proc.stderr
    assert "Fix: the trial was re-queued" in proc.stderr
    trials = _study(workdir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # no later trial ran
    assert trials[0].user_attrs["fail_reason"] == reason
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    assert list((workdir / "storage" / "checkpoints").glob("*/trial-0.pt"))  # kept for the retry (study key)

    # another process (here a `search worker` joining the study) resumes the trial from its epoch
    url = f"sqlite:///{workdir / DB}"
    run_cli("worker", "--study-name", "tiny", "--storage", url, "--device", "cpu", cwd=workdir, check=0)
    trials = _study(workdir).trials
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_trial"] == 0 and retry.user_attrs["resumed_from_epoch"] == 1
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert [t.state for t in trials].count(TrialState.FAIL) == 1


@pytest.mark.parametrize("value", [0, -1, "many"])
def test_max_failures_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"search\.max_failures"):
        config_from_dict({"search": {"max_failures": value}})


# --------------------------------------------------------------------------- data faults


def _image_folder(root: Path, classes: dict[str, int], mode: str = "RGB", size: int = 12) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels, "RGB").convert(mode).save(root / name / f"{i}.png")
    return root


def _folder_config(workdir: Path, root: Path) -> Path:
    cfg = tiny_config(
        name="folder",
        data={"dataset": "imagefolder", "root": str(root)},
        train={"epochs": 1, "patience": 1},
        search={**tiny_config()["search"], "n_trials": 1},
    )
    return write_config(workdir / "folder.yaml", cfg)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("corrupt", r"cannot read image \S*imgs/b/3\.png"),
        ("not_an_image", r"cannot read image \S*imgs/a/notes\.png"),
        ("empty_class", r"class folder \S*imgs/c has no images"),
        ("one_class", r"data\.root \S*imgs has 1 class folder\(s\); a classifier needs at least 2"),
    ],
)
def test_data_faults_exit_2_before_anything_is_created(
    workdir: Path, capsys: pytest.CaptureFixture[str], fault: str, message: str
) -> None:
    root = _image_folder(workdir / "imgs", {"a": 10} if fault == "one_class" else {"a": 10, "b": 10})
    if fault == "corrupt":
        _truncate(root / "b" / "3.png")
    elif fault == "not_an_image":
        (root / "a" / "notes.png").write_text("these are notes, not pixels")
    elif fault == "empty_class":
        (root / "c").mkdir()
        (root / "c" / "readme.txt").write_text("no images here")
    cfg = str(_folder_config(workdir, root))
    if fault == "corrupt":  # once as a user would: a subprocess
        err = run_cli("run", cfg, "--device", "cpu", cwd=workdir, check=2).stderr
    else:
        _, err = _cli(capsys, "run", cfg, "--device", "cpu", code=2)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert re.search(message, errors[0]), err
    assert "Fix:" in errors[0] and "Traceback" not in err
    assert not (workdir / "storage").exists()  # no study, no cache, no artifacts


def test_grayscale_mixed_with_rgb_is_converted_and_logged(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _image_folder(workdir / "imgs", {"a": 10})
    _image_folder(root, {"b": 10}, mode="L")
    _, err = _cli(capsys, "run", str(_folder_config(workdir, root)), "--device", "cpu", code=0)
    assert "mixes image modes (10 L, 10 RGB, e.g. " in err and "converting all to RGB" in err
    assert _study(workdir, "folder").user_attrs["data"]["in_shape"] == [3, 12, 12]


# --------------------------------------------------------------------------- resume


def test_resume_continues_refuses_a_changed_experiment_and_fresh_keeps_the_old(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(
        write_config(workdir / "tiny.yaml", tiny_config(search={**tiny_config()["search"], "n_trials": 2}))
    )
    _cli(capsys, "run", cfg, "--device", "cpu", code=0)
    # same experiment, more trials (and a different timeout): continues
    _cli(capsys, "run", cfg, "--device", "cpu", "--n-trials", "3", "--timeout-s", "600", code=0)
    assert len(_study(workdir).trials) == 3

    # a changed search space, dataset or model: exit 2, names each difference and the ways out
    changed = run_cli(
        "run",
        cfg,
        "--set",
        "search.space.c1={choices: [4, 16]}",
        "--set",
        "model.dropout=[0.2, 0.5]",
        "--n-trials",
        "4",
        cwd=workdir,
        check=2,
    ).stderr
    assert "study 'tiny' in sqlite:///storage/studies.db was started with a different experiment" in changed
    assert "model.dropout: stored [0.1, 0.5], now [0.2, 0.5]" in changed
    assert "search.space.c1.choices: stored [4, 8], now [4, 16]" in changed
    assert "--study-name NEW_NAME" in changed and "--fresh" in changed
    _, data = _cli(capsys, "run", cfg, "--set", "data.dataset=synthetic", code=2)
    assert 'data.dataset: stored "digits", now "synthetic"' in data
    assert "data in_shape: stored [1, 8, 8], now [3, 32, 32]" in data
    assert len(_study(workdir).trials) == 3  # nothing ran

    # --fresh: the old study is kept under a new name with all its trials and weights
    old_trials = [(t.number, t.value, t.params) for t in _study(workdir).trials]
    _cli(capsys, "run", cfg, "--set", "model.dropout=[0.2, 0.5]", "--fresh", "--device", "cpu", code=0)
    names = optuna.get_all_study_names(f"sqlite:///{workdir / DB}")
    archived = [n for n in names if n.startswith("tiny-old-")]
    assert len(archived) == 1 and "tiny" in names
    kept = _study(workdir, archived[0])
    assert [(t.number, t.value, t.params) for t in kept.trials] == old_trials
    assert kept.user_attrs["config"]["model"]["dropout"] == [0.1, 0.5]
    store = WeightStore(workdir / "storage" / "artifacts")
    assert all(store.exists(t.user_attrs[WEIGHTS_ATTR]) for t in kept.trials if WEIGHTS_ATTR in t.user_attrs)
    assert store.load(kept.best_trial.user_attrs[WEIGHTS_ATTR])
    fresh = _study(workdir)
    assert fresh.user_attrs["config"]["model"]["dropout"] == [0.2, 0.5] and len(fresh.trials) == 2

    # a new name runs alongside
    _cli(capsys, "run", cfg, "--study-name", "tiny-b", "--n-trials", "1", "--device", "cpu", code=0)
    assert len(_study(workdir, "tiny-b").trials) == 1


# --------------------------------------------------------------------------- storage faults


def test_storage_faults_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config()))
    junk = workdir / "junk.db"
    junk.write_bytes(b"this is a spreadsheet, honest" * 100)
    _, err = _cli(capsys, "run", cfg, "--storage", f"sqlite:///{junk}", "--device", "cpu", code=2)
    assert f"storage {junk} is not an SQLite database" in err
    assert junk.read_bytes() == b"this is a spreadsheet, honest" * 100  # left alone

    other = workdir / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    _, err = _cli(capsys, "status", "--storage", f"sqlite:///{other}", code=2)
    assert "is an SQLite database but not an Optuna one (tables: invoices)" in err
    with sqlite3.connect(other) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"invoices"}

    _, err = _cli(capsys, "status", "--storage", "sqlite:///nowhere/studies.db", code=2)
    assert "no study storage at nowhere/studies.db" in err

    (workdir / "afile").write_text("x")
    _, err = _cli(capsys, "run", cfg, "--storage", "sqlite:///afile/studies.db", code=2)
    assert "cannot create the storage folder afile" in err
    assert "Traceback" not in err


def test_read_only_storage_is_refused(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tests may run as root, which ignores file modes: make os.access report the folder read-only
    (workdir / "ro").mkdir()
    real_access = os.access

    def access(path: Any, mode: int) -> bool:
        return False if Path(path) == Path("ro") and mode == os.W_OK else real_access(path, mode)

    monkeypatch.setattr("search.store.storage.os.access", access)
    with pytest.raises(StorageError, match=r"storage ro is read-only"):
        make_storage("sqlite:///ro/studies.db")
    assert not (workdir / "ro" / "studies.db").exists()


# --------------------------------------------------------------------------- config fuzzing

KEYS = [
    *("name", "seed", "storage", "data", "dataset", "root", "model", "train", "search", "space"),
    *("c1", "lr", "batch_size", "low", "high", "choices", "log", "step", "value", "epochs"),
    *("sampler", "pruner", "normalize", "mean", "std", "synthetic", "shape", "augment", "dropout"),
    *("padding", "image_size", "n_trials", "max_failures", "keep_top_k", "finetune", "timeout_s"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**1000),  # overflows float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1e-4", "nan", "-inf", "1e999", "digits", "tpe", "grid", "sqlite:///x.db", "..", "a/b"]),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=4),
    max_leaves=12,
)


def _valid_or_config_error(load: Any) -> None:
    try:
        assert isinstance(load(), StudyConfig)
    except ConfigError as exc:
        assert "Fix:" in str(exc)


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _leaf_paths(value, (*prefix, key))
    return paths


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEY, VALUES, max_size=6))
def test_fuzz_random_dicts(raw: dict[Any, Any]) -> None:
    _valid_or_config_error(lambda: config_from_dict(raw))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_one_mutated_key_of_a_valid_config(data: st.DataObject) -> None:
    cfg = tiny_config()
    path = data.draw(st.sampled_from(_leaf_paths(cfg)))
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(VALUES)
    _valid_or_config_error(lambda: config_from_dict(cfg))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(max_size=200) | VALUES.map(yaml.safe_dump), sets=st.lists(st.text(max_size=30), max_size=2)
)
def test_fuzz_yaml_text_and_overrides(tmp_path: Path, text: str, sets: list[str]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    _valid_or_config_error(lambda: load_config(path, sets))


@pytest.mark.parametrize(
    "text",
    [
        "seed: 2001-13-01\n",  # PyYAML raises ValueError for impossible dates
        "seed: !!float abc\n",
        "seed: !!int 0x\n",
        "seed: " + "7" * 5000 + "\n",  # more digits than Python will parse
        "[" * 1500,  # deeper than the parser can recurse
        "search: {space: {lr: {low: " + "9" * 400 + ", high: 1}}}\n",  # overflows float
        "search: {space: {c1: {low: " + "9" * 4400 + ", high: 1}}}\n",
        "\x00\x01binary",
        "name: [unhashable, {a: 1}]\n? [1, 2]\n: x\n",
    ],
)
def test_malformed_yaml_gives_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="Fix:"):
        load_config(path)


# --------------------------------------------------------------------------- security


def test_passwords_never_reach_the_terminal(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://bob:hunter2secret@127.0.0.1:1/studies"
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config()))
    status = run_cli("status", "--storage", url, cwd=workdir, check=2)  # as a user would
    outputs = [(status.stdout, status.stderr)]
    outputs.append(_cli(capsys, "-v", "run", cfg, "--storage", url, "--device", "cpu", code=2))
    outputs.append(_cli(capsys, "validate", cfg, "--set", "storage=bob:hunter2secret@dbhost/studies", code=2))
    for out, err in outputs:
        assert "hunter2secret" not in out + err
        assert "bob:***@" in err, err
    assert "cannot open storage postgresql+psycopg://bob:***@127.0.0.1:1/studies" in status.stderr
    assert mask_url("mysql://u:p@ss@h/db") == "mysql://u:***@h/db"


def test_stored_config_masks_the_storage_password(workdir: Path) -> None:
    cfg = config_from_dict(tiny_config(storage="postgresql+psycopg://bob:hunter2secret@db/studies"))
    study = open_study(cfg, make_storage(f"sqlite:///{workdir / 'x.db'}", heartbeat=False))
    assert study.user_attrs["config"]["storage"] == "postgresql+psycopg://bob:***@db/studies"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\b", "/abs", ".hidden"])
def test_unsafe_study_names_are_refused(workdir: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config()))
    _, err = _cli(capsys, "run", cfg, "--study-name", name, code=2)
    assert "name: not a safe study name" in err and not (workdir / "storage").exists()
    _, err = _cli(capsys, "status", "--study-name", name, code=2)
    assert "--study-name: not a safe study name" in err


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_weights_load_refuses_pickled_code(tmp_path: Path) -> None:
    store = WeightStore(tmp_path / "artifacts")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    good = store.save(study, {"w": torch.ones(2)}, "good.pt")
    assert torch.equal(store.load(good)["w"], torch.ones(2))
    evil = store.save(study, {"w": torch.ones(2)}, "evil.pt")
    (tmp_path / "artifacts" / evil).write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    with pytest.raises(UnreadableFile, match="carries pickled code") as caught:
        store.load(evil)
    assert "weights_only=False" not in str(caught.value)  # never advise running the file's code


# --------------------------------------------------------------------------- disk


def test_only_top_k_weights_stay_on_disk_after_10_trials(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {**tiny_config()["search"]["space"], "lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True}}
    cfg = write_config(
        workdir / "tiny.yaml",
        tiny_config(train={"epochs": 1, "patience": 1}, search={**tiny_config()["search"], "space": space}),
    )
    _cli(capsys, "run", str(cfg), "--n-trials", "10", "--device", "cpu", code=0)
    files = [p for p in (workdir / "storage" / "artifacts").rglob("*") if p.is_file()]
    assert len(files) == 3  # search.keep_top_k default
    study = _study(workdir)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 10
    store = WeightStore(workdir / "storage" / "artifacts")
    on_disk = [t for t in study.trials if store.exists(t.user_attrs.get(WEIGHTS_ATTR, "-"))]
    others = [t for t in study.trials if t not in on_disk]
    assert len(on_disk) == 3 and min(t.value for t in on_disk) >= max(t.value for t in others)
    assert study.best_trial in on_disk
    assert not (workdir / "storage" / "checkpoints").exists() or not any(
        (workdir / "storage" / "checkpoints").rglob("*.pt")
    )
