"""Issue 26 row 15, through ``search run``: a refusal of a searched ``model.stages`` names only
values the space can sample (a step that does not divide the range stops below ``high``)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, tiny_config, write_config


def _config(workdir: Path, stages: dict[str, int]) -> None:
    search = {
        "n_trials": 1,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "space": {**tiny_config()["search"]["space"], "model.stages": stages, "model.pool": "max"},
    }
    cfg = tiny_config(name="stages", train={"epochs": 1, "patience": 1}, search=search)
    write_config(workdir / "stages.yaml", cfg)


def test_stages_range_with_an_uneven_step_is_judged_by_the_values_it_samples(workdir: Path) -> None:
    _config(workdir, {"low": 2, "high": 3, "step": 2})  # samples 2 only; 3 does not fit 8x8 digits
    run_cli("run", "stages.yaml", cwd=workdir, check=0)
    _config(workdir, {"low": 2, "high": 5, "step": 2})  # samples 2 and 4; 4 does not fit
    proc = run_cli("run", "stages.yaml", "--fresh", cwd=workdir, check=2)
    assert "search.space.model.stages: a net this space can sample does not fit" in proc.stderr
    assert "(got 'model.stages=4, model.pool=max')" in proc.stderr
