"""The report's plots, each as interactive HTML (plotly) and as PNG (matplotlib).

Optuna's optimization history, parameter importances and parallel coordinates, the top trials'
learning curves, the best value so far against the training epochs spent, and for a
two-objective study accuracy against cost with its Pareto front (Optuna's plots then show the
accuracy). A plot that cannot
be drawn for a study (importances need two finished trials and a parameter that varies) is
skipped with a note, never an exception. This module reads studies; it never trains.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from search.results.pareto import pareto_figure, pareto_png, pareto_points, pareto_problem
from search.store.records import EPOCHS_RUN_ATTR
from search.study.pareto import ACCURACY, accuracy, cost_name, is_pareto
from search.study.pruning import curve_of

log = logging.getLogger(__name__)

TOP_CURVES = 5


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(study: optuna.Study, df: pd.DataFrame, top: int = TOP_CURVES) -> list[FrozenTrial]:
    """The top trials (by the table's order) that recorded a learning curve (intermediate values,
    or in a two-objective study the ``val_accuracy_curve`` user attr)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    picked = [by_number[int(n)] for n in df["number"] if curve_of(by_number[int(n)])]
    return picked[:top]


def _curve_points(t: FrozenTrial) -> tuple[list[int], list[float]]:
    """(epochs, val accuracies) of a trial's learning curve."""
    points = [(e, v) for e, v in enumerate(curve_of(t), start=1) if v is not None]
    return [e for e, _ in points], [v for _, v in points]


class EffortPoint(NamedTuple):
    """The study after one more finished trial: its number, the epochs trained so far, the best."""

    number: int
    epochs: int  # cumulative epochs_run of the trials finished so far (pruned and failed ones too)
    best: float  # best COMPLETE value so far; nan before the first


def best_so_far(study: optuna.Study) -> list[EffortPoint]:
    """Best-so-far validation accuracy against cumulative training epochs, one point per trial.

    Finished trials (COMPLETE, PRUNED, FAIL) in order of completion; each adds its user attr
    ``epochs_run`` (a pruned trial counts the epochs it ran, one without the attr counts 0); the
    best is over COMPLETE trials, as the study's best trial is."""
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.datetime_complete is not None
    ]
    done.sort(key=lambda t: (t.datetime_complete, t.number))
    points: list[EffortPoint] = []
    epochs, best = 0, math.nan
    for t in done:
        epochs += int(t.user_attrs.get(EPOCHS_RUN_ATTR, 0) or 0)
        value = accuracy(t)
        if t.state == TrialState.COMPLETE and value is not None and not (best >= value):
            best = value
        points.append(EffortPoint(t.number, epochs, best))
    return points


def _effort_plotly(points: list[EffortPoint]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=[p.epochs for p in points],
            y=[p.best for p in points],
            mode="lines+markers",
            line_shape="hv",
            text=[f"trial {p.number}" for p in points],
            name="best so far",
        )
    )
    fig.update_layout(
        title="Best so far against training spent",
        xaxis_title="cumulative epochs (all finished trials, pruned ones included)",
        yaxis_title="best validation accuracy so far",
    )
    return fig


