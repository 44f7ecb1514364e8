"""What ``model.init_from``'s file must fit before any study exists: some net the space can sample
(the images are checked torch-free by :func:`search.study.preflight.check_space_fits`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from search.config import ParamSpec, StudyConfig, space_corners
from search.engine.weights import file_sha256, matching, no_match_error, read_init_state
from search.study.recipe import DataFacts, TrialRecipe


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
