"""``search schema``: print the config's JSON Schema (what study_configs/schema.json holds)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the config's JSON Schema (study_configs/schema.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
