"""The one base of every error the tool raises on purpose, with the exit code the CLI returns.

``search`` maps an exception to its exit status by :attr:`SearchError.exit_code` alone: 2 for bad
input (a config, a flag, a file: nothing was written), 1 for a run that started and failed. Imports
nothing of the package, so every layer may raise these.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SearchError(Exception):
    """Base of the tool's own errors. ``str(exc)`` is the one-line message the CLI prints after
    ``error: `` (naming the field or file and the fix)."""

    exit_code: int = EXIT_BAD_INPUT


class InputError(SearchError, ValueError):
    """Bad input: a config value, a flag, a path or a file the run cannot use (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RunFailure(SearchError):
    """A run that started and could not go on: a full disk, a broken device (exit 1)."""

    exit_code = EXIT_FAILED
