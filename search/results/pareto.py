"""The report of a two-objective study: ``pareto.csv`` and the accuracy-against-cost plot.

``pareto.csv`` holds exactly ``study.best_trials`` (the Pareto front of feasible COMPLETE trials),
cheapest first: number, both objectives, params, whether it is the knee. The plot (``pareto.html``,
plotly; ``pareto.png``, matplotlib) shows every trial with a cost: the front (joined by its
staircase), the dominated COMPLETE trials, the pruned ones at the best accuracy they reached, and
the knee. This module reads studies; it never trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from search.study.pareto import ACCURACY, accuracy, cost, cost_name, front, knee
from search.study.pruning import curve_of

KINDS = ("front", "dominated", "pruned")  # how a point is drawn, in this order
_STYLE = {  # kind -> (colour, marker (matplotlib), symbol (plotly))
    "front": ("#d62728", "o", "circle"),
    "dominated": ("#1f77b4", "o", "circle-open"),
    "pruned": ("#7f7f7f", "x", "x"),
}


@dataclass(frozen=True)
class ParetoPoint:
    """One trial on the accuracy-against-cost plot."""

    number: int
    kind: str  # one of KINDS
    accuracy: float  # a pruned trial: the best accuracy its curve reached
    cost: float
    knee: bool = False


def _pruned_point(t: FrozenTrial, name: str) -> ParetoPoint | None:
    """A PRUNED trial at its cost (user attr of the cost's name) and best recorded accuracy."""
    figure = t.user_attrs.get(name)
    seen = [v for v in curve_of(t) if v is not None]
    if figure is None or not seen:
        return None  # over budget before training, or the cost never measured
    return ParetoPoint(t.number, "pruned", max(seen), float(figure))


def pareto_points(study: optuna.Study) -> list[ParetoPoint]:
    """Every trial of a two-objective study that has both an accuracy and a cost."""
    name = cost_name(study) or "cost"
    members = front(study)
    on_front = {t.number for t in members}
    bend = knee(members)
    points: list[ParetoPoint] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.PRUNED:
            point = _pruned_point(t, name)
            if point is not None:
                points.append(point)
            continue
        a, c = accuracy(t), cost(t)
        if a is None or c is None:
            continue
        kind = "front" if t.number in on_front else "dominated"
        points.append(ParetoPoint(t.number, kind, a, c, bend is not None and t.number == bend.number))
    return points


def pareto_problem(points: list[ParetoPoint]) -> str | None:
    """Why the plot cannot be drawn (None: it can)."""
    return None if any(p.kind == "front" for p in points) else "the Pareto plot needs a completed trial"


def _log_x(points: list[ParetoPoint]) -> bool:
    costs = [p.cost for p in points]
    return bool(costs) and min(costs) > 0 and max(costs) / min(costs) > 10


def _front_line(points: list[ParetoPoint]) -> tuple[list[float], list[float]]:
    """The front's staircase: each member holds its accuracy up to the next (dearer) one's cost."""
    members = sorted((p.cost, p.accuracy) for p in points if p.kind == "front")
    xs: list[float] = []
    ys: list[float] = []
    for i, (c, a) in enumerate(members):
        xs.append(c)
        ys.append(a)
        if i + 1 < len(members):
            xs.append(members[i + 1][0])
            ys.append(a)
    return xs, ys


def pareto_figure(points: list[ParetoPoint], name: str) -> Any:
    """The interactive plot (plotly)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    xs, ys = _front_line(points)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": _STYLE["front"][0]}, name="front"))
    for kind in KINDS:
        shown = [p for p in points if p.kind == kind]
        colour, _, symbol = _STYLE[kind]
        fig.add_trace(
            go.Scatter(
                x=[p.cost for p in shown],
                y=[p.accuracy for p in shown],
                mode="markers",
                marker={"color": colour, "symbol": symbol, "size": 9},
                name=f"{kind} ({len(shown)})",
                text=[f"trial {p.number}" for p in shown],
            )
        )
    for p in points:
        if p.knee:
            fig.add_annotation(x=p.cost, y=p.accuracy, text=f"knee: trial {p.number}", showarrow=True)
    fig.update_layout(
        title=f"Accuracy against {name}: the Pareto front", xaxis_title=name, yaxis_title=ACCURACY
    )
    if _log_x(points):
        fig.update_xaxes(type="log")
    return fig


def pareto_png(points: list[ParetoPoint], name: str, path: Path) -> None:
    """The same plot as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs, ys = _front_line(points)
    ax.plot(xs, ys, color=_STYLE["front"][0], lw=1.2)
    for kind in KINDS:
        shown = [p for p in points if p.kind == kind]
        colour, marker, _ = _STYLE[kind]
        face = "none" if kind == "dominated" else colour
        ax.scatter(
            [p.cost for p in shown],
            [p.accuracy for p in shown],
            marker=marker,
            facecolors=face,
            edgecolors=colour,
            label=f"{kind} ({len(shown)})",
        )
    for p in points:
        if p.knee:
            ax.annotate(
                f"knee: trial {p.number}",
                (p.cost, p.accuracy),
                xytext=(10, -20),
                textcoords="offset points",
                arrowprops={"arrowstyle": "->"},
            )
    if _log_x(points):
        ax.set_xscale("log")
    ax.set(title=f"Accuracy against {name}: the Pareto front", xlabel=name, ylabel=ACCURACY)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pareto_frame(study: optuna.Study) -> pd.DataFrame:
    """``study.best_trials`` as a table, cheapest first: number, val_accuracy, the cost, the
    params (one column each), knee."""
    name = cost_name(study) or "cost"
    members = front(study)
    bend = knee(members)
    rows = [
        {
            "number": t.number,
            ACCURACY: accuracy(t),
            name: cost(t),
            **t.params,
            "knee": bend is not None and t.number == bend.number,
        }
        for t in members
    ]
    params = sorted({k for t in members for k in t.params})
    return pd.DataFrame(rows, columns=["number", ACCURACY, name, *params, "knee"])


def write_pareto_csv(study: optuna.Study, folder: Path) -> Path:
    """``pareto.csv`` in ``folder``."""
    path = folder / "pareto.csv"
    pareto_frame(study).to_csv(path, index=False)
    return path
