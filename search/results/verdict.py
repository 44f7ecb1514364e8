"""What ``search confirm`` concludes: one row per confirmed trial, the seed noise, the verdict, confirm.csv.

:func:`verdict` says whether the confirmed winner's lead over the runner-up exceeds the noise
between runs of one trial; :func:`summary_attr` is the study user attr ``confirm`` (compact: the
dashboard cuts attributes at 1024 characters); :func:`write_csv` writes ``confirm.csv``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.config import PARAM_NAMES
from search.study.space import ParamValue

if TYPE_CHECKING:
    from search.results.confirm import ConfirmSettings

CSV_COLUMNS = ["trial", "study_rank", *PARAM_NAMES, "study_value", "mean", "std", "n", "failed"]
CSV_COLUMNS += ["mode", "values", "winner"]
NOISE_SE = 2.0  # the winner's lead counts as real when it exceeds this many standard errors


@dataclass(frozen=True)
class ConfirmRow:
    trial: int
    rank: int  # 1 = the study's best
    params: dict[str, ParamValue]
    study_value: float
    values: list[float]
    failed: int

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) >= 2 else math.nan


@dataclass
class ConfirmResult:
    study: str
    settings: ConfirmSettings
    rows: list[ConfirmRow]
    runs_done: int
    runs_total: int
    runs_this_call: int
    interrupted: bool = False
    csv_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def winner(self) -> ConfirmRow | None:
        """The confirmed winner: the highest mean (ties: the study's better-ranked trial)."""
        rows = [r for r in self.rows if r.n]
        return max(rows, key=lambda r: (r.mean, -r.rank)) if rows else None


def pooled_std(rows: list[ConfirmRow]) -> float:
    """The seed noise of one run: the pooled standard deviation within trials (NaN if unmeasured)."""
    dof = sum(r.n - 1 for r in rows if r.n >= 2)
    if dof == 0:
        return math.nan
    ss = sum((r.n - 1) * r.std**2 for r in rows if r.n >= 2)
    return math.sqrt(ss / dof)


def verdict(rows: list[ConfirmRow], winner: ConfirmRow | None, s: ConfirmSettings) -> dict[str, Any]:
    """Whether the confirmed winner's lead over the runner-up exceeds the measured seed noise.

    The lead counts as real when it exceeds ``NOISE_SE`` standard errors of a difference of two
    means: ``NOISE_SE * noise * sqrt(1/n_winner + 1/n_runner_up)``.
    """
    noise = pooled_std(rows)
    study_best = min(rows, key=lambda r: r.rank).trial if rows else None
    out: dict[str, Any] = {
        "noise_std": None if math.isnan(noise) else round(noise, 6),
        "lead": None,
        "threshold": None,
        "beyond_noise": None,
        "study_best": study_best,
    }
    if winner is None:
        out["verdict"] = "no re-training run finished"
        return out
    what = "folds" if s.folds else "seeds"
    head = (
        f"trial {winner.trial} is the confirmed winner ({winner.mean:.4f} ± "
        f"{_fmt_std(winner.std)} over {winner.n} {what}"
        + ("" if winner.trial == study_best else f"; the study's best was trial {study_best}")
        + ")"
    )
    others = [r for r in rows if r.n and r.trial != winner.trial]
    if not others:
        out["verdict"] = head + "; no other trial to compare it with"
        return out
    runner = max(others, key=lambda r: (r.mean, -r.rank))
    lead = winner.mean - runner.mean
    out["lead"] = round(lead, 6)
    if math.isnan(noise):
        out["verdict"] = (
            head + f"; its lead over trial {runner.trial} is {lead:.4f}, but the seed noise is not "
            "measured with one run per trial (use --seeds 2 or more)"
        )
        return out
    threshold = NOISE_SE * noise * math.sqrt(1 / winner.n + 1 / runner.n)
    beyond = lead > threshold
    out.update(threshold=round(threshold, 6), beyond_noise=beyond)
    noise_name = "the noise between folds" if s.folds else "the seed noise"
    out["verdict"] = (
        f"{head}; the top trials {'differ' if beyond else 'do not differ'} by more than {noise_name}: "
        f"the lead over trial {runner.trial} is {lead:.4f}, {NOISE_SE:g} standard errors are "
        f"{threshold:.4f} (one run's std {noise:.4f})"
    )
    return out


def _fmt_std(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def summary_attr(result: ConfirmResult) -> dict[str, Any]:
    """The study user attr ``confirm``: compact (the dashboard cuts attributes at 1024 characters)."""
    s, winner = result.settings, result.winner
    return {
        "mode": s.mode,
        "top": s.top,
        "seeds": s.seeds,
        "folds": s.folds,
        "winner": None if winner is None else winner.trial,
        "winner_mean": None if winner is None else round(winner.mean, 6),
        **verdict(result.rows, winner, s),
        "rows": [
            {
                "trial": r.trial,
                "study_value": round(r.study_value, 6),
                "mean": None if not r.n else round(r.mean, 6),
                "std": None if math.isnan(r.std) else round(r.std, 6),
                "n": r.n,
            }
            for r in result.rows
        ],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_csv(result: ConfirmResult, path: Path) -> Path:
    """``confirm.csv``: one row per confirmed trial (study rank order), its params (the five, then
    the searched config fields) and every run's value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    winner = result.winner
    # the searched config fields (train.optimizer, ...) right after the five names
    dotted = list(dict.fromkeys(k for r in result.rows for k in r.params if k not in PARAM_NAMES))
    at = CSV_COLUMNS.index(PARAM_NAMES[-1]) + 1
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*CSV_COLUMNS[:at], *dotted, *CSV_COLUMNS[at:]])
        for r in result.rows:
            w.writerow(
                [
                    r.trial,
                    r.rank,
                    *(r.params[p] for p in PARAM_NAMES),
                    *(r.params.get(p, "") for p in dotted),
                    r.study_value,
                    "" if not r.n else f"{r.mean:.6f}",
                    "" if math.isnan(r.std) else f"{r.std:.6f}",
                    r.n,
                    r.failed,
                    result.settings.mode,
                    ";".join(f"{v:.6f}" for v in r.values),
                    winner is not None and r.trial == winner.trial,
                ]
            )
    return path
