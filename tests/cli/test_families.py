"""`search validate` and `search run` refuse a model section or a space whose architecture options
do not combine (exit 2, the field and the reason named, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main
from tests.conftest import tiny_config, write_config

FIXED_WIDTHS = ["--set", "search.space.c1=8", "--set", "search.space.c2=8", "--set", "search.space.l1=16"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["model.residual=true", "model.block=depthwise"],
            "model.block: contradicts residual: true (which means block: residual)",
        ),
        (["model.block=depthwise"], "model.batchnorm: block: depthwise is MobileNet v1's"),
        (
            ["model.block=inception", "model.kernel_size=5"],
            "model.kernel_size: block: inception has its own kernels",
        ),
        (
            [
                "model.batchnorm=true",
                "search.space.model.block={choices: [plain, inception]}",
                "search.space.c1=2",
            ],
            "search.space.model.block: this space can sample block inception with c1 2",
        ),
        (
            ["model.arch=resnet18"],
            "search.space.c1: model.arch resnet18 has its own widths and blocks and ignores c1",
        ),
        (["model.arch=resnet18", "model.pool=max", *FIXED_WIDTHS[1::2]], "model.pool: model.arch resnet18"),
        (
            ["model.arch=resnet18", *FIXED_WIDTHS[1::2], "search.space.model.stages={choices: [2, 3]}"],
            "search.space.model.stages: model.arch resnet18 has its own widths and blocks and ignores "
            "model.stages",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_architecture_options_that_do_not_combine_exit_2_naming_why(
    workdir: Path, capsys: pytest.CaptureFixture[str], command: str, sets: list[str], message: str
) -> None:
    cfg = write_config(workdir / "tiny.yaml", tiny_config())
    args = [command, str(cfg), *(a for s in sets for a in ("--set", s))]
    capsys.readouterr()
    assert main([*args, *(["--device", "cpu"] if command == "run" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err
    assert not (workdir / "storage").exists()


def test_a_study_may_search_the_arch_with_the_widths(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(workdir / "tiny.yaml", tiny_config())
    space = "search.space.model.arch={choices: [convnet, resnet18]}"
    assert main(["validate", str(cfg), "--set", space]) == 0
    assert main(["validate", str(cfg), "--set", "model.arch=resnet18", *FIXED_WIDTHS]) == 0
