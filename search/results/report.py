"""A study's trials as a pandas DataFrame, a summary, tables on disk and plots.

:func:`trials_frame` is the one table (one row per trial, best first); :func:`summarize` adds
the study-level facts (best trial, counts per state, compute seconds, seconds saved by pruning and
early stopping); :func:`write_report` writes ``report.csv``, ``report.parquet``, ``report.md``,
``report.html`` and the plots (each as interactive HTML and as PNG) into one folder. Plots that
cannot be drawn for a study (importances need two finished trials and a parameter that varies)
are skipped with a logged note, never an exception. This module reads studies; it never trains.
"""

from __future__ import annotations

import html
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.config import PARAM_NAMES
from search.store.storage import (
    CONFIG_ATTR,
    CONSTRAINT_ATTR,
    LATENCY_ATTR,
    N_PARAMS_ATTR,
    best_trial,
    is_feasible,
)
from search.study.stored import budgets_of, open_existing, study_config

log = logging.getLogger(__name__)

COLUMNS = (
    "number",
    "state",
    "value",
    *PARAM_NAMES,
    "best_epoch",
    "epochs_run",
    "pruned_at_epoch",
    "duration_s",
    "images_per_s",
    "n_params",
    "latency_ms",
    "feasible",
    "device",
    "datetime_start",
    "stop_reason",
    "fail_reason",
    "constraint",
)
# Ranking of states for "best first": finished trials by value, then the rest.
_STATE_RANK = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
TOP_CURVES = 5


def _utc(ts: datetime | None) -> pd.Timestamp:
    """Optuna writes naive local timestamps; read them in this machine's zone, return UTC."""
    if ts is None:
        return pd.NaT
    return pd.Timestamp(ts.astimezone(UTC))  # naive: taken as this machine's local time


def _dotted_dtype(col: pd.Series) -> pd.Series:
    """A searched config field's column: booleans, integers, numbers or strings (missing: NA)."""
    present = [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, bool) for v in present):
        return col.astype("boolean")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present):
            return pd.to_numeric(col, errors="coerce").astype("Int64")
        return pd.to_numeric(col, errors="coerce").astype("float64")
    return col.map(
        lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    ).astype("string")


def _dotted_names(study: optuna.Study, space: dict[str, Any]) -> list[str]:
    """The searched config fields (dotted names): the stored space's, then any other trial param's."""
    names = [k for k in space if "." in k]
    for t in study.get_trials(deepcopy=False):
        names += [k for k in t.params if "." in k and k not in names]
    return names


def _feasible(trial: FrozenTrial, constrained: bool) -> bool | None:
    """Within the study's budgets; None (NA) for a trial of a constrained study not yet checked."""
    if not constrained:
        return True  # no budget to exceed
    return is_feasible(trial) if trial.constraints else None


def _row(
    trial: FrozenTrial, fixed: dict[str, Any], dotted: Sequence[str] = (), constrained: bool = False
) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value if trial.value is not None else math.nan,
    }
    for name in PARAM_NAMES:
        row[name] = trial.params.get(name, fixed.get(name, math.nan))
    for name in dotted:
        row[name] = trial.params.get(name, fixed.get(name))
    row.update(
        best_epoch=attrs.get("best_epoch"),
        epochs_run=attrs.get("epochs_run"),
        pruned_at_epoch=attrs.get("pruned_at_epoch"),
        duration_s=trial.duration.total_seconds() if trial.duration is not None else math.nan,
        images_per_s=attrs.get("images_per_s", math.nan),
        n_params=attrs.get(N_PARAMS_ATTR),
        latency_ms=attrs.get(LATENCY_ATTR, math.nan),
        feasible=_feasible(trial, constrained),
        device=attrs.get("device"),
        datetime_start=_utc(trial.datetime_start),
        stop_reason=attrs.get("stop_reason"),
        fail_reason=attrs.get("fail_reason"),
        constraint=attrs.get(CONSTRAINT_ATTR),
    )
    return row


