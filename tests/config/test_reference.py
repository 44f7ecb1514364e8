"""docs/config.md is the config reference generated from the schema (`search schema --markdown`)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from search.cli import main
from search.config import config_markdown, json_schema, resumable_fields, searchable_fields
from tests.conftest import REPO

REGENERATE = "search schema --markdown > docs/config.md"


def _rows(markdown: str) -> dict[str, list[str]]:
    """The field tables' rows by key: ``{"data.root": [type, default, allowed, doc, search, resume]}``."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 7:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _leaf_fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field of the JSON Schema by dotted path, sections included."""
    defs: dict[str, dict[str, Any]] = schema["$defs"]
    out: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, prop in node["properties"].items():
            out[prefix + name] = prop
            ref = next((o["$ref"] for o in [prop, *prop.get("anyOf", [])] if "$ref" in o), None)
            if ref and prefix + name != "search.space":
                walk(defs[ref.rsplit("/", 1)[-1]], f"{prefix}{name}.")

    walk(schema, "")
    return out


def test_docs_config_md_is_what_the_schema_generates() -> None:
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_markdown(), f"docs/config.md is stale: run `{REGENERATE}`"


def test_schema_markdown_prints_the_reference_and_plain_schema_still_prints_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == config_markdown()
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_every_field_has_a_row_with_its_default_limits_and_flags() -> None:
    rows = _rows(config_markdown())
    fields = _leaf_fields(json_schema())
    assert set(rows) == set(fields)
    resumable, searchable = resumable_fields(), set(searchable_fields())
    for path, prop in fields.items():
        kind, default, _allowed, doc, search, resume = rows[path]
        assert doc, path
        if "default" in prop:
            assert default.startswith("`") and default != "``", path
        elif kind not in ("section", "mapping"):
            assert default == "required", path
        assert (search == "yes") == (path in searchable), path
        if path in resumable:
            assert resume == "may change", path
    assert rows["train.epochs"][:3] == ["integer", "`10`", ">= 1"]
    assert rows["data.val_fraction"][2] == "> 0, < 1"
    assert rows["model.pool"][2] == "`none`, `max`, `avg`"
    assert rows["model.dropout"][:3] == ["list of 2 numbers", "`[0.1, 0.5]`", "each >= 0, < 1"]
    assert rows["search.constraints.max_params"][:3] == ["integer or null", "`null`", ">= 1"]
    assert rows["train.weight_decay"][4:] == ["yes", "must match"]
    assert rows["search.n_trials"][4:] == ["no: it configures the search itself", "may change"]
    assert rows["data.cache_dir"][5] == "may change"
    assert rows["data.root"][4].startswith("no: it changes which images are loaded")


def test_the_reference_documents_the_data_root_lookup_and_the_space() -> None:
    markdown = config_markdown()
    root_doc = _rows(markdown)["data.root"][3]
    assert "looked up in the working directory first, then in the folder of the config file" in root_doc
    assert re.search(r"\| `lr` \| learning rate \| `\{low: 0.0001, high: 0.01, log: true\}` \|", markdown)
    assert "`train.weight_decay`" in markdown.split("## search.space", 1)[1]
