"""The config described for people and editors: the JSON Schema (``search schema``)."""

from __future__ import annotations

from typing import Any

from search.config._errors import adapter
from search.config._study import StudyConfig


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema (what ``search schema`` prints and editors check against)."""
    schema = adapter(StudyConfig).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convnet-search study config"
    space = schema["$defs"]["SearchConfig"]["properties"]["space"]
    space["additionalProperties"] = {  # a fixed value, or a spec
        "anyOf": [{"type": ["number", "string", "boolean"]}, space["additionalProperties"]]
    }
    _json_bounds(schema)
    return schema


# pydantic writes a nullable integer's bounds under their Python names (``{"ge": 1, "type":
# "integer"}`` for ``max_params: Int | None``), which JSON Schema (and so an editor) ignores
_JSON_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _json_bounds(node: Any) -> None:
    if isinstance(node, dict):
        if "type" in node:
            for name, keyword in _JSON_BOUNDS.items():
                if name in node:
                    node[keyword] = node.pop(name)
        for value in node.values():
            _json_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _json_bounds(value)
