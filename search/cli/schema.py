"""``search schema``: print the config's JSON Schema (what study_configs/schema.json holds), or with
``--markdown`` the config reference (docs/config.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the config's JSON Schema (study_configs/schema.json)")
    p.add_argument(
        "--markdown", action="store_true", help="print the config reference instead (docs/config.md)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.config import config_markdown, json_schema

    if args.markdown:
        print(config_markdown(), end="")  # docs/config.md, byte for byte
        return EXIT_OK
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
