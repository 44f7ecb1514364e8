"""``search predict EXPORT_DIR IMAGE...``: the top-3 classes of each image with an exported model."""

from __future__ import annotations

import argparse
from typing import Any

from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-3 classes per image with an exported model")
    p.add_argument("export_dir", metavar="EXPORT_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="run the folder's model.onnx with ONNX Runtime instead of torch (needs the [onnx] extra)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.results.export import predict_files

    results = predict_files(args.export_dir, args.images, k=3, onnx=args.onnx)
    for path, top in zip(args.images, results, strict=True):
        print(f"{path}: " + "  ".join(f"{name} {p:.3f}" for name, p in top))
    return EXIT_OK
