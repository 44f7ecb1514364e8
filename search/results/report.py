"""A study's trials as a pandas DataFrame, a summary, tables on disk and plots.

:func:`trials_frame` is the one table (one row per trial, best first); :func:`summarize` adds
the study-level facts (best trial, counts per state, compute seconds, seconds saved by pruning and
early stopping, and the later stages when they ran: ``search confirm``'s verdict, ``search
finetune``'s start, final and test accuracy); :func:`write_report` writes ``report.csv``,
``report.parquet``, ``report.md``, ``report.html``, ``summary.json`` and the plots
(:mod:`search.results.plots`) into one folder. This module reads studies; it never trains.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.config import PARAM_NAMES
from search.results.pareto import write_pareto_csv
from search.results.plots import EffortPoint, best_so_far, write_plots
from search.store.records import (
    BEST_EPOCH_ATTR,
    CONFIG_ATTR,
    CONFIRM_ATTR,
    CONSTRAINT_ATTR,
    DEVICE_ATTR,
    EPOCHS_RUN_ATTR,
    FAIL_REASON_ATTR,
    FAMILY_ATTR,
    FINETUNE_ATTR,
    FLOPS_ATTR,
    IMAGES_PER_S_ATTR,
    LATENCY_ATTR,
    N_PARAMS_ATTR,
    PRECISION_ATTR,
    PRUNED_AT_EPOCH_ATTR,
    STOP_REASON_ATTR,
)
from search.study.budgets import best_trial, is_feasible
from search.study.pareto import accuracy, front_summary
from search.study.stored import budgets_of, open_existing, study_config

__all__ = ["EffortPoint", "best_so_far"]  # moved to search.results.plots; re-exported for callers

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
    "family",
    "latency_ms",
    "feasible",
    "device",
    "precision",
    "datetime_start",
    "stop_reason",
    "fail_reason",
    "constraint",
)
# Ranking of states for "best first": finished trials by value, then the rest.
_STATE_RANK = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


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
        "value": _or_nan(accuracy(trial)),  # a two-objective study: the accuracy (its cost: n_params...)
    }
    for name in PARAM_NAMES:
        row[name] = trial.params.get(name, fixed.get(name, math.nan))
    for name in dotted:
        row[name] = trial.params.get(name, fixed.get(name))
    row.update(
        best_epoch=attrs.get(BEST_EPOCH_ATTR),
        epochs_run=attrs.get(EPOCHS_RUN_ATTR),
        pruned_at_epoch=attrs.get(PRUNED_AT_EPOCH_ATTR),
        duration_s=trial.duration.total_seconds() if trial.duration is not None else math.nan,
        images_per_s=attrs.get(IMAGES_PER_S_ATTR, math.nan),
        n_params=attrs.get(N_PARAMS_ATTR),
        family=attrs.get(FAMILY_ATTR),
        latency_ms=attrs.get(LATENCY_ATTR, math.nan),
        feasible=_feasible(trial, constrained),
        device=attrs.get(DEVICE_ATTR),
        precision=attrs.get(PRECISION_ATTR),
        datetime_start=_utc(trial.datetime_start),
        stop_reason=attrs.get(STOP_REASON_ATTR),
        fail_reason=attrs.get(FAIL_REASON_ATTR),
        constraint=attrs.get(CONSTRAINT_ATTR),
    )
    return row


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


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
    for col in ("state", "family", "device", "precision", "stop_reason", "fail_reason", "constraint"):
        df[col] = df[col].astype("string")
    for col in ("fail_reason", "constraint"):
        if df[col].isna().all():
            df = df.drop(columns=col)
    flops = [t.user_attrs.get(FLOPS_ATTR) for t in study.get_trials(deepcopy=False)]
    if any(f is not None for f in flops):  # the flops objective: its figure after latency_ms
        column = pd.Series(flops, index=df.index).astype("Int64")
        df.insert(int(df.columns.get_loc("latency_ms")) + 1, "flops", column)
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
    finetune: dict[str, Any] | None = None  # `search finetune`'s figures (study user attr ``finetune``)
    budgets: dict[str, float] = field(default_factory=dict)  # search.constraints that are set
    over_budget: int = 0  # finished trials over a budget (PRUNED before training)
    front: str | None = None  # two objectives: the front's size and extremes (best: its most accurate)

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
        best_value=None if best is None else accuracy(best),
        best_params={} if best is None else dict(best.params),
        epochs_per_trial=epochs,
        compute_seconds=float(df["duration_s"].fillna(0).sum()),
        compute_seconds_by_device={str(k): float(v) for k, v in by_device.items()},
        full_run_seconds=float((per_epoch * epochs).sum()),
        saved_by_pruning_s=float(saved[finished["state"] == "PRUNED"].sum()),
        saved_by_early_stopping_s=float(saved[finished["state"] == "COMPLETE"].sum()),
        confirm=_confirm_attr(study),
        finetune=_finetune_attr(study),
        budgets=budgets_of(study),
        over_budget=int((df["state"].isin(["COMPLETE", "PRUNED"]) & ~df["feasible"].fillna(True)).sum()),
        front=None if (f := front_summary(study)) is None else f.lines()[0],
    )


def _confirm_attr(study: optuna.Study) -> dict[str, Any] | None:
    raw = study.user_attrs.get(CONFIRM_ATTR)  # written by `search confirm`
    return dict(raw) if isinstance(raw, dict) and isinstance(raw.get("verdict"), str) else None


# what the report shows of the fine-tune stage (the study user attr holds more)
FINETUNE_FIELDS = (
    "trial",
    "started_from",
    "trial_value",
    "start_val_acc",
    "final_val_acc",
    "best_epoch",
    "epochs_run",
    "test_accuracy",
    "test_macro_f1",
    "n_test",
    "finished_at",
    "out",
)


def _finetune_attr(study: optuna.Study) -> dict[str, Any] | None:
    raw = study.user_attrs.get(FINETUNE_ATTR)  # written by `search finetune`
    if not isinstance(raw, Mapping) or not isinstance(raw.get("test_accuracy"), int | float):
        return None
    return {k: raw.get(k) for k in FINETUNE_FIELDS}


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
    if s.front is not None:
        lines.append(f"{s.front} (pareto.csv; best: the front's most accurate)")
    if s.confirm is not None:
        lines.append(f"confirm: {s.confirm['verdict']}")
    if s.finetune is not None:
        f = s.finetune
        lines.append(
            f"finetune: trial {f['trial']}, val {f['start_val_acc']:.4f} -> {f['final_val_acc']:.4f}, "
            f"test accuracy {f['test_accuracy']:.4f} on {f['n_test']} images (model in {f['out']})"
        )
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
    if summary.front is not None:  # two objectives: the front, exactly study.best_trials
        write_pareto_csv(study, folder)
    tables = [folder / f"report.{ext}" for ext in ("csv", "parquet", "md", "html")]
    df.to_csv(tables[0], index=False)
    df.to_parquet(tables[1], index=False)
    tables[2].write_text(_markdown_page(df, summary, plots), encoding="utf-8")
    tables[3].write_text(_html_page(df, summary, plots), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    log.info("report for %s: %d trials, %d plots in %s", study_name, len(df), len(plots), folder)
    return ReportFiles(folder, tables, plots, summary)
