"""Two-objective (Pareto) studies: their objectives, the front, its knee and its hypervolume.

A study with ``search.objectives: [val_accuracy, COST]`` is an Optuna multi-objective study
(directions maximize, minimize; metric names the two objectives), so ``study.best_trials`` is its
Pareto front and optuna-dashboard shows it. Every value of such a trial is ``(accuracy, cost)``:
:func:`accuracy` reads the first whatever the study, so callers need not ask which kind it is.
Imports neither torch nor the storage: ``search status`` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.trial import FrozenTrial

from search.config import StudyConfig

ACCURACY = "val_accuracy"  # the first objective of every study


def metric_names(cfg: StudyConfig) -> list[str]:
    """The study's objectives as Optuna's metric names (the dashboard's axes)."""
    return list(cfg.search.objectives)


def directions(cfg: StudyConfig) -> list[Literal["maximize", "minimize"]]:
    """``["maximize"]``, or ``["maximize", "minimize"]`` with a cost objective."""
    return ["maximize"] if cfg.search.cost is None else ["maximize", "minimize"]


def is_pareto(study: optuna.Study) -> bool:
    """Whether ``study`` has two objectives (accuracy and a cost)."""
    return len(study.directions) == 2


def cost_name(study: optuna.Study) -> str | None:
    """The cost objective's name (``n_params``, ``flops``, ``latency_ms``), None for one objective."""
    if not is_pareto(study):
        return None
    names = study.metric_names
    return names[1] if names and len(names) == 2 else "cost"


def accuracy(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy: its (first) objective value, None when it has none."""
    return None if not trial.values else float(trial.values[0])


def cost(trial: FrozenTrial) -> float | None:
    """The cost value of a two-objective trial (None when it has none)."""
    return None if not trial.values or len(trial.values) < 2 else float(trial.values[1])


def dominates(a: tuple[float, float | None], b: tuple[float, float | None]) -> bool:
    """Whether (accuracy, cost) ``a`` dominates ``b``: no less accurate, no dearer, better in one."""
    (acc_a, cost_a), (acc_b, cost_b) = a, b
    if cost_a is None or cost_b is None:
        return False
    return acc_a >= acc_b and cost_a <= cost_b and (acc_a > acc_b or cost_a < cost_b)


def front(study: optuna.Study) -> list[FrozenTrial]:
    """``study.best_trials`` (feasible, non-dominated COMPLETE trials), cheapest first."""
    return sorted(study.best_trials, key=lambda t: (cost(t) or 0.0, -(accuracy(t) or 0.0), t.number))


def most_accurate(members: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The front member every command takes as "the best trial": the most accurate (ties: the
    cheaper, then the lower number)."""
    if not members:
        return None
    return min(members, key=lambda t: (-(accuracy(t) or 0.0), cost(t) or 0.0, t.number))


def knee(members: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The front's knee: the member farthest from the line through its two extremes, both axes
    scaled to the front's range (the cost on a log scale when it spans more than a factor of 10)
    (None with fewer than 3 members: no bend)."""
    points = [(c, a, t) for t in members if (c := cost(t)) is not None and (a := accuracy(t)) is not None]
    if len(points) < 3:
        return None
    points.sort(key=lambda p: p[0])
    logscale = points[0][0] > 0 and points[-1][0] / points[0][0] > 10
    xs = [math.log(p[0]) if logscale else p[0] for p in points]
    ys = [p[1] for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    norm = [((x - xs[0]) / dx, (y - ys[0]) / dy) for x, y in zip(xs, ys, strict=True)]
    ex, ey = norm[-1]
    length = math.hypot(ex, ey) or 1.0
    distance = [abs(ex * y - ey * x) / length for x, y in norm]
    return points[max(range(len(points)), key=lambda i: distance[i])][2]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` (accuracy maximised, cost minimised) and bounded by
    ``reference`` (an accuracy below and a cost above every point that counts).

    Points not better than the reference in both objectives add nothing. The sweep goes from the
    cheapest point up, each adding the strip of cost it is the most accurate one over.
    """
    ref_acc, ref_cost = reference
    kept = sorted((c, a) for a, c in points if a > ref_acc and c < ref_cost)
    area, best = 0.0, ref_acc
    for i, (c, a) in enumerate(kept):
        best = max(best, a)
        upper = kept[i + 1][0] if i + 1 < len(kept) else ref_cost
        area += (upper - c) * (best - ref_acc)
    return area


@dataclass(frozen=True)
class FrontSummary:
    """What ``search status`` and the run summary show of a two-objective study's front."""

    cost_name: str
    size: int
    cheapest: FrozenTrial
    most_accurate: FrozenTrial
    knee: FrozenTrial | None

    def lines(self) -> list[str]:
        """``front: 4 trials; cheapest #3 ...; most accurate #7 ...; knee #5 ...``."""
        parts = [
            f"cheapest {self.describe(self.cheapest)}",
            f"most accurate {self.describe(self.most_accurate)}",
        ]
        if self.knee is not None:
            parts.append(f"knee {self.describe(self.knee)}")
        return [f"front: {self.size} trial(s); " + "; ".join(parts)]

    def describe(self, t: FrozenTrial) -> str:
        return f"#{t.number} val_accuracy {accuracy(t):.4f} {self.cost_name} {_figure(cost(t))}"


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 1000 and float(value).is_integer() else f"{value:.4g}"


def front_summary(study: optuna.Study) -> FrontSummary | None:
    """The front of a two-objective study (None: one objective, or no feasible trial complete)."""
    if not is_pareto(study):
        return None
    members = front(study)
    best = most_accurate(members)
    if best is None:
        return None
    return FrontSummary(str(cost_name(study)), len(members), members[0], best, knee(members))
