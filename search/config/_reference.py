"""The config described for editors and people: the JSON Schema (``search schema``) and the
markdown reference, docs/config.md (``search schema --markdown``), both generated from the schema."""

from __future__ import annotations

from typing import Any

import yaml

from search.config._errors import adapter
from search.config._fields import inner, resumable_fields, scalar_kind, why_not_searchable
from search.config._space import DEFAULT_SPACE, PARAM_NAMES, searchable_fields
from search.config._study import StudyConfig


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema (what ``search schema`` prints and editors check against)."""
    schema = adapter(StudyConfig).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convnet-search study config"
    space = schema["$defs"]["SearchConfig"]["properties"]["space"]
    schema["$defs"]["SpaceEntry"] = {  # a fixed value, or a spec
        "anyOf": [{"type": ["number", "string", "boolean"]}, space.pop("additionalProperties")]
    }
    space.pop("x-fix", None)
    space.update(_space_names("", [*PARAM_NAMES, *searchable_fields()]))
    space["type"] = ["object", "null"]  # null: the default space
    choices = schema["$defs"]["ParamSpec"]["properties"]["choices"]["anyOf"][0]
    choices.update(minItems=1, uniqueItems=True)  # as the tool checks them
    _json_bounds(schema)
    return schema


def _space_names(prefix: str, names: list[str]) -> dict[str, Any]:
    """The keys ``search.space`` takes below ``prefix``, as the loader reads them: each name the
    tool searches (the five, and every searchable field by its dotted path, e.g.
    ``train.weight_decay``) and the sections on the way to one written nested (``train:
    {weight_decay: ...}``, ``data: {augment.hflip: ...}``); any other name is refused."""
    entry = {"$ref": "#/$defs/SpaceEntry"}
    below = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    properties: dict[str, Any] = {}
    for rest in below:
        parts = rest.split(".")
        for i in range(1, len(parts)):
            section = ".".join(parts[:i])
            if section not in properties:
                properties[section] = {
                    "type": "object",
                    "minProperties": 1,
                    **_space_names(f"{prefix}{section}.", names),
                }
        properties[rest] = entry
    return {"properties": dict(sorted(properties.items())), "additionalProperties": False}


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


# --------------------------------------------------------------------------- docs/config.md

MARKDOWN_COMMAND = "search schema --markdown > docs/config.md"
_COLUMNS = ("key", "type", "default", "allowed", "description", "in search.space", "on resume")
_SHORT_NAMES = {  # the five names of search.space are not config fields: no metadata to read
    "c1": "channels of the first stage's convs",
    "c2": "channels of the second stage's convs (later stages double it)",
    "l1": "units of the hidden linear layer of the classifier",
    "lr": "learning rate",
    "batch_size": "training batch size",
}
_INTRO = """\
A study is one YAML file. Every key is optional (the defaults below apply); an unknown or repeated
key is an error, and so is a value of the wrong type or out of its limits: the message names the
field, the value and a fix. `search validate CONFIG` checks a file without running it; `--set
KEY=VALUE` (values read as YAML, e.g. `--set train.epochs=2`) changes any field on the command line.
`study_configs/schema.json` (`search schema`) is the same schema for editors.

