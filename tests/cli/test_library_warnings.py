"""Issue 26 row 19, through ``search run``: library warnings the user cannot act on (Optuna's
ExperimentalWarning for QMC, its step-adjusted ranges, CMA-ES ignoring constraints or sampling
choices independently) are DEBUG lines, never raw UserWarnings with site-packages paths; what the
user can act on is one line in our words."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, tiny_config, write_config

SPACE = {
    "c1": {"choices": [4, 8]},
    "c2": {"low": 4, "high": 7, "step": 2},  # Optuna warns that it samples 4..6
    "l1": {"choices": [16]},
    "lr": 0.01,
    "batch_size": {"choices": [64]},
}


def _raw_warnings(stderr: str) -> list[str]:
    return [
        ln for ln in stderr.splitlines() if "Warning:" in ln or "site-packages" in ln or "optuna_warn(" in ln
    ]


def _write(workdir: Path, sampler: dict[str, object], **search: object) -> None:
    body = {"n_trials": 2, "sampler": sampler, "pruner": {"name": "none"}, "space": SPACE, **search}
    write_config(workdir / "w.yaml", tiny_config(name="w", train={"epochs": 1, "patience": 1}, search=body))


def test_qmc_warnings_are_debug_lines_and_the_step_is_said_in_our_words(workdir: Path) -> None:
    _write(workdir, {"name": "qmc"})
    proc = run_cli("run", "w.yaml", cwd=workdir, check=0)
    assert _raw_warnings(proc.stderr) == []
    assert "ExperimentalWarning" not in proc.stderr
    assert "search.space.c2: step 2 does not divide 4..7, so the highest value tried is 6" in proc.stderr
    verbose = run_cli("-v", "run", "w.yaml", "--fresh", cwd=workdir, check=0)
    assert _raw_warnings(verbose.stderr) == []
    assert "DEBUG search.warnings: ExperimentalWarning" in verbose.stderr


def test_cmaes_choices_and_constraints_are_said_once_not_every_trial(workdir: Path) -> None:
    _write(workdir, {"name": "cmaes", "n_startup_trials": 1}, constraints={"max_latency_ms": 1.0e6})
    proc = run_cli("run", "w.yaml", cwd=workdir, check=0)
    assert _raw_warnings(proc.stderr) == []
    assert "optuna.samplers._cmaes" not in proc.stderr
    line = "search.sampler cmaes models number ranges only: c1 (choices) is sampled at random in every trial"
    assert proc.stderr.count(line) == 1
