"""Issue 26 row 18: the JSON Schema (``search schema``) and ``search validate`` agree on the
bundled configs and on search spaces in every form README shows (dotted keys, nested sections)
and names the tool refuses (``train.foo``, ``train.epochs``, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import CIFAR_SAMPLE, REPO, run_cli, tiny_config, write_config

SPACES: list[tuple[str, dict[str, Any], bool]] = [
    ("dotted", {"train.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True}}, True),
    ("nested", {"train": {"weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True}}}, True),
    ("half-nested", {"data": {"augment.hflip": {"choices": [True, False]}}}, True),
    ("section-dotted", {"data.augment": {"rotate_deg": {"low": 0, "high": 20}}}, True),
    ("fixed-values", {"model.pool": "max", "c1": 8, "train": {"optimizer": "sgd"}}, True),
    ("unknown-field", {"train.foo": {"choices": [1, 2]}}, False),
    ("nested-unknown-field", {"train": {"foo": {"choices": [1, 2]}}}, False),
    ("not-searchable", {"train.epochs": {"choices": [1, 2]}}, False),
    ("nested-not-searchable", {"train": {"epochs": {"choices": [1, 2]}}}, False),
    ("section-not-a-value", {"train": 3}, False),
    ("unknown-short-name", {"depth": {"choices": [1, 2]}}, False),
    ("unknown-spec-key", {"c1": {"choices": [8], "foo": 1}}, False),
    ("null-choice", {"train.optimizer": {"choices": ["adam", None]}}, False),
    ("empty-section", {"train": {}}, False),
    ("empty-choices", {"c1": {"choices": []}}, False),
    ("duplicate-choices", {"c1": {"choices": [8, 8.0]}}, False),
]


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = run_cli("schema", cwd=tmp_path_factory.mktemp("schema"), check=0)
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _schema_accepts(schema: dict[str, Any], cfg: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(cfg)


@pytest.mark.parametrize(("space", "ok"), [(s, ok) for _, s, ok in SPACES], ids=[c[0] for c in SPACES])
def test_schema_and_validate_agree_on_search_spaces(
    workdir: Path, schema: dict[str, Any], space: dict[str, Any], ok: bool
) -> None:
    cfg = tiny_config()
    cfg["search"] = {**cfg["search"], "space": {**cfg["search"]["space"], **space}}
    write_config(workdir / "tiny.yaml", cfg)
    proc = run_cli("validate", "tiny.yaml", cwd=workdir)
    assert (proc.returncode == 0) is ok, proc.stderr
    assert _schema_accepts(schema, cfg) is ok


def test_schema_and_validate_agree_on_a_null_space(workdir: Path, schema: dict[str, Any]) -> None:
    cfg = tiny_config()
    cfg["search"] = {**cfg["search"], "space": None}  # the default space
    write_config(workdir / "tiny.yaml", cfg)
    run_cli("validate", "tiny.yaml", cwd=workdir, check=0)
    assert _schema_accepts(schema, cfg)


@pytest.mark.parametrize("path", sorted((REPO / "study_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_schema_and_validate_accept_the_bundled_configs(
    workdir: Path, schema: dict[str, Any], path: Path
) -> None:
    cfg = yaml.safe_load(path.read_text())
    extra = ["--set", f"data.root={CIFAR_SAMPLE}"] if cfg["data"]["dataset"] == "imagefolder" else []
    run_cli("validate", str(path), *extra, "--set", "data.cache_dir=cache", cwd=workdir, check=0)
    assert _schema_accepts(schema, cfg)
