"""The lines commands print about trials: ``trial   3 COMPLETE value=0.9790 c1=16 ...``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.config import PARAM_NAMES
from search.store.records import (
    BEST_EPOCH_ATTR,
    CONSTRAINT_ATTR,
    EPOCHS_RUN_ATTR,
    FAIL_REASON_ATTR,
    PRUNED_AT_EPOCH_ATTR,
)


def format_params(params: Mapping[str, Any]) -> str:
    """``c1=48 c2=96 l1=256 lr=0.001 batch_size=512`` (the five names first, then dotted ones)."""
    parts = []
    for name in [*PARAM_NAMES, *(k for k in params if k not in PARAM_NAMES)]:
        if name in params:
            v = params[name]
            parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(parts)


def value_text(trial: Any, cost_name: str | None = None) -> str:
    """``0.9790``, or in a two-objective study ``0.9790 n_params=1234`` (``-``: no value)."""
    values = trial.values
    if not values:
        return "-"
    text = f"{values[0]:.4f}"
    if len(values) == 2:
        cost = values[1]
        shown = f"{cost:.0f}" if float(cost).is_integer() else f"{cost:.4g}"
        text += f" {cost_name or 'cost'}={shown}"
    return text


def trial_line(trial: Any, cost_name: str | None = None) -> str:
    """One finished trial: number, state, value (and cost), params, epochs, how it ended, seconds."""
    value = value_text(trial, cost_name)
    seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
    epochs = trial.user_attrs.get(EPOCHS_RUN_ATTR, "-")
    extra = ""
    attrs = trial.user_attrs
    if CONSTRAINT_ATTR in attrs:  # over a search.constraints budget: pruned before training
        extra = f" over_budget={attrs[CONSTRAINT_ATTR]!r}"
    elif PRUNED_AT_EPOCH_ATTR in attrs:
        extra = f" pruned_at={attrs[PRUNED_AT_EPOCH_ATTR]}"
    elif FAIL_REASON_ATTR in attrs:
        extra = f" reason={attrs[FAIL_REASON_ATTR]!r}"
    elif BEST_EPOCH_ATTR in attrs:
        extra = f" best_epoch={attrs[BEST_EPOCH_ATTR]}"
    return (
        f"trial {trial.number:>4} {trial.state.name:<8} value={value} "
        f"{format_params(trial.params)} epochs={epochs}{extra} {seconds:.1f}s"
    )
