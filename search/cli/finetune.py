"""``search finetune STUDY``: continue the best trial's weights, then evaluate once on the test set."""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.common import (
    add_device_arg,
    add_study_arg,
    add_threads_arg,
    device,
    results_study,
    use_threads,
)
from search.config import check_study_name
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("finetune", help="fine-tune the best trial from its weights, then test once")
    add_study_arg(p)
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the study config's finetune.epochs)")
    p.add_argument("--lr-scale", type=float, help="lr = best trial's lr x this (default finetune.lr_scale)")
    p.add_argument("--patience", type=int, help="early stopping patience (default finetune.patience)")
    p.add_argument(
        "--trial", type=int, help="start from this trial (default: the confirmed winner, else the best trial)"
    )
    add_device_arg(p)
    p.add_argument("--out", help="output folder (default storage/finetune/STUDY)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="TensorBoard log of the run under storage/tensorboard/STUDY/finetune/",
    )
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_study_name(args.study_name, "STUDY")
    from search.results.confirm import finetune_start
    from search.results.finetune import finetune, settings
    from search.study.stored import study_config

    on = device(args.device)
    study = results_study(args)
    cfg = study_config(study)
    ft = settings(cfg, args.epochs, args.lr_scale, args.patience)
    use_threads(args, cfg)
    start = finetune_start(study, args.trial)
    print(f"finetune {args.study_name}: starting from {start.reason}", flush=True)
    res = finetune(
        study,
        cfg,
        on,
        ft,
        args.out,
        trial_number=start.trial,
        started_from=start.reason,
        tensorboard=args.tensorboard,
    )
    print(
        f"finetune {args.study_name}: trial {res.trial} val {res.start_val_acc:.4f} -> "
        f"{res.final_val_acc:.4f} (best epoch {res.best_epoch} of {res.epochs_run}); "
        f"test accuracy {res.test.accuracy:.4f} on {res.test.n} images; files in {res.out}"
    )
    return EXIT_OK
