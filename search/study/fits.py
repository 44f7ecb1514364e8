"""What the study's space must fit before any study exists: the images (every net the space can
sample accepts them) and ``model.init_from`` (its file fits some net the space can sample)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from search.config import ConfigError, ParamSpec, StudyConfig, space_corners, trial_config
from search.engine.model import check_input_size
from search.engine.weights import file_sha256, matching, no_match_error, read_init_state
from search.study.recipe import DataFacts, TrialRecipe

# the model options that decide the smallest input the net accepts
_GEOMETRY = ("model.stages", "model.pool", "model.padding", "model.kernel_size")


def check_space_fits(cfg: StudyConfig, in_shape: tuple[int, int, int]) -> None:
    """ConfigError unless every net the space can sample accepts ``in_shape``.

    Checks every mix of the searched model options that change the net's geometry (finite
    choices; a ``model.stages`` range by its two ends: more stages never need smaller images), so
    ``model.stages: {choices: [2, 3, 4]}`` too deep for 8x8 digits is refused before any study
    exists instead of failing its trials one by one. With none of them searched, the study's own
    model settings are checked.
    """
    searched = [k for k in _GEOMETRY if k in cfg.search.space]
    if not searched:
        check_input_size(cfg.model, in_shape)
        return
    for mix in space_corners(cfg, _GEOMETRY):
        try:
            check_input_size(trial_config(cfg, mix).model, in_shape)
        except ConfigError as exc:
            raise ConfigError(
                f"search.space.{searched[0]}",
                ", ".join(f"{k}={mix[k]}" for k in searched),
                f"a net this space can sample does not fit: {exc.problem}",
                f"narrow {', '.join(searched)} in search.space to nets that fit, or use larger images",
            ) from None


def _first_value(spec: ParamSpec) -> Any:
    """A value the space can give a parameter: its fixed value, first choice or low end."""
    if spec.value is not None:
        return spec.value
    return spec.choices[0] if spec.choices is not None else spec.low


def read_init_from(cfg: StudyConfig, data: DataFacts) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """``model.init_from``'s tensors and content hash (None, None without it), checked before any
    study exists.

    Raises:
        InitFromError: the file is unreadable, carries pickled code, holds no state_dict, or none
            of its tensors fits a net the space can sample (each searched arch and block tried).
    """
    path = cfg.model.init_from
    if path is None:
        return None, None
    state = read_init_state(path)
    widths = {k: _first_value(cfg.search.space[k]) for k in ("c1", "c2", "l1")}
    model: nn.Module | None = None
    for mix in space_corners(cfg, ("model.arch", "model.block")):
        with torch.device("meta"):  # shapes only: nothing allocated
            model = TrialRecipe.of(cfg, {**widths, **mix}, data).model()
        if matching(model, state):
            return state, file_sha256(path)
    assert model is not None
    raise no_match_error(path, model, state)
