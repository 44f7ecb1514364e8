"""``search report STUDY``: the trials table (CSV, Parquet, Markdown, HTML), a summary and plots."""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.common import add_study_arg
from search.config import check_study_name
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="trials table (CSV, Parquet, Markdown, HTML), summary, plots")
    add_study_arg(p)
    p.add_argument("--out", help="output folder (default storage/reports/STUDY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.results.report import summary_lines, write_report

    check_study_name(args.study_name, "STUDY")
    files = write_report(args.study_name, args.storage, args.out)
    for line in summary_lines(files.summary):
        print(line)
    print(f"report: {', '.join(str(p) for p in files.tables)} (+ {len(files.plots)} plots as .html/.png)")
    return EXIT_OK
