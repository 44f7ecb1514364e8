from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search
from search.cli import build_parser, main
from search.config import load_config
from tests.conftest import CIFAR_SAMPLE, REPO, cli_env, run_cli, tiny_config, write_config

URL = "sqlite:///storage/studies.db"
OPTUNA_CLI = str(Path(sys.executable).parent / "optuna")


def _load(workdir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/storage/studies.db")


def _main(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> tuple[str, str]:
    """``search ARGS`` in this process; (stdout, stderr) once it returned ``code``."""
    got = main(list(args))
    out, err = capsys.readouterr()
    assert got == code, f"exit {got}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def test_run_digits_end_to_end(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(workdir / "tiny.yaml", tiny_config())
    proc = run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("trial")]
    assert len(lines) == 3 and all("COMPLETE" in line and "c1=" in line for line in lines)
    assert "study tiny: 3/3 trials finished" in proc.stdout
    # after the summary line: the next commands, with the study's name (default storage: no flag)
    assert proc.stdout.splitlines()[-4].startswith("study tiny: 3/3 trials finished")
    assert proc.stdout.splitlines()[-3:] == [
        "next: search report tiny   (tables and plots under storage/reports/tiny)",
        "      search export tiny   (the best trial's weights, for search predict / search app)",
        "      search finetune tiny (continue the best weights, then test once)",
    ]
    study = _load(workdir)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert 0.0 < study.best_value <= 1.0
    assert study.user_attrs["config"]["name"] == "tiny"
    assert any((workdir / "storage" / "artifacts").iterdir())
    assert list((workdir / "storage" / "data" / "cache").glob("digits-*.pt"))

    # Optuna's own CLI reads the database
    for command in (["trials"], ["best-trial"]):
        out = subprocess.run(
            [OPTUNA_CLI, *command, "--storage", URL, "--study-name", "tiny", "-f", "json"],
            cwd=workdir,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)

    # status lists the study with its counts and best trial
    status, _ = _main(capsys, "status")
    row = next(line for line in status.splitlines() if line.startswith("tiny"))
    assert row.split()[1:5] == ["3", "0", "0", "0"] and f"#{study.best_trial.number}" in row

    # re-running with a larger total runs only the remainder
    proc = run_cli("run", str(cfg), "--n-trials", "4", "--device", "cpu", cwd=workdir, check=0)
    assert len([line for line in proc.stdout.splitlines() if line.startswith("trial")]) == 1
    assert len(_load(workdir).trials) == 4


def test_run_imagefolder_cifar_sample(workdir: Path) -> None:
    cfg = tiny_config(
        name="sample",
        data={"dataset": "imagefolder", "root": str(CIFAR_SAMPLE), "augment": {"hflip": True, "crop_pad": 2}},
        model={"padding": 0},
    )
    path = write_config(workdir / "sample.yaml", cfg)
    proc = run_cli("run", str(path), "--n-trials", "2", "--device", "cpu", cwd=workdir, check=0)
    assert "study sample: 2/2 trials finished" in proc.stdout
    study = _load(workdir, "sample")
    assert study.user_attrs["data"]["in_shape"] == [3, 32, 32]
    assert study.user_attrs["data"]["classes"][:2] == ["airplane", "automobile"]
    # 20 % of each class (rounded per class) is held out as the test split and never reaches the study
    counts = [len(list(d.iterdir())) for d in sorted(CIFAR_SAMPLE.iterdir()) if d.is_dir()]
    held_out = sum(round(0.2 * n) for n in counts)
    assert study.user_attrs["data"]["n_train"] + study.user_attrs["data"]["n_val"] == sum(counts) - held_out


def test_cli_flags_override_the_config(workdir: Path) -> None:
    cfg = write_config(workdir / "c.yaml", tiny_config())
    proc = run_cli(
        "run",
        str(cfg),
        "--study-name",
        "other",
        "--storage",
        "sqlite:///elsewhere.db",
        "--n-trials",
        "1",
        "--set",
        "train.epochs=1",
        "--device",
        "cpu",
        cwd=workdir,
        check=0,
    )
    study = optuna.load_study(study_name="other", storage=f"sqlite:///{workdir}/elsewhere.db")
    assert len(study.trials) == 1 and study.trials[0].user_attrs["epochs_run"] == 1
    assert study.user_attrs["config"]["train"]["epochs"] == 1
    assert not (workdir / "storage" / "studies.db").exists()
    # the next commands name this study and storage (not the default one)
    assert "next: search report other --storage sqlite:///elsewhere.db   (" in proc.stdout
    assert "      search finetune other --storage sqlite:///elsewhere.db (" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.epoch=2"], "train.epoch: unknown key"),
        (
            ["--set", "search.space.c1={low: 64, high: 8}"],
            r"search.space.c1: low \(64\) > high \(8\)",
        ),
        (["--set", "search.space.c1={choices: []}"], "choices: expected a non-empty list"),
        (["--set", "search.sampler.name=bayes"], "unknown sampler"),
        (["--set", "model.padding=0"], "the net needs at least 9x9 pixels"),
        (
            ["--set", "model.stages=4", "--set", "model.pool=max"],
            "model.stages: the 8x8 input images are too small for this net: the net needs at least 24x24",
        ),
        (
            ["--set", "model.pool=max", "--set", "search.space.model.stages={choices: [2, 4]}"],
            r"search.space.model.stages: a net this space can sample does not fit: .* at least 24x24 .*"
            r"got 'model.stages=4'",
        ),
        (
            ["--set", "search.space.train.foo={choices: [1]}"],
            "search.space.train.foo: unknown config field",
        ),
        (
            ["--set", "search.space.data.image_size={choices: [16, 32]}"],
            "search.space.data.image_size: cannot be searched",
        ),
        (
            ["--set", "search.space.model.dropout={choices: [0.1]}"],
            "search.space.model.dropout: is not a single",
        ),
        (["--device", "cuda:7"], "--device"),
        (["--storage", "not-a-url"], "storage: not a database URL"),
        (["--set", "seed=-5"], r"seed: must be within \[0, 4294967295\]"),
        (["--set", "seed=100000000000000000000000"], r"seed: must be within \[0, 4294967295\]"),
        (["--set", 'name="abc\\n"'], "name: not a safe study name"),
        (
            ["--set", "data.dataset=imagefolder", "--set", "data.root=no/such/folder"],
            "data.root: folder not found",
        ),
    ],
)
def test_bad_input_exits_2_and_creates_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    if args[0] == "--device":
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    cfg = write_config(workdir / "c.yaml", tiny_config())
    assert main(["run", str(cfg), *args]) == 2  # an uncaught exception (a traceback) fails the test
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert message.replace("\\", "") in err or re.search(message, err)
    assert not (workdir / "storage" / "studies.db").exists()
    assert not (workdir / "storage" / "artifacts").exists()