Paths: outputs (`storage`, `artifacts_dir`, `checkpoints_dir`, `tensorboard_dir`, `data.cache_dir`)
are relative to the working directory, so they land where you run. A relative `data.root` is looked
up in the working directory first, then in the folder of the config file that sets it (see
[`data.root`](#data)).

Columns: **in search.space** says whether `search.space` may search the field (by its dotted name,
e.g. `train.weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}`), and if not, why; **on resume**
says whether the field may change when `search run` continues an existing study (`may change`) or
must match what the study was started with (`must match`: a changed value is refused, naming the
field)."""


def config_markdown() -> str:
    """The config reference (docs/config.md): every section and field with its type, default,
    limits or choices, description, whether ``search.space`` may search it and whether it may
    change on resume. Generated from the schema, so it cannot drift: ``search schema --markdown``."""
    schema = json_schema()
    out = [
        "# Study config reference",
        "",
        f"<!-- Generated from the schema by `{MARKDOWN_COMMAND}`; do not edit by hand. -->",
        "",
        _INTRO,
    ]
    _section(out, schema, schema, "")
    return "\n".join(out) + "\n"


def _section(out: list[str], schema: dict[str, Any], node: dict[str, Any], path: str) -> None:
    """One section's heading, description and table, then its sub-sections (depth first)."""
    out += ["", f"## {path or 'top level'}", "", _paragraphs(node.get("description", "")), ""]
    out += ["| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    subsections: list[tuple[str, dict[str, Any]]] = []
    for name, prop in node["properties"].items():
        key = f"{path}.{name}" if path else name
        ref = _ref(prop)
        if key == "search.space":
            out.append(_row(key, "mapping", "the five names below", "", prop, _anchor(key)))
            subsections.append((key, {}))
        elif ref is not None:
            default = _default(prop) if "default" in prop else ""
            out.append(_row(key, "section", default, "", prop, _anchor(key)))
            subsections.append((key, schema["$defs"][ref]))
        else:
            out.append(_row(key, _type(prop), _default(prop), _allowed(prop), prop, None))
    for key, sub in subsections:
        if key == "search.space":
            _space_section(out, schema)
        else:
            _section(out, schema, sub, key)


def _row(key: str, kind: str, default: str, allowed: str, prop: dict[str, Any], link: str | None) -> str:
    doc = _cell(prop.get("description", ""))
    if link is not None:
        doc = f"{doc} (see [{key}](#{link}))" if doc else f"see [{key}](#{link})"
    cells = [f"`{key}`", kind, default, allowed, doc, _searchable(key), _on_resume(key)]
    return "| " + " | ".join(cells) + " |"


def _space_section(out: list[str], schema: dict[str, Any]) -> None:
    """search.space: the five names with their default specs, the spec forms, the dotted fields."""
    out += ["", "## search.space", ""]
    out += [
        "The searched parameters: each key is one of the five names below or the dotted name of a",
        "config field; each value is a fixed value (`lr: 0.001`) or a spec. Names left out keep",
        "their default spec; a fixed value takes a name out of the search.",
        "",
        "| name | meaning | default |",
        "| --- | --- | --- |",
    ]
    for name in PARAM_NAMES:
        out.append(f"| `{name}` | {_SHORT_NAMES[name]} | `{_flow(DEFAULT_SPACE[name].as_yaml())}` |")
    spec = schema["$defs"]["ParamSpec"]
    out += ["", "### a parameter spec", "", _paragraphs(spec["description"]), ""]
    out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, prop in spec["properties"].items():
        out.append(f"| `{name}` | {_type(prop)} | {_default(prop)} | {_cell(prop['description'])} |")
    fields = ", ".join(f"`{p}`" for p in searchable_fields())
    out += ["", f"Config fields `search.space` may search by their dotted names: {fields}."]


def _type(prop: dict[str, Any]) -> str:
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    text = " or ".join(_one_type(o) for o in options)
    if "anyOf" not in prop or len(options) == len(prop["anyOf"]):
        return text
    return f"{text}, or null" if " or " in text else f"{text} or null"


def _one_type(node: dict[str, Any], plural: bool = False) -> str:
    """``integer``, ``list of 2 numbers``, ``number, string or true/false``, ..."""
    names = {"integer": "integer", "number": "number", "string": "string", "boolean": "true/false"}
    kind = node.get("type")
    if kind == "array":
        items = node.get("prefixItems")
        if items:
            return f"list of {len(items)} {_one_type(items[0], plural=True)}"
        return f"list of {_one_type(node.get('items', {}), plural=True)}"
    if isinstance(kind, list):
        kinds = [names[k] for k in kind]
        listed = ", ".join(kinds[:-1]) + f" or {kinds[-1]}"
        return f"values ({listed})" if plural else listed
    name = names.get(str(kind), "value")
    return name if not plural else "true/false values" if kind == "boolean" else f"{name}s"


def _default(prop: dict[str, Any]) -> str:
    return f"`{_flow(prop['default'])}`" if "default" in prop else "required"


def _allowed(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return ", ".join(f"`{_flow(v)}`" for v in prop["enum"])
    node = next((o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"), prop)
    each = ""
    if node.get("type") == "array":
        node = (node.get("prefixItems") or [node.get("items", {})])[0]
        each = "each "
    marks = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    limits = [f"{sign} {_flow(node[key])}" for key, sign in marks if key in node]
    return each + ", ".join(limits) if limits else ""


def _searchable(path: str) -> str:
    """``yes``, or ``no: why`` (the first reason on the path, as ``search.space`` states it)."""
    if path in searchable_fields():
        return "yes"
    cls: Any = StudyConfig
    for part in path.split("."):
        info = cls.__pydantic_fields__[part]
        reason = why_not_searchable(info)
        if reason is not None:
            return f"no: {reason}"
        cls = inner(info.annotation)
    if scalar_kind(cls) is None and not hasattr(cls, "__pydantic_fields__"):
        return "no: it is not a single value"
    return "per field" if hasattr(cls, "__pydantic_fields__") else "yes"


def _on_resume(path: str) -> str:
    """``may change``, ``must match``, or ``per field`` for a section with fields of both kinds."""
    fields = resumable_fields()
    if any(path == f or path.startswith(f + ".") for f in fields):
        return "may change"
    return "per field" if any(f.startswith(path + ".") for f in fields) else "must match"


def _ref(prop: dict[str, Any]) -> str | None:
    for node in [prop, *prop.get("anyOf", [])]:
        if "$ref" in node:
            return str(node["$ref"]).rsplit("/", 1)[-1]
    return None


def _anchor(path: str) -> str:
    """GitHub's anchor of heading ``## path``: lower case, dots dropped."""
    return path.replace(".", "").lower()


def _flow(value: Any) -> str:
    """A value as YAML flow text, e.g. ``[0.1, 0.5]``, ``{choices: [8, 16, 32]}``, ``null``."""
    text: str = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000)
    return text.removesuffix("\n...\n").strip()


def _paragraphs(text: str) -> str:
    """A docstring as markdown: paragraphs kept, lines inside one joined."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
