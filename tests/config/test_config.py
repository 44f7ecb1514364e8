from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.config import (
    DEFAULT_SPACE,
    PARAM_NAMES,
    ConfigError,
    ParamSpec,
    StudyConfig,
    apply_overrides,
    config_from_dict,
    json_schema,
    load_config,
    replace,
    resumable_fields,
    searchable_fields,
    to_dict,
    trial_config,
    with_overrides,
)
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = config_from_dict({})
    assert cfg.data.dataset == "digits"
    assert cfg.search.space["lr"] == DEFAULT_SPACE["lr"]
    assert config_from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "study_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_configs_load_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert config_from_dict(to_dict(cfg)) == cfg


def test_seed_grid_replica_matches_the_seed() -> None:
    cfg = load_config(REPO / "study_configs" / "cifar10_grid.yaml")
    space = cfg.search.space
    assert space["c1"].choices == (48, 96) and space["c2"].choices == (96, 192)
    assert space["l1"].choices == (256, 512)
    assert space["lr"].value == pytest.approx(1e-3) and space["batch_size"].value == 512
    assert (cfg.train.epochs, cfg.train.patience, cfg.model.padding) == (10, 3, 0)
    assert cfg.search.sampler.name == "grid" and cfg.search.n_trials == 8


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    p = tmp_path / "my-study.yaml"
    p.write_text("seed: 3\n")
    cfg = load_config(p)
    assert (cfg.name, cfg.seed) == ("my-study", 3)


def test_param_forms() -> None:
    cfg = config_from_dict(
        {
            "search": {
                "space": {
                    "c1": 16,
                    "c2": {"choices": [16, 32]},
                    "l1": {"low": 32, "high": 128, "step": 32},
                    "lr": {"low": "1e-4", "high": 1e-2, "log": True},  # PyYAML reads 1e-4 as text
                }
            }
        }
    )
    space = cfg.search.space
    assert space["c1"] == ParamSpec(value=16)
    assert space["c2"].choices == (16, 32)
    assert space["l1"].step == 32
    assert space["lr"].low == pytest.approx(1e-4) and space["lr"].log
    assert space["batch_size"] == DEFAULT_SPACE["batch_size"]  # unspecified: default