def test_validate(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(workdir / "good.yaml", tiny_config())
    assert main(["validate", str(good)]) == 0
    assert "ok: study 'tiny'" in capsys.readouterr().out
    bad = workdir / "bad.yaml"
    bad.write_text("data:\n  dataset: imagenet\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "data.dataset: unknown dataset (got 'imagenet')" in err and "Fix:" in err
    assert not (workdir / "storage").exists()


def test_validate_checks_inputs_without_reading_data(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(workdir / "f.yaml", tiny_config(data={"dataset": "imagefolder", "root": "missing"}))
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "error: data.root: folder not found (got 'missing')" in err and "Fix:" in err


def test_validate_imports_neither_torch_nor_optuna(workdir: Path) -> None:
    """`search validate` starts fast: no torch, optuna, optuna_dashboard, pandas or matplotlib."""
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "search",
            "validate",
            str(REPO / "study_configs" / "digits.yaml"),
        ],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "search.config" in imported and "ok: study 'digits'" in proc.stdout
    for heavy in ("torch", "optuna", "optuna_dashboard", "pandas", "matplotlib"):
        assert heavy not in imported, heavy


def _imported(*args: str, cwd: Path) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``python -X importtime -m search ARGS`` imported, and the finished process."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "search", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}, proc


def test_run_and_status_import_only_what_they_use(workdir: Path) -> None:
    """`run` (no --dashboard) loads no optuna_dashboard, pandas or matplotlib; `status` no torch either."""
    cfg = write_config(workdir / "t.yaml", tiny_config(search={"n_trials": 1}))
    imported, proc = _imported("run", str(cfg), cwd=workdir)
    assert "1/1 trials finished" in proc.stdout and "torch" in imported and "search.study.run" in imported
    for heavy in ("optuna_dashboard", "pandas", "matplotlib", "plotly"):
        assert heavy not in imported, heavy
    imported, proc = _imported("status", cwd=workdir)
    assert proc.stdout.splitlines()[1].split()[:2] == ["tiny", "1"] and "optuna" in imported
    for heavy in ("torch", "optuna_dashboard", "pandas", "matplotlib", "plotly"):
        assert heavy not in imported, heavy


def test_schema_json_is_current_and_bundled_configs_use_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    committed = json.loads((REPO / "study_configs" / "schema.json").read_text())
    assert printed == committed, "stale: run `search schema > study_configs/schema.json`"
    assert printed["additionalProperties"] is False
    train = printed["$defs"]["TrainConfig"]["properties"]
    assert (
        train["epochs"]["default"] == 10
        and train["epochs"]["minimum"] == 1
        and train["epochs"]["description"]
    )
    for path in sorted((REPO / "study_configs").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=schema.json", path.name


@pytest.mark.parametrize("command", ["report", "export", "finetune", "worker"])
def test_unsafe_study_names_are_refused_by_every_command(
    workdir: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    url = f"sqlite:///{workdir}/storage/studies.db"
    (workdir / "storage").mkdir()
    optuna.create_study(study_name="../../escaped", storage=url)  # Optuna's own API allows it
    args = ["--study-name", "../../escaped"] if command == "worker" else ["../../escaped"]
    assert main([command, *args, "--storage", url]) == 2
    flag = "--study-name" if command == "worker" else "STUDY"
    assert f"error: {flag}: not a safe study name" in capsys.readouterr().err
    assert not (workdir.parent.parent / "escaped").exists() and not (workdir / "escaped").exists()


def test_worker_overrides_are_validated(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.config import config_from_dict, to_dict

    url = f"sqlite:///{workdir}/storage/studies.db"
    (workdir / "storage").mkdir()
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    study.set_user_attr("config", to_dict(config_from_dict(tiny_config())))
    assert main(["worker", "--study-name", "tiny", "--storage", url, "--n-trials", "-5"]) == 2
    assert "error: search.n_trials: must be >= 1 (got -5)" in capsys.readouterr().err
    assert not optuna.load_study(study_name="tiny", storage=url).trials


def test_the_largest_seed_resumes(workdir: Path) -> None:
    """seed + the sampler's offset passes 2**32 - 1 on resume; it must still run."""
    cfg = write_config(
        workdir / "tiny.yaml", tiny_config(seed=4294967295, train={"epochs": 1, "patience": 1})
    )
    run_cli("run", str(cfg), "--device", "cpu", "--n-trials", "1", cwd=workdir, check=0)
    proc = run_cli("run", str(cfg), "--device", "cpu", "--n-trials", "2", cwd=workdir, check=0)
    assert "study tiny: 2/2 trials finished" in proc.stdout


def test_status_without_storage_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 2
    assert "no study storage" in capsys.readouterr().err
    assert not (workdir / "storage").exists()


def test_help_lists_every_command_on_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a plain 80-column terminal
    with pytest.raises(SystemExit) as exit_info:
        main(["-h"])
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    start = lines.index("  COMMAND") + 1
    rows = lines[start : lines.index("", start)]
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert [row.split()[0] for row in rows] == list(sub.choices)  # no wrapped continuation lines
    assert all(len(row.split()) > 2 and len(row) <= 80 for row in rows)
    assert "--version" in stdout


def test_version_is_the_package_version(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert search.__version__ == declared  # the fallback for a checkout that is not installed
    try:
        installed = importlib.metadata.version("convnet-search")
    except importlib.metadata.PackageNotFoundError:
        installed = declared
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"search {installed}\n"


def test_readme_and_tests_use_only_files_in_the_repo() -> None:
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", readme):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links {target}, which is not in the repository"
    texts = {p: p.read_text() for p in [REPO / "README.md", *(REPO / "tests").glob("*.py")]}
    assert not [p.name for p, text in texts.items() if "../" + "shared" in text]
    cfg = load_config(REPO / "study_configs" / "cifar10_sample.yaml")
    assert Path(cfg.data.root).resolve() == CIFAR_SAMPLE == REPO / "tests" / "data" / "cifar10-sample"
    assert len(list(CIFAR_SAMPLE.glob("*/*.png"))) == 200


def test_validate_the_bundled_sample_config_from_the_project_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["validate", "study_configs/cifar10_sample.yaml"]) == 0
    assert "ok: study 'cifar10_sample' on imagefolder" in capsys.readouterr().out


def test_log_lines_sit_above_the_progress_bar_in_a_terminal(workdir: Path) -> None:
    """On a terminal (a pseudo-terminal here) log lines are not glued to the tqdm bar (with -v, the
    per-trial housekeeping lines are logged while the bar is shown)."""
    cfg = write_config(workdir / "tiny.yaml", tiny_config(search={"n_trials": 5, "keep_top_k": 1}))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 x 40
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "-v", "run", str(cfg), "--device", "cpu"],
        cwd=workdir,
        env={**cli_env(), "COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "100%|" in text, text[-1500:]  # the bar was drawn
    segments = re.split(r"[\r\n]+", text)
    logs = [s for s in segments if " INFO " in s or " DEBUG " in s]
    assert any(" DEBUG " in s and "removed 1 weights file(s)" in s for s in logs)  # while the bar was shown
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert all(stamp.match(s) for s in logs), [s for s in logs if not stamp.match(s)]


def test_python_m_search_help(workdir: Path) -> None:
    out = run_cli("--help", cwd=workdir, check=0).stdout
    for command in ("run", "validate", "status"):
        assert command in out


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:x", "", "cpu cuda"])
def test_bad_devices_exit_2_for_run_worker_and_finetune(
    workdir: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    cfg = write_config(workdir / "c.yaml", tiny_config())
    url = f"sqlite:///{workdir}/studies.db"
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    study.set_user_attr("config", tiny_config())  # as `search run` stores it: worker gets that far
    for args in (
        ["run", str(cfg), "--device", device],
        ["run", str(cfg), "--device", device, "--workers", "2"],
        ["worker", "--study-name", "tiny", "--storage", url, "--device", device],
        ["finetune", "tiny", "--storage", url, "--device", device],
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "--device" in err, (args, err)
    assert not (workdir / "storage" / "data").exists()


def test_device_tpu_through_the_cli(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(workdir / "c.yaml", tiny_config())
    assert main(["run", "c.yaml", "--device", "tpu"]) == 2
    assert "error: --device: 'tpu' is not a device" in capsys.readouterr().err
    assert not (workdir / "storage").exists()


def test_searching_config_fields_end_to_end(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train.optimizer, train.weight_decay and data.augment.rotate_deg searched: Optuna names them
    by path, export's config.json and the report hold each trial's values, resume sees the space."""
    space = {
        "c1": {"choices": [4]},
        "c2": {"choices": [8]},
        "l1": {"choices": [16]},
        "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "batch_size": {"choices": [32]},
        "train.optimizer": {"choices": ["adam", "adamw", "sgd"]},
        "train.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
        "data.augment.rotate_deg": {"choices": [0, 10, 20]},
    }
    raw = tiny_config(
        data={"dataset": "synthetic", "synthetic": {"shape": [1, 12, 12], "n_classes": 3, "n_samples": 150}},
        train={"epochs": 1, "patience": 1, "lr_schedule": "cosine"},
        finetune={"epochs": 1, "patience": 1},
    )
    raw["search"] = {**raw["search"], "space": space, "sampler": {"name": "random"}}
    cfg = write_config(workdir / "tiny.yaml", raw)
    proc = run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    assert "train.optimizer=" in proc.stdout and "data.augment.rotate_deg=" in proc.stdout
    study = _load(workdir)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert {"train.optimizer", "train.weight_decay", "data.augment.rotate_deg"} <= set(t.params)
        assert t.params["train.optimizer"] in ("adam", "adamw", "sgd")
        assert 1e-6 <= t.params["train.weight_decay"] <= 1e-2
        assert t.params["data.augment.rotate_deg"] in (0.0, 10.0, 20.0)

    best = study.best_trial
    run_cli("export", "tiny", "--out", "exp", cwd=workdir, check=0)
    exported = json.loads((workdir / "exp" / "config.json").read_text())
    assert exported["trial"] == best.number
    assert exported["params"]["train.optimizer"] == best.params["train.optimizer"]
    assert exported["config"]["train"]["optimizer"] == best.params["train.optimizer"]
    assert exported["config"]["train"]["weight_decay"] == pytest.approx(best.params["train.weight_decay"])
    assert exported["config"]["data"]["augment"]["rotate_deg"] == best.params["data.augment.rotate_deg"]
    assert exported["config"]["train"]["lr_schedule"] == "cosine"
    assert "train.optimizer=" in (workdir / "exp" / "README.md").read_text()

    run_cli("report", "tiny", "--out", "rep", cwd=workdir, check=0)
    import pandas as pd

    table = pd.read_csv(workdir / "rep" / "report.csv")
    columns = list(table.columns)
    assert columns[columns.index("batch_size") + 1 : columns.index("batch_size") + 4] == [
        "train.optimizer",
        "train.weight_decay",
        "data.augment.rotate_deg",
    ]
    for _, row in table.iterrows():
        trial = study.trials[int(row["number"])]
        assert row["train.optimizer"] == trial.params["train.optimizer"]
        assert row["train.weight_decay"] == pytest.approx(trial.params["train.weight_decay"])

    ft = run_cli("finetune", "tiny", "--device", "cpu", "--out", "ft", cwd=workdir, check=0)
    assert "Traceback" not in ft.stderr
    metrics = json.loads((workdir / "ft" / "metrics.json").read_text())
    assert metrics["params"]["train.optimizer"] == best.params["train.optimizer"]

    # a changed dotted range is a changed experiment: exit 2 with the diff, as for the five names
    space["train.weight_decay"] = {"low": 1.0e-6, "high": 1.0e-1, "log": True}
    write_config(workdir / "tiny.yaml", raw)
    _, err = _main(capsys, "run", str(cfg), "--device", "cpu", code=2)
    assert "search.space.train.weight_decay.high: stored 0.01, now 0.1" in err
    assert len(_load(workdir).trials) == 3


# --------------------------------------------------------------------------- budgets


def test_run_with_max_params_trains_only_what_fits_and_reports_feasibility(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # c1=4: 3558 parameters, c1=32: 14954 on digits (8x8, c2=8, l1=16)
    raw = tiny_config(
        search={
            **tiny_config()["search"],
            "n_trials": 4,
            "sampler": {"name": "tpe", "n_startup_trials": 2},
            "space": {**tiny_config()["search"]["space"], "c1": {"choices": [4, 32]}},
            "constraints": {"max_params": 10_000},
        },
        train={"epochs": 1, "patience": 1},
    )
    cfg = write_config(workdir / "tiny.yaml", raw)
    proc = run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    study = _load(workdir)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    over = [t for t in trials if t.params["c1"] == 32]
    assert over, "the seeded sampler drew c1=32 at least once"
    for t in over:
        assert t.state == TrialState.PRUNED and "epochs_run" not in t.user_attrs
        assert t.user_attrs["constraint"] == "n_params 14954 > max_params 10000"
        assert f"trial {t.number:>4} PRUNED" in proc.stdout
    assert "over_budget='n_params 14954 > max_params 10000'" in proc.stdout
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(t.user_attrs["n_params"] <= 10_000 for t in complete)
    assert all(t.constraints["max_params"] <= 0 for t in complete)
    assert study.best_trial.user_attrs["n_params"] <= 10_000
    assert f"best trial {study.best_trial.number} " in proc.stdout

    status, _ = _main(capsys, "status")
    assert f"over budget x{len(over)}: search.constraints.max_params (pruned before training)" in status
    assert f"#{study.best_trial.number} " in status

    report, _ = _main(capsys, "report", "tiny")
    assert f"({len(over)} of 4 finished trials over budget, pruned before training;" in report
    assert f"best: trial {study.best_trial.number}," in report
    import pandas as pd

    df = pd.read_csv(workdir / "storage" / "reports" / "tiny" / "report.csv")
    by_number = df.set_index("number")
    for t in trials:
        row = by_number.loc[t.number]
        assert bool(row["feasible"]) is (t.params["c1"] == 4)
        assert row["n_params"] == t.user_attrs["n_params"]
    assert df["latency_ms"].isna().all()  # measured only with max_latency_ms


def test_a_study_with_every_trial_over_budget_ends_and_exits_1(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(search={**tiny_config()["search"], "constraints": {"max_params": 1}})
    cfg = write_config(workdir / "tiny.yaml", raw)
    proc = run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=1)
    assert (
        "no trial completed (" in proc.stdout
        and "3 of 3 finished trials were over budget (search.constraints) and pruned before training"
        in proc.stdout
    )
    assert "next:" not in proc.stdout  # nothing to report, export or fine-tune
    study = _load(workdir)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3  # they count toward n_trials
    assert all("epochs_run" not in t.user_attrs and t.intermediate_values == {} for t in study.trials)
    status, _ = _main(capsys, "status")
    row = next(line for line in status.splitlines() if line.startswith("tiny"))
    assert row.split()[1:3] == ["0", "3"] and row.rstrip().endswith("-")
    assert "over budget x3: search.constraints.max_params" in status
    report, _ = _main(capsys, "report", "tiny")
    assert "best: no completed trial within budget" in report

    # the budgets are part of the experiment: a resumed study keeps them
    _, err = _main(capsys, "run", str(cfg), "--set", "search.constraints.max_params=100000", code=2)
    assert "search.constraints.max_params: stored 1, now 100000" in err


def test_budget_search_over_dotted_parameters_end_to_end(workdir: Path) -> None:
    """The issue's end-to-end budget study: 3x64x64 synthetic images, train.optimizer,
    train.weight_decay and model.stages searched under max_params. With the seed's flatten head
    and no pooling, 2 stages have 148,646 parameters, 3 stages 299,590 and 4 stages 608,390:
    only 2 stages fit 200,000."""
    space = {
        "c1": 4,
        "c2": 8,
        "l1": 16,
        "lr": 0.005,
        "batch_size": 16,
        "train.optimizer": {"choices": ["adam", "adamw", "sgd"]},
        "train.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
        "model.stages": {"choices": [2, 3, 4]},
    }
    raw = tiny_config(
        data={"dataset": "synthetic", "synthetic": {"shape": [3, 64, 64], "n_classes": 2, "n_samples": 40}},
        train={"epochs": 1, "patience": 1},
    )
    raw["search"] = {
        **raw["search"],
        "n_trials": 6,
        "sampler": {"name": "tpe", "n_startup_trials": 3},
        "space": space,
        "constraints": {"max_params": 200_000},
    }
    cfg = write_config(workdir / "tiny.yaml", raw)
    proc = run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    study = _load(workdir)
    trials = study.get_trials()
    assert len(trials) == 6 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:  # Optuna names the params by their dotted paths
        assert set(t.params) == {"train.optimizer", "train.weight_decay", "model.stages"}
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for t in complete:  # every COMPLETE trial is within budget
        assert t.params["model.stages"] == 2 and t.user_attrs["n_params"] == 148_646
        assert t.constraints["max_params"] <= 0
    over = [t for t in trials if t.params["model.stages"] != 2]
    assert over, "the seeded sampler drew 3 or 4 stages at least once"
    for t in over:
        assert t.state == TrialState.PRUNED and "epochs_run" not in t.user_attrs
        assert t.user_attrs["constraint"] in (
            "n_params 299590 > max_params 200000",
            "n_params 608390 > max_params 200000",
        )
    best = study.best_trial
    assert best.params["model.stages"] == 2 and best.constraints["max_params"] <= 0
    assert f"best trial {best.number} " in proc.stdout and "model.stages=2" in proc.stdout
