"""The study config: everything a study needs is one frozen :class:`StudyConfig`, declared once
with pydantic (unknown keys refused), built and validated once at the edge (:func:`load_config`
from YAML with ``--set`` overrides, :func:`config_from_dict` from a mapping), never mutated:
changed copies come from :func:`with_overrides` / :func:`replace` / :func:`trial_config`, which
validate again. Each field declares its type, bounds, description, the fix shown when it is wrong,
whether it may change when a study resumes and whether ``search.space`` may search it; every
problem raises :class:`ConfigError` (one line: the field, the value, the fix). Defaults live here
and nowhere else. Imports neither torch nor optuna.

Modules, bottom up: ``_fields`` (how a field is declared, its metadata read back), ``_errors``
(ConfigError; pydantic's errors as one line), ``_types`` (value types), ``_space`` (search-space
specs, dotted paths), ``_checks`` (checks across fields, names), ``_sections`` (data, model,
train), ``_study`` (search, finetune, confirm, StudyConfig), ``_inputs`` (where data.root is,
input checks), ``_load`` (YAML, overrides, copies), ``_reference`` (JSON Schema, docs/config.md).
Other code imports only from ``search.config``.
"""

from search.config._checks import check_study_name, mask_url, unused_params
from search.config._errors import ConfigError, build
from search.config._fields import default_of, resumable_fields
from search.config._inputs import check_inputs, locate_data_root
from search.config._load import (
    apply_overrides,
    config_from_dict,
    load_config,
    replace,
    to_dict,
    trial_config,
    with_overrides,
)
from search.config._reference import config_markdown, json_schema
from search.config._sections import AugmentConfig, DataConfig, ModelConfig, SyntheticConfig, TrainConfig
from search.config._space import (
    DEFAULT_SPACE,
    INT_PARAMS,
    PARAM_NAMES,
    ParamSpec,
    is_int_range,
    sampled_high,
    searchable_fields,
    space_corners,
)
from search.config._study import (
    ConstraintsConfig,
    FinetuneConfig,
    PrunerConfig,
    SearchConfig,
    StudyConfig,
)
from search.config._types import SAMPLERS, path_too_long

__all__ = [
    "DEFAULT_SPACE",
    "INT_PARAMS",
    "PARAM_NAMES",
    "SAMPLERS",
    "AugmentConfig",
    "ConfigError",
    "ConstraintsConfig",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "ParamSpec",
    "PrunerConfig",
    "SearchConfig",
    "StudyConfig",
    "SyntheticConfig",
    "TrainConfig",
    "apply_overrides",
    "build",
    "check_inputs",
    "check_study_name",
    "config_from_dict",
    "config_markdown",
    "default_of",
    "is_int_range",
    "json_schema",
    "load_config",
    "locate_data_root",
    "mask_url",
    "path_too_long",
    "replace",
    "resumable_fields",
    "sampled_high",
    "searchable_fields",
    "space_corners",
    "to_dict",
    "trial_config",
    "unused_params",
    "with_overrides",
]