def frame_of(study: optuna.Study) -> pd.DataFrame:
    """:func:`trials_frame` for an already loaded study."""
    fixed: dict[str, Any] = {}
    space: dict[str, Any] = {}
    raw = study.user_attrs.get(CONFIG_ATTR)
    if isinstance(raw, dict):
        space = raw.get("search", {}).get("space", {})
        fixed = {
            k: v
            for k, v in space.items()
            if isinstance(v, int | float | str) and (not isinstance(v, bool) or "." in k)
        }
    dotted = _dotted_names(study, space)
    constrained = bool(budgets_of(study))
    rows = [_row(t, fixed, dotted, constrained) for t in study.get_trials(deepcopy=False)]
    at = COLUMNS.index(PARAM_NAMES[-1]) + 1  # searched config fields right after the five names
    df = pd.DataFrame(rows, columns=[*COLUMNS[:at], *dotted, *COLUMNS[at:]])
    for col in dotted:
        df[col] = _dotted_dtype(df[col])
    for col in ("best_epoch", "epochs_run", "pruned_at_epoch", "n_params", "c1", "c2", "l1", "batch_size"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("value", "lr", "duration_s", "images_per_s", "latency_ms"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["feasible"] = df["feasible"].astype("boolean")
    df["datetime_start"] = pd.to_datetime(df["datetime_start"], utc=True)
    for col in ("state", "device", "stop_reason", "fail_reason", "constraint"):
        df[col] = df[col].astype("string")
    for col in ("fail_reason", "constraint"):
        if df[col].isna().all():
            df = df.drop(columns=col)
    rank = df["state"].map(_STATE_RANK).fillna(len(_STATE_RANK)).astype(int)
    order = df.assign(_rank=rank).sort_values(
        ["_rank", "value", "number"], ascending=[True, False, True], na_position="last"
    )
    return order.drop(columns="_rank").reset_index(drop=True)


def trials_frame(study_name: str, storage: str | BaseStorage) -> pd.DataFrame:
    """One row per trial, best first (COMPLETE by value, then PRUNED by value, then the rest).

    Columns: number, state, value, c1, c2, l1, lr, batch_size, then one per searched config
    field (its dotted name, e.g. ``train.weight_decay``), best_epoch, epochs_run,
    pruned_at_epoch, duration_s, images_per_s (training images per second), n_params,
    latency_ms (measured only with search.constraints.max_latency_ms), feasible (within the
    study's budgets; NA for a trial not checked yet), device, datetime_start (UTC), stop_reason,
    fail_reason when any trial failed, and constraint (the budget exceeded, with the figures)
    when any trial was over budget.
    """
    return frame_of(open_existing(study_name, storage))


# --------------------------------------------------------------------------- summary


@dataclass
class Summary:
    study: str
    n_trials: int
    states: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    epochs_per_trial: int
    compute_seconds: float
    compute_seconds_by_device: dict[str, float]
    full_run_seconds: float
    saved_by_pruning_s: float
    saved_by_early_stopping_s: float
    notes: list[str] = field(default_factory=list)
    confirm: dict[str, Any] | None = None  # the study user attr ``confirm`` (`search confirm`)
    budgets: dict[str, float] = field(default_factory=dict)  # search.constraints that are set
    over_budget: int = 0  # finished trials over a budget (PRUNED before training)

    @property
    def saved_seconds(self) -> float:
        return self.saved_by_pruning_s + self.saved_by_early_stopping_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["saved_seconds"] = self.saved_seconds
        return out


def summarize(study: optuna.Study, df: pd.DataFrame, epochs: int) -> Summary:
    """Study-level facts from the trials table.

    Seconds saved: each finished trial's time per epoch (duration / epochs_run) times the epochs
    it did not run (``epochs - epochs_run``), split by PRUNED (pruning) and COMPLETE (early stopping).
    """
    states = {s.name: int((df["state"] == s.name).sum()) for s in TrialState}
    best = best_trial(study)
    finished = df[df["state"].isin(["COMPLETE", "PRUNED"]) & (df["epochs_run"].fillna(0) > 0)]
    per_epoch = finished["duration_s"] / finished["epochs_run"].astype("float64")
    missing = (epochs - finished["epochs_run"].astype("float64")).clip(lower=0)
    saved = per_epoch * missing
    by_device = df.groupby(df["device"].fillna("unknown"))["duration_s"].sum()
    return Summary(
        study=study.study_name,
        n_trials=len(df),
        states={k: v for k, v in states.items() if v},
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        epochs_per_trial=epochs,
        compute_seconds=float(df["duration_s"].fillna(0).sum()),
        compute_seconds_by_device={str(k): float(v) for k, v in by_device.items()},
        full_run_seconds=float((per_epoch * epochs).sum()),
        saved_by_pruning_s=float(saved[finished["state"] == "PRUNED"].sum()),
        saved_by_early_stopping_s=float(saved[finished["state"] == "COMPLETE"].sum()),
        confirm=_confirm_attr(study),
        budgets=budgets_of(study),
        over_budget=int((df["state"].isin(["COMPLETE", "PRUNED"]) & ~df["feasible"].fillna(True)).sum()),
    )


def _confirm_attr(study: optuna.Study) -> dict[str, Any] | None:
    raw = study.user_attrs.get("confirm")  # written by search.results.confirm (a layer above this one)
    return dict(raw) if isinstance(raw, dict) and isinstance(raw.get("verdict"), str) else None


def summary_lines(s: Summary) -> list[str]:
    """The summary as short human-readable lines (used by report.md, report.html and the CLI)."""
    best = (
        ("no completed trial within budget" if s.budgets else "no completed trial")
        if s.best_number is None
        else f"trial {s.best_number}, value {s.best_value:.4f}, "
        + " ".join(f"{k}={_fmt(v)}" for k, v in s.best_params.items())
    )
    devices = ", ".join(f"{d} {sec:.1f} s" for d, sec in s.compute_seconds_by_device.items())
    lines = [
        f"study: {s.study}",
        f"best: {best}",
        "trials: " + (", ".join(f"{n} {k.lower()}" for k, n in s.states.items()) or "none"),
        f"compute: {s.compute_seconds:.1f} s ({devices or 'none'})",
        f"saved by pruning: {s.saved_by_pruning_s:.1f} s, by early stopping: "
        f"{s.saved_by_early_stopping_s:.1f} s (vs {s.full_run_seconds:.1f} s estimated for every "
        f"trial running all {s.epochs_per_trial} epochs)",
    ]
    if s.budgets:
        n_finished = s.states.get("COMPLETE", 0) + s.states.get("PRUNED", 0)
        lines.append(
            "budgets: "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in s.budgets.items())
            + f" ({s.over_budget} of {n_finished} finished trials over budget, pruned before training;"
            " best: the best within budget)"
        )
    if s.confirm is not None:
        lines.append(f"confirm: {s.confirm['verdict']}")
    return lines + [f"note: {n}" for n in s.notes]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --------------------------------------------------------------------------- tables


def _cell(v: Any) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, pd.Timestamp):
        return str(v.strftime("%Y-%m-%d %H:%M:%S"))
    return _fmt(v).replace("|", "\\|")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


