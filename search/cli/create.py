"""``search create CONFIG``: check the config and its data and create the study; no trial runs.

What a cluster's study-creator step runs before its ``search worker`` jobs: the same checks and
the same study as ``search run`` (an existing study must match the config, exit 2 naming what
differs), then one line saying what was made and how workers join.
"""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.run import add_study_config_args, checked_config
from search.config import mask_url
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("create", help="check the config and data, create the study; no trial runs")
    add_study_config_args(p)
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start the study over: an existing study of this name is kept as NAME-old-TIMESTAMP",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Create study ``cfg.name`` (or confirm the existing one matches) and print one line."""
    cfg = checked_config(args)
    from search.study.create import create_study

    created = create_study(cfg, fresh=args.fresh)
    where = mask_url(cfg.storage)
    if created.existed:
        print(
            f"study {created.name}: exists in {where} with this experiment "
            f"({created.finished}/{created.n_trials} trials finished); nothing changed"
        )
    else:
        print(f"study {created.name}: created in {where} ({created.n_trials} trials to run); no trial run")
    join = f"search worker --study-name {created.name}"
    print(f"next: {join}   (on each machine, with --storage URL or SEARCH_STORAGE set)")
    return EXIT_OK
