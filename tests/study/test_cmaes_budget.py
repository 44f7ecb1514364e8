"""Issue 26 row 6, through ``search -v run``: with ``search.constraints.max_params`` the fits-check
sees CMA-ES's whole proposal, the choices it leaves to independent sampling included, and replaces
one over the budget (before, it saw only {c2, l1} and never replaced any)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_cli, tiny_config, write_config


def test_cmaes_proposals_are_checked_whole_against_max_params(workdir: Path) -> None:
    search = {
        "n_trials": 6,
        "sampler": {"name": "cmaes", "n_startup_trials": 1},
        "pruner": {"name": "none"},
        "constraints": {"max_params": 6000},  # c1 48 is always over it, c1 4 never
        "space": {
            "c1": {"choices": [4, 48]},
            "c2": {"low": 4, "high": 8},
            "l1": {"low": 16, "high": 20},
            "lr": 0.005,
            "batch_size": 64,
        },
    }
    write_config(
        workdir / "cma.yaml", tiny_config(name="cma", train={"epochs": 1, "patience": 1}, search=search)
    )
    proc = run_cli("-v", "run", "cma.yaml", cwd=workdir, check=0)
    replaced = {
        int(n) for n in re.findall(r"trial (\d+): the sampler proposed params over max_params", proc.stderr)
    }
    assert replaced, proc.stderr
    over = {int(n) for n in re.findall(r"trial +(\d+) PRUNED .*over_budget=", proc.stdout)}
    # an over-budget trial is a random replacement, never CMA-ES's own proposal trained as is
    assert over <= replaced