# --------------------------------------------------------------------------- plots


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(study: optuna.Study, df: pd.DataFrame, top: int = TOP_CURVES) -> list[FrozenTrial]:
    """The top trials (by the table's order) that reported intermediate values."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    picked = [by_number[int(n)] for n in df["number"] if by_number[int(n)].intermediate_values]
    return picked[:top]


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
        epochs += int(t.user_attrs.get("epochs_run", 0) or 0)
        if t.state == TrialState.COMPLETE and t.value is not None and not (best >= t.value):
            best = float(t.value)
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
        steps = sorted(t.intermediate_values)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[t.intermediate_values[s] for s in steps],
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
        steps = sorted(t.intermediate_values)
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            marker="o",
            label=f"trial {t.number} ({t.state.name.lower()})",
        )
    ax.set(title="Learning curves of the top trials", xlabel="epoch", ylabel="validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _optuna_png(plot: Callable[..., Any], study: optuna.Study, path: Path) -> None:
    plt = _matplotlib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna's quantile notes, matplotlib's ylim notes
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot(study)
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
        for lab in ax.get_yticklabels():
            lab.set_bbox({"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})


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


def write_plots(study: optuna.Study, df: pd.DataFrame, out: Path) -> tuple[list[str], list[str]]:
    """Write each plot as ``<name>.html`` (plotly) and ``<name>.png`` (matplotlib).

    Returns (plot names written, notes about plots skipped).
    """
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    written: list[str] = []
    notes: list[str] = []
    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    specs: list[tuple[str, Callable[..., Any] | None, Callable[..., Any] | None, str | None]] = [
        (
            "optimization_history",
            vis.plot_optimization_history,
            vis_mpl.plot_optimization_history,
            None if n_done else "optimization history needs a completed trial",
        ),
        (
            "param_importances",
            vis.plot_param_importances,
            vis_mpl.plot_param_importances,
            importances_problem(study),
        ),
        (
            "parallel_coordinate",
            vis.plot_parallel_coordinate,
            vis_mpl.plot_parallel_coordinate,
            None if n_done else "parallel coordinate needs a completed trial",
        ),
        ("learning_curves", None, None, None),
        ("best_vs_epochs", None, None, None),
    ]
    curves = learning_curves(study, df)
    effort = best_so_far(study)
    for name, html_plot, png_plot, known_problem in specs:
        problem = known_problem
        if name == "learning_curves" and not curves:
            problem = "learning curves need a trial that reported intermediate values"
        if name == "best_vs_epochs" and not any(p.best == p.best for p in effort):
            problem = "best so far against epochs needs a completed trial"
        if problem is not None:
            notes.append(f"skipped {name}: {problem}")
            log.info("report: skipped %s (%s)", name, problem)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Optuna's quantile notes
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if name == "best_vs_epochs":
                    fig = _effort_plotly(effort)
                else:
                    fig = _curves_plotly(curves) if html_plot is None else html_plot(study)
            fig.write_html(str(out / f"{name}.html"), include_plotlyjs="directory", full_html=True)
            if name == "best_vs_epochs":
                _effort_png(effort, out / f"{name}.png")
            elif png_plot is None:
                _curves_png(curves, out / f"{name}.png")
            else:
                _optuna_png(png_plot, study, out / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
            notes.append(f"skipped {name}: {exc}")
            log.info("report: skipped %s (%s: %s)", name, type(exc).__name__, exc)
            continue
        written.append(name)
    return written, notes


# --------------------------------------------------------------------------- report


def default_report_dir(study_name: str) -> Path:
    return Path("storage") / "reports" / study_name


def _html_page(df: pd.DataFrame, summary: Summary, plots: list[str]) -> str:
    items = "\n".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(summary))
    figures = "\n".join(
        f'<figure><a href="{p}.html"><img src="{p}.png" alt="{p}"></a>'
        f'<figcaption><a href="{p}.html">{p.replace("_", " ")} (interactive)</a></figcaption></figure>'
        for p in plots
    )
    table = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(summary.study)}: trials</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}img{{max-width:640px}}
figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>Study {html.escape(summary.study)}</h1><ul>{items}</ul>
{figures}
<h2>Trials (best first)</h2>{table}</body></html>
"""