BAD = [
    ({"trian": {}}, "trian", "unknown key"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset", "digits, mnist"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "between 0 and 1"),
    ({"data": {"augment": {"flip": True}}}, "data.augment.flip", "unknown key"),
    ({"train": {"epochs": "ten"}}, "train.epochs", "expected an integer"),
    ({"train": {"epochs": 0}}, "train.epochs", ">= 1"),
    ({"train": {"amp": "yes"}}, "train.amp", "true or false"),
    ({"train": {"checkpoint_every_s": -1}}, "train.checkpoint_every_s", ">= 0"),
    ({"model": {"padding": 5}}, "model.padding", "0, 1 or 2"),
    ({"model": {"dropout": [0.1]}}, "model.dropout", "list of 2"),
    ({"search": {"space": {"c1": {"low": 64, "high": 8}}}}, "search.space.c1", "low .64. > high .8."),
    ({"search": {"space": {"c1": {"choices": []}}}}, "search.space.c1.choices", "non-empty"),
    ({"search": {"space": {"c1": [8, 16]}}}, "search.space.c1", "choices"),
    ({"search": {"space": {"c1": {"choices": [8, 8]}}}}, "search.space.c1.choices", "duplicate"),
    ({"search": {"space": {"c1": {"low": 8}}}}, "search.space.c1", "missing high"),
    ({"search": {"space": {"c1": {"choices": [8.5]}}}}, r"search.space.c1.choices\[0\]", "integer"),
    (
        {"search": {"space": {"lr": {"low": 0, "high": 1e-2, "log": True}}}},
        "search.space.lr",
        "positive",
    ),
    (
        {"search": {"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}}},
        "search.space.lr",
        "exclusive",
    ),
    ({"search": {"space": {"depth": {"choices": [1]}}}}, "search.space.depth", "unknown parameter"),
    ({"search": {"sampler": {"name": "bayes"}}}, "search.sampler.name", "tpe, random, grid"),
    ({"search": {"pruner": {"name": "aggressive"}}}, "search.pruner.name", "median"),
    ({"search": {"n_trials": -1}}, "search.n_trials", ">= 1"),
    (
        {"search": {"sampler": {"name": "grid"}, "space": {"lr": {"low": 1e-4, "high": 1e-2}}}},
        "search.space.lr",
        "finite set",
    ),
    ({"name": "../escape"}, "name", "safe study name"),
    ({"name": "a/b"}, "name", "safe study name"),
    ({"name": "abc\n"}, "name", "safe study name"),  # a pattern's $ would match before the newline
    ({"seed": -5}, "seed", r"within \[0, 4294967295\]"),
    ({"seed": 10**23}, "seed", r"within \[0, 4294967295\]"),
    ({"data": {"augment": {"rotate_deg": 181}}}, "data.augment.rotate_deg", r"\[0, 180\]"),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "data.test_fraction", "room for training"),
    ({"data": {"normalize": {"mean": [0.5], "std": [0.5, 0.5]}}}, "data.normalize", "one value per channel"),
    ({"data": {"synthetic": {"n_samples": 20}}}, "data.synthetic.n_samples", "too few"),
    ({"search": {"grace_period_s": 20}}, "search.grace_period_s", "must exceed"),
    ({"search": {"space": {"lr": {"value": 0.1, "low": 0.01}}}}, "search.space.lr", "value alone"),
    ({"search": {"space": {"lr": {"choices": [0.1], "low": 0.01}}}}, "search.space.lr", "exclusive"),
    (
        {"search": {"space": {"c2": {"low": 16, "high": 64, "step": -16}}}},
        "search.space.c2.step",
        "positive",
    ),
    ({"train": {"epochs": True}}, "train.epochs", "expected an integer"),
    ({"train": {"epochs": 2.5}}, "train.epochs", "expected an integer"),
    ({"storage": "studies.db"}, "storage", "database URL"),
    ({"finetune": {"lr_scale": 0}}, "finetune.lr_scale", r"\(0, 10\]"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer", "unknown optimizer"),
    ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing", r"\[0, 1\)"),
    ({"train": {"lr_schedule": "step"}}, "train.lr_schedule", "unknown lr schedule"),
    ({"train": {"optimizer": "sgd", "nesterov": True, "momentum": 0}}, "train.nesterov", "momentum > 0"),
    # dotted search.space keys: checked by the field they name
    (
        {"search": {"space": {"train.foo": {"choices": [1]}}}},
        "search.space.train.foo",
        "unknown config field",
    ),
    (
        {"search": {"space": {"trian.weight_decay": 0.1}}},
        "search.space.trian.weight_decay",
        "unknown config",
    ),
    (
        {"search": {"space": {"model.dropout": {"choices": [0.1]}}}},
        "search.space.model.dropout",
        "single value",
    ),
    (
        {"search": {"space": {"data.augment": {"choices": [1]}}}},
        "search.space.data.augment",
        "a section",
    ),
    (
        {"search": {"space": {"train.weight_decay": {"low": -1.0, "high": 0.1}}}},
        "search.space.train.weight_decay.low",
        ">= 0",
    ),
    (
        {"search": {"space": {"train.label_smoothing": {"low": 0.0, "high": 1.0}}}},
        "search.space.train.label_smoothing.high",
        r"\[0, 1\)",
    ),
    (
        {"search": {"space": {"data.augment.rotate_deg": {"choices": [0, 200]}}}},
        r"search.space.data.augment.rotate_deg.choices\[1\]",
        r"\[0, 180\]",
    ),
    (
        {"search": {"space": {"train.optimizer": {"choices": ["adam", 3]}}}},
        r"search.space.train.optimizer.choices\[1\]",
        "unknown optimizer",
    ),
    (
        {"search": {"space": {"train.weight_decay": {"choices": ["much"]}}}},
        r"search.space.train.weight_decay.choices\[0\]",
        "expected a number",
    ),
    (
        {"search": {"space": {"data.augment.hflip": {"choices": ["yes"]}}}},
        "search.space.data.augment.hflip",
        "true",
    ),
    (
        {"search": {"space": {"train.patience": {"low": 1.5, "high": 4}}}},
        "search.space.train.patience.low",
        "integer",
    ),
    (
        {"search": {"space": {"train.optimizer": {"low": 1, "high": 2}}}},
        "search.space.train.optimizer",
        "range",
    ),
    (
        {"search": {"space": {"train.weight_decay": {"low": 0.0, "high": 0.1, "log": True}}}},
        "search.space.train.weight_decay",
        "log scale needs low > 0",
    ),
    (
        {"search": {"space": {"data.dataset": {"choices": ["digits"]}}}},
        "search.space.data.dataset",
        "split",
    ),
    (
        {"search": {"space": {"data.image_size": {"choices": [16, 32]}}}},
        "search.space.data.image_size",
        "split",
    ),
    (
        {"search": {"space": {"data.val_fraction": {"low": 0.1, "high": 0.2}}}},
        "search.space.data.val",
        "split",
    ),
    ({"search": {"space": {"seed": {"choices": [1, 2]}}}}, "search.space.seed", "cannot be searched"),
    ({"search": {"space": {"storage": "sqlite:///x.db"}}}, "search.space.storage", "run setting"),
    (
        {"search": {"space": {"train.threads": {"choices": [1, 2]}}}},
        "search.space.train.threads",
        "run setting",
    ),
    (
        {"search": {"space": {"train.eval_batch_size": 512}}},
        "search.space.train.eval_batch_size",
        "run setting",
    ),
    (
        {"search": {"space": {"train.checkpoint_every_s": 1}}},
        "search.space.train.checkpoint_every",
        "run setting",
    ),
    (
        {"search": {"space": {"train.tensorboard": True}}},
        "search.space.train.tensorboard",
        "run setting",
    ),
    (
        {"search": {"space": {"search.n_trials": {"choices": [1]}}}},
        "search.space.search.n_trials",
        "the search",
    ),
    ({"search": {"space": {"data.synthetic.n_classes": 3}}}, "search.space.data.synthetic", "split"),
    (
        {
            "search": {
                "sampler": {"name": "grid"},
                "space": {"lr": 0.001, "train.weight_decay": {"low": 0.0, "high": 0.1}},
            }
        },
        "search.space.train.weight_decay",
        "finite set",
    ),
    # each searched value alone is fine; their mix with the study's train settings is not
    (
        {
            "train": {"optimizer": "sgd", "momentum": 0.0},
            "search": {"space": {"train.nesterov": {"choices": [True, False]}}},
        },
        "search.space.train.nesterov",
        "Nesterov momentum at momentum 0",
    ),
    (
        {
            "train": {"nesterov": True},
            "search": {
                "space": {
                    "train.optimizer": {"choices": ["adam", "sgd"]},
                    "train.momentum": {"low": 0.0, "high": 0.9},
                }
            },
        },
        "search.space.train.optimizer",
        "Nesterov momentum at momentum 0",
    ),
]


def test_searched_momentum_above_zero_may_meet_nesterov() -> None:
    space = {"train.optimizer": {"choices": ["adam", "sgd"]}, "train.momentum": {"low": 0.1, "high": 0.9}}
    cfg = config_from_dict({"train": {"nesterov": True}, "search": {"space": space}})
    assert trial_config(cfg, {"train.optimizer": "sgd", "train.momentum": 0.5}).train.momentum == 0.5


@pytest.mark.parametrize(("raw", "field", "message"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_values_name_field_value_and_fix(raw: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw)
    assert info.value.field.startswith(field.replace("\\", ""))
    assert "Fix:" in str(info.value) and "got" in str(info.value)


def test_overrides_parse_yaml_values() -> None:
    raw = apply_overrides(
        {"train": {"epochs": 10}},
        [
            "train.epochs=2",
            "data.dataset=synthetic",
            "search.space.lr=0.001",
            "search.space.c1={choices: [4, 8]}",
            "search.timeout_s=null",
        ],
    )
    cfg = config_from_dict(raw)
    assert cfg.train.epochs == 2 and cfg.data.dataset == "synthetic"
    assert cfg.search.space["lr"].value == pytest.approx(1e-3)
    assert cfg.search.space["c1"].choices == (4, 8)
    assert cfg.search.timeout_s is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epochs", "KEY=VALUE"),
        ("=3", "KEY=VALUE"),
        ("a..b=1", "KEY=VALUE"),
        ("train.epochs.x=1", "is a value"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"train": {"epochs": 10}}, [item])


def test_override_typo_is_an_unknown_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_config(p, ["train.epoch=2"])


@pytest.mark.parametrize(
    ("text", "message"),
    [("name: [unclosed\n", "invalid YAML at line"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_bad_yaml(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/study.yaml")


def test_config_is_frozen() -> None:
    cfg = StudyConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]
    space = config_from_dict({}).search.space
    with pytest.raises(TypeError):
        space["lr"] = ParamSpec(value=0.1)  # type: ignore[index]
    assert dict(space.items()) == dict(DEFAULT_SPACE) and list(space) == list(PARAM_NAMES)


def test_overrides_are_validated() -> None:
    cfg = config_from_dict({})
    assert with_overrides(cfg, {"search.n_trials": 5, "train.epochs": 2}).search.n_trials == 5
    with pytest.raises(ConfigError, match=r"search\.n_trials: must be >= 1 \(got -5\)"):
        with_overrides(cfg, {"search.n_trials": -5})
    with pytest.raises(ConfigError, match=r"^seed: must be within"):
        replace(cfg, seed=-1)
    assert replace(cfg, seed=7).seed == 7


def test_integral_floats_are_integers_and_params_keep_their_types() -> None:
    cfg = config_from_dict(
        {"train": {"epochs": 4.0}, "search": {"space": {"c1": {"choices": [8.0, 16]}, "lr": 1}}}
    )
    assert cfg.train.epochs == 4 and isinstance(cfg.train.epochs, int)
    assert cfg.search.space["c1"].choices == (8, 16) and all(
        isinstance(v, int) for v in cfg.search.space["c1"].choices
    )
    assert isinstance(cfg.search.space["lr"].value, float)


def test_resumable_fields_come_from_field_metadata() -> None:
    fields = resumable_fields()
    assert {"name", "storage", "search.n_trials", "search.sampler", "finetune", "train.compile"} <= set(
        fields
    )
    assert not {"seed", "train.epochs", "search.space", "data.dataset"} & set(fields)


@pytest.mark.parametrize(
    "text",
    [
        # "billion laughs": 10 levels of ten aliases, 10**10 values once expanded
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
        + "train: {epochs: *a9}\n",
        "train: &r {epochs: [*r]}\n",  # a recursive alias
    ],
    ids=["billion-laughs", "recursive"],
)
def test_alias_bombs_are_refused_cheaply(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="alias") as info:
        load_config(p)
    assert len(str(info.value)) < 500


def test_alias_bombs_in_overrides_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: c\n")
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "[" + ", ".join(levels) + "]"
    with pytest.raises(ConfigError, match=r"train\.epochs: more than 100000 values once aliases"):
        load_config(p, [f"train.epochs={bomb}"])
    with pytest.raises(ConfigError, match="recursive"):
        load_config(p, ["train.epochs=&r [*r]"])


def test_validate_ends_quickly_on_alias_bombs_and_dev_zero(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    )
    for path, message in (
        (bomb, "more than 100000 values once aliases are expanded"),
        (Path("/dev/zero"), "larger than"),
    ):
        proc = run_cli("validate", str(path), cwd=tmp_path, timeout=60, check=2)
        assert f"error: config: {message}" in proc.stderr and "Traceback" not in proc.stderr


DOTTED = {
    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "train.weight_decay": {"low": "1e-6", "high": 1.0e-2, "log": True},  # PyYAML reads 1e-6 as text
    "train.optimizer": {"choices": ["adam", "adamw", "sgd"]},
    "train.label_smoothing": {"low": 0, "high": 0.2},  # 0 allowed: the field's own bound, not "> 0"
    "data.augment.rotate_deg": {"choices": [0, 10, 20]},
    "data.augment.hflip": {"choices": [True, False]},
    "train.patience": {"low": 1, "high": 4},
    "model.padding": 1,  # fixed
}


def test_dotted_space_keys_are_typed_by_their_fields() -> None:
    space = config_from_dict({"search": {"space": DOTTED}}).search.space
    assert list(space)[:5] == list(PARAM_NAMES) and space["c1"] == DEFAULT_SPACE["c1"]
    assert space["train.weight_decay"].low == pytest.approx(1e-6) and space["train.weight_decay"].log
    assert space["train.optimizer"].choices == ("adam", "adamw", "sgd")
    low = space["train.label_smoothing"].low
    assert low == 0.0 and isinstance(low, float)
    assert space["data.augment.rotate_deg"].choices == (0.0, 10.0, 20.0)
    assert all(isinstance(v, float) for v in space["data.augment.rotate_deg"].choices or ())
    assert space["data.augment.hflip"].choices == (True, False)
    assert (space["train.patience"].low, space["train.patience"].high) == (1, 4)
    assert isinstance(space["train.patience"].low, int)
    assert space["model.padding"].value == 1
    cfg = config_from_dict({"search": {"space": DOTTED}})
    assert config_from_dict(to_dict(cfg)) == cfg  # round trip (the study stores its config so)


def test_nested_space_sections_are_dotted_keys(tmp_path: Path) -> None:
    """What ``--set search.space.train.weight_decay=...`` writes: nested sections, read as dotted."""
    raw = apply_overrides({}, ["search.space.train.weight_decay={low: 0.0, high: 0.1}"])
    space = config_from_dict(raw).search.space
    assert space["train.weight_decay"].high == pytest.approx(0.1)


def test_searchable_fields_come_from_field_metadata() -> None:
    fields = set(searchable_fields())
    assert {
        "train.weight_decay",
        "train.optimizer",
        "train.label_smoothing",
        "data.augment.rotate_deg",
    } <= fields
    assert {
        "train.momentum",
        "train.nesterov",
        "train.lr_schedule",
        "train.warmup_epochs",
        "model.padding",
    } <= fields
    resumable = set(resumable_fields())
    assert not fields & resumable
    for path in (
        "data.dataset",
        "data.image_size",
        "data.val_fraction",
        "seed",
        "train.epochs",
        "model.dropout",
    ):
        assert path not in fields
    assert not any(p.startswith(("search.", "finetune.", "confirm.", "data.synthetic")) for p in fields)


def test_trial_config_applies_dotted_params_only() -> None:
    cfg = config_from_dict({"search": {"space": DOTTED}})
    assert trial_config(cfg, {"lr": 0.1, "c1": 8}) == cfg  # model.padding 1 is the default already
    params = {
        "lr": 0.1,
        "train.optimizer": "sgd",
        "train.weight_decay": 1e-3,
        "data.augment.rotate_deg": 10.0,
    }
    trial = trial_config(cfg, params)
    assert trial.train.optimizer == "sgd" and trial.train.weight_decay == pytest.approx(1e-3)
    assert trial.data.augment.rotate_deg == 10.0 and trial.train.epochs == cfg.train.epochs
    assert trial.search == cfg.search and cfg.train.optimizer == "adam"  # cfg itself unchanged
    fixed = config_from_dict({"search": {"space": {"model.padding": 0}}, "train": {"patience": 2}})
    assert trial_config(fixed, {}).model.padding == 0  # the space's fixed values apply too
    with pytest.raises(ConfigError, match=r"train\.weight_decay"):
        trial_config(cfg, {"train.weight_decay": -1.0})


def test_schema_takes_dotted_space_keys() -> None:
    schema = json_schema()
    space = schema["$defs"]["SearchConfig"]["properties"]["space"]
    for key in (*PARAM_NAMES, *searchable_fields()):
        assert space["properties"][key] == {"$ref": "#/$defs/SpaceEntry"}, key
    assert "depth" not in space["properties"] and "train." not in space["properties"]
    assert space["additionalProperties"] is False
    fixed = schema["$defs"]["SpaceEntry"]["anyOf"][0]
    assert fixed == {"type": ["number", "string", "boolean"]}  # train.optimizer: sgd is a fixed value


def test_schema_bounds_of_nullable_fields_are_json_schema_keywords() -> None:
    schema = json_schema()
    max_params = schema["$defs"]["ConstraintsConfig"]["properties"]["max_params"]["anyOf"][0]
    assert max_params == {"type": "integer", "minimum": 1}  # not pydantic's {"ge": 1}, which editors ignore
    assert '"ge"' not in json.dumps(schema) and '"gt"' not in json.dumps(schema)
