"""``search export STUDY``: a trial's weights, config.json and model card as one folder (or, with
``--finetuned``, a copy of the fine-tuned model's folder)."""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.common import add_study_arg, results_study
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="a trial's weights, config.json and model card as one folder")
    add_study_arg(p)
    p.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    p.add_argument("--out", help="output folder (default storage/exports/STUDY/trial-N)")
    p.add_argument(
        "--finetuned",
        action="store_true",
        help="the model of `search finetune` instead (default out storage/exports/STUDY/finetuned)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also model.onnx (pixels / 255 in, logits out, batch size dynamic), checked against torch "
        "on the validation images; needs the [onnx] extra",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.engine.onnx_model import require_onnx
    from search.results.export import export_finetuned, export_trial
    from search.study.stored import study_config

    if args.onnx:
        require_onnx("search export --onnx")  # before the study is opened: the extra first
    study = results_study(args)
    if args.finetuned:
        done = export_finetuned(study, args.out, trial=args.trial, onnx=args.onnx)
    else:
        done = export_trial(study, study_config(study), args.trial, args.out, onnx=args.onnx)
    print(done.line())
    return EXIT_OK