def _markdown_page(df: pd.DataFrame, summary: Summary, plots: list[str]) -> str:
    lines = [f"# Study {summary.study}", ""]
    lines += [f"- {line}" for line in summary_lines(summary)]
    lines += ["", *(f"![{p}]({p}.png)" for p in plots), "", "## Trials (best first)", ""]
    lines += [markdown_table(df), ""]
    return "\n".join(lines)


@dataclass
class ReportFiles:
    out: Path
    tables: list[Path]
    plots: list[str]
    summary: Summary


def write_report(study_name: str, storage: str | BaseStorage, out: str | Path | None = None) -> ReportFiles:
    """Write the trials table (CSV, Parquet, Markdown, HTML), summary.json and the plots to ``out``."""
    study = open_existing(study_name, storage)
    df = frame_of(study)
    if isinstance(study.user_attrs.get(CONFIG_ATTR), dict):
        epochs = study_config(study).train.epochs
    else:  # a study made outside `search run`: the longest trial stands in for "all epochs"
        epochs = int(df["epochs_run"].fillna(0).max()) if len(df) else 0
    summary = summarize(study, df, epochs)
    folder = Path(out) if out is not None else default_report_dir(study_name)
    folder.mkdir(parents=True, exist_ok=True)
    plots, notes = write_plots(study, df, folder)
    summary.notes.extend(notes)
    tables = [folder / f"report.{ext}" for ext in ("csv", "parquet", "md", "html")]
    df.to_csv(tables[0], index=False)
    df.to_parquet(tables[1], index=False)
    tables[2].write_text(_markdown_page(df, summary, plots), encoding="utf-8")
    tables[3].write_text(_html_page(df, summary, plots), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    log.info("report for %s: %d trials, %d plots in %s", study_name, len(df), len(plots), folder)
    return ReportFiles(folder, tables, plots, summary)
