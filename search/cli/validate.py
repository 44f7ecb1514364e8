"""``search validate CONFIG``: check a config (and the inputs it names) without running it."""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.common import add_config_args, config_from_args
from search.config import check_inputs
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a config without running it")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_inputs(cfg)  # what can be checked without reading data (the same check `run` makes)
    if cfg.model.init_from is not None:  # readable, plain tensors (run also checks they fit the net)
        from search.engine.weights import read_init_state

        read_init_state(cfg.model.init_from)
    from search.store.urls import check_storage

    check_storage(cfg.storage, "storage", create=True)  # the check `run` makes before it opens it
    from search.study.preflight import check_run_folders, preflight
    from search.study.space import grid_size

    data = preflight(cfg)  # counts (nothing decoded); DataError for what `run` would refuse
    check_run_folders(cfg)  # the folders `run` writes, checked as `run` checks them (nothing created)
    cost = cfg.search.cost
    pareto = "" if cost is None else f", objectives val_accuracy (max) and {cost} (min)"
    size = f", grid of {grid_size(cfg.search.space)}" if cfg.search.sampler.name == "grid" else ""
    print(
        f"ok: study {cfg.name!r} on {cfg.data.dataset}, {cfg.search.n_trials} trials, "
        f"sampler {cfg.search.sampler.name}{size}, pruner {cfg.search.pruner.name}{pareto}"
    )
    print("\n".join(data.listing()), flush=True)
    data.log_warnings()
    return EXIT_OK
