"""The command line: ``search COMMAND``, one module per command; the dispatcher and the exit codes."""

from search.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