def _effort_png(points: list[EffortPoint], path: Path) -> None:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step([p.epochs for p in points], [p.best for p in points], where="post", marker="o")
    ax.set(
        title="Best so far against training spent",
        xlabel="cumulative epochs (all finished trials, pruned ones included)",
        ylabel="best validation accuracy so far",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curves_plotly(trials: list[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in trials:
        steps, values = _curve_points(t)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=f"trial {t.number} ({t.state.name.lower()})",
            )
        )
    fig.update_layout(
        title="Learning curves of the top trials", xaxis_title="epoch", yaxis_title="validation accuracy"
    )
    return fig


def _curves_png(trials: list[FrozenTrial], path: Path) -> None:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        steps, values = _curve_points(t)
        ax.plot(
            steps,
            values,
            marker="o",
            label=f"trial {t.number} ({t.state.name.lower()})",
        )
    ax.set(title="Learning curves of the top trials", xlabel="epoch", ylabel="validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _target(study: optuna.Study) -> dict[str, Any]:
    """Optuna's plots of a two-objective study need one target: the accuracy (the cost is the
    Pareto plot's other axis)."""
    if not is_pareto(study):
        return {}
    return {"target": accuracy, "target_name": ACCURACY}


def _optuna_png(plot: Callable[..., Any], study: optuna.Study, path: Path) -> None:
    plt = _matplotlib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna's quantile notes, matplotlib's ylim notes
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot(study, **_target(study))
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        if plot.__name__ == "plot_parallel_coordinate":
            tidy_parallel_coordinate(fig)
        else:
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def label_overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of visible tick labels (and a label with the colour bar) whose drawn boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes: list[tuple[str, Any]] = []
    bars = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            bars.append(ax.get_window_extent(renderer))
            continue
        shown = [axis for axis in (ax.xaxis, ax.yaxis) if axis.get_visible()]
        for lab in [lab for axis in shown for lab in axis.get_ticklabels()]:
            if lab.get_visible() and lab.get_text():
                boxes.append((lab.get_text(), lab.get_window_extent(renderer)))
    found = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if ba.overlaps(bb)]
    found += [(a, "colour bar") for a, ba in boxes for bar in bars if ba.overlaps(bar)]
    return found


def tidy_parallel_coordinate(fig: Any) -> None:
    """Make Optuna's matplotlib parallel-coordinate figure readable at its saved size.

    Wider figure, the plot and colour bar placed by hand (room for the last axis' labels), and
    each axis' tick labels on a white box so the lines do not run through them.
    """
    fig.set_size_inches(12, 6.5)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    if axes:
        axes[0].set_position((0.07, 0.14, 0.74, 0.76))
        axes[0].title.set_fontsize(15)
        axes[0].tick_params(axis="x", labelrotation=0, pad=8)
        for lab in axes[0].get_xticklabels():
            lab.set_horizontalalignment("center")
    for bar in bars:
        bar.set_position((0.9, 0.14, 0.018, 0.76))
    fig.canvas.draw()
    for ax in axes:
        ax.tick_params(labelsize=10)
        lo, hi = sorted(ax.get_ylim())
        for tick, lab in zip(ax.get_yticks(), ax.get_yticklabels(), strict=False):
            lab.set_bbox({"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})
            if not lo <= tick <= hi:  # a tick beyond the axis' range: its label would sit on the names
                lab.set_visible(False)


def importances_problem(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed for this study, or None when they can."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return f"parameter importances need at least 2 completed trials (this study has {len(done)})"
    varying = [
        name
        for name in {n for t in done for n in t.params}
        if len({repr(t.params.get(name)) for t in done}) > 1
    ]
    if len(varying) < 1:
        return "parameter importances need a parameter whose value differs between completed trials"
    return None


@dataclass(frozen=True)
class _Plot:
    """One plot: why it cannot be drawn (None: it can), its plotly figure, its PNG writer."""

    name: str
    problem: str | None
    html: Callable[[], Any]
    png: Callable[[Path], None]


def pareto_plot(study: optuna.Study) -> _Plot:
    """A two-objective study's accuracy against its cost (:mod:`search.results.pareto`)."""
    points, name = pareto_points(study), cost_name(study) or "cost"
    return _Plot(
        "pareto",
        pareto_problem(points),
        lambda: pareto_figure(points, name),
        lambda path: pareto_png(points, name, path),
    )


def _plots(study: optuna.Study, df: pd.DataFrame) -> list[_Plot]:
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    curves = learning_curves(study, df)
    effort = best_so_far(study)
    pareto = [] if not is_pareto(study) else [pareto_plot(study)]

    def optuna_plot(
        name: str, html: Callable[..., Any], png: Callable[..., Any], problem: str | None
    ) -> _Plot:
        return _Plot(
            name, problem, lambda: html(study, **_target(study)), lambda path: _optuna_png(png, study, path)
        )

    none_done = None if n_done else "needs a completed trial"
    return [
        optuna_plot(
            "optimization_history",
            vis.plot_optimization_history,
            vis_mpl.plot_optimization_history,
            none_done and f"optimization history {none_done}",
        ),
        optuna_plot(
            "param_importances",
            vis.plot_param_importances,
            vis_mpl.plot_param_importances,
            importances_problem(study),
        ),
        optuna_plot(
            "parallel_coordinate",
            vis.plot_parallel_coordinate,
            vis_mpl.plot_parallel_coordinate,
            none_done and f"parallel coordinate {none_done}",
        ),
        _Plot(
            "learning_curves",
            None if curves else "learning curves need a trial that reported intermediate values",
            lambda: _curves_plotly(curves),
            lambda path: _curves_png(curves, path),
        ),
        _Plot(
            "best_vs_epochs",
            None
            if any(p.best == p.best for p in effort)
            else "best so far against epochs needs a completed trial",
            lambda: _effort_plotly(effort),
            lambda path: _effort_png(effort, path),
        ),
        *pareto,
    ]


def write_plots(study: optuna.Study, df: pd.DataFrame, out: Path) -> tuple[list[str], list[str]]:
    """Write each plot as ``<name>.html`` (plotly) and ``<name>.png`` (matplotlib).

    Returns (plot names written, notes about plots skipped).
    """
    written: list[str] = []
    notes: list[str] = []
    for plot in _plots(study, df):
        if plot.problem is not None:
            notes.append(f"skipped {plot.name}: {plot.problem}")
            log.info("report: skipped %s (%s)", plot.name, plot.problem)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Optuna's quantile notes
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fig = plot.html()
            fig.write_html(str(out / f"{plot.name}.html"), include_plotlyjs="directory", full_html=True)
            plot.png(out / f"{plot.name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
            notes.append(f"skipped {plot.name}: {exc}")
            log.info("report: skipped %s (%s: %s)", plot.name, type(exc).__name__, exc)
            continue
        written.append(plot.name)
    return written, notes
