"""From text to a config and back: YAML with its guards (size, aliases), ``--set`` overrides,
:func:`load_config` / :func:`config_from_dict`, and validated changed copies."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from search.config._errors import ConfigError, build
from search.config._inputs import locate_data_root
from search.config._space import ParamSpec, read_dotted, set_dotted
from search.config._study import StudyConfig

MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused unread
MAX_CONFIG_NODES = 100_000  # values in a config once YAML aliases are expanded

# PyYAML raises more than YAMLError on bad input: ValueError for impossible dates ("2001-13-01"),
# "!!float abc" or ints over 4300 digits, RecursionError for very deep nesting.
YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)


def _check_size(raw: Any, path: str, shown: Any = None) -> None:
    """Refuse values that expand (YAML aliases share nodes) to more than MAX_CONFIG_NODES, or recurse.

    Counts the expanded size with memoisation by identity, so a "billion laughs" costs little."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, list | dict):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise ConfigError(
                path, shown, "a value contains itself (recursive YAML alias)", "remove the alias"
            )
        busy.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    path,
                    shown,
                    f"more than {MAX_CONFIG_NODES} values once aliases are expanded",
                    "write a smaller config",
                )
        busy.discard(key)
        sizes[key] = total
        return total

    try:
        size(raw)
    except RecursionError as exc:
        raise ConfigError(path, shown, "nested too deeply", "flatten the config") from exc


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, path: str) -> None:
    """Refuse a mapping that names a key twice, at any depth (YAML would keep the last silently).

    Walks the composed node graph once (a node shared by aliases is visited once); keys merged in
    with ``<<`` may be overridden, as YAML intends. The error names the key's dotted path (under
    ``path`` for a ``--set`` value) and both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, "" if path == "config" else path)]
    visited: set[int] = set()
    found: list[tuple[int, ConfigError]] = []  # the first in the file is reported
    while stack:
        node, prefix = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{prefix}[{i}]") for i, child in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                stack.append((value_node, prefix))
                continue
            name = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            key = (key_node.tag, key_node.value)
            if key in first_line:
                where = f"line {line}" if first_line[key] == line else f"lines {first_line[key]} and {line}"
                where = where if path == "config" else f"{where} of the --set value"
                problem = f"the key is given twice ({where}); YAML would keep only the last"
                fix = "keep one of them (merge the two blocks)"
                found.append((line, ConfigError(name, key_node.value, problem, fix)))
            first_line[key] = line
            stack.append((value_node, name))
    if found:
        raise min(found, key=lambda item: item[0])[1]


def _parse_yaml(text: str, path: str, shown: Any) -> Any:
    """YAML text parsed (PyYAML's safe loader), duplicate keys refused, its expanded size checked."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, path)
        raw = loader.construct_document(node)
    finally:
        loader.dispose()
    _check_size(raw, path, shown)
    return raw


def apply_overrides(raw: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides (values parsed as YAML) to a raw config mapping, in place.

    Returns:
        ``raw`` itself, changed.

    Raises:
        ConfigError: an item is not ``KEY=VALUE``, its value is not YAML, or a part of its key
            is a value, not a section.
    """
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "expected KEY=VALUE", "write e.g. --set train.epochs=2")
        try:
            value = _parse_yaml(text, key, text) if text.strip() else None
        except YAML_ERRORS as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                key,
                text,
                f"not valid YAML ({exc.__class__.__name__})",
                "quote strings, e.g. --set name='my-study'",
            ) from exc
        set_dotted(raw, key, value)
    return raw


def config_from_dict(raw: Mapping[str, Any], *, default_name: str = "study") -> StudyConfig:
    """Build and validate a config from a plain mapping (a parsed YAML file or a study's stored config).

    Paths are taken as written (no data.root lookup: that is :func:`load_config`'s, for a file).

    Raises:
        ConfigError: the mapping is not one, too large, or a value is bad.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("config", raw, "the top level must be a mapping", "write key: value lines")
    _check_size(raw, "config")
    data = dict(raw)
    data.setdefault("name", default_name)
    cfg: StudyConfig = build(StudyConfig, data)
    return cfg


def _read_text(p: Path) -> str:
    """The config file's text: at most MAX_CONFIG_BYTES, UTF-8; ConfigError otherwise."""
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError("config", str(p), "file not found", "check the path") from exc
    except OSError as exc:
        raise ConfigError("config", str(p), f"unreadable ({exc})", "give a UTF-8 YAML file") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "config", str(p), f"larger than {MAX_CONFIG_BYTES} bytes", "give a study config (YAML)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", str(p), f"unreadable ({exc})", "give a UTF-8 YAML file") from exc


def _read_yaml(p: Path) -> dict[str, Any]:
    """The config file's top-level mapping (empty for an empty file); ConfigError otherwise."""
    text = _read_text(p)
    try:
        raw = _parse_yaml(text, "config", str(p))
    except YAML_ERRORS as exc:
        if isinstance(exc, ConfigError):
            raise
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"invalid YAML{where}" if isinstance(exc, yaml.YAMLError) else f"invalid YAML value ({exc})"
        raise ConfigError("config", str(p), problem, "fix the YAML syntax") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config", raw, "the top level must be a mapping", "write key: value lines")
    return raw


def _sets_data_root(raw: Mapping[str, Any], overrides: Sequence[str]) -> bool:
    """Whether data.root comes from the file: the file sets it and no ``--set`` replaces it."""
    data = raw.get("data")
    in_file = isinstance(data, Mapping) and "root" in data
    keys = {item.partition("=")[0].strip() for item in overrides}
    return in_file and not keys & {"data", "data.root"}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a YAML study config, apply ``--set`` overrides, validate.

    A relative ``data.root`` becomes the absolute folder found first in the working directory,
    then (when the file set it) in the file's folder (:func:`locate_data_root`).

    Args:
        path: the YAML file; its name (without suffix) is the study's default name.
        overrides: ``KEY=VALUE`` strings, values parsed as YAML (``--set``).

    Returns:
        The validated config.

    Raises:
        ConfigError: the file, a value or an override is bad (naming the field and the fix).
    """
    p = Path(path)
    raw = _read_yaml(p)
    from_file = _sets_data_root(raw, overrides)
    raw = apply_overrides(raw, overrides)
    try:
        cfg = config_from_dict(raw, default_name=p.stem)
    except ConfigError as exc:
        if exc.field != "name" or "name" in raw:
            raise
        raise ConfigError(  # the name is the file's: say so, and how to give another
            exc.field,
            exc.value,
            exc.problem,
            f"{exc.fix}; set name: in the file (or rename it)",
            detail=f"The study is named after the file {p.name}, which sets no name",
        ) from None
    return locate_data_root(cfg, p.absolute().parent if from_file else None)


def _plain(obj: Any) -> Any:
    """Config objects as plain JSON/YAML values (a spec in its compact form)."""
    if isinstance(obj, ParamSpec):
        return obj.as_yaml()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """A JSON/YAML-safe mapping that :func:`config_from_dict` turns back into the same config."""
    out: dict[str, Any] = _plain(cfg)
    return out


def with_overrides(cfg: StudyConfig, changes: Mapping[str, Any]) -> StudyConfig:
    """A validated copy of ``cfg`` with dotted fields changed, e.g. ``{"search.n_trials": 5}``.

    Raises:
        ConfigError: a changed value is bad (named by its dotted field).
    """
    raw = to_dict(cfg)
    for key, value in changes.items():
        set_dotted(raw, key, _plain(value))
    return config_from_dict(raw)


def trial_config(cfg: StudyConfig, params: Mapping[str, Any]) -> StudyConfig:
    """The config a trial trains with: ``cfg`` with the trial's dotted parameters applied
    (``train.weight_decay``, ...; the space's fixed dotted values too) and validated again.

    The five short names (c1, c2, l1, lr, batch_size) are not config fields and are ignored here;
    the same ``cfg`` comes back when nothing dotted is searched.
    """
    fixed = {k: s.value for k, s in cfg.search.space.items() if "." in k and s.value is not None}
    dotted = {**fixed, **{k: v for k, v in params.items() if "." in k}}
    changed = {
        k: v
        for k, v in dotted.items()
        if read_dotted(cfg, k) != v or type(read_dotted(cfg, k)) is not type(v)
    }
    return with_overrides(cfg, changed) if changed else cfg


def replace(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """A validated copy of ``cfg`` with top-level fields (values or whole sections) changed."""
    return with_overrides(cfg, changes)
