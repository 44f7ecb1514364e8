"""convnet-search: hyperparameter search for image-classification ConvNets.

The public API (everything else may move)::

    from search import RunOptions, load_config, run_study

    result = run_study(load_config("study_configs/digits.yaml"), RunOptions(device="auto"))
    print(result.outcome, result.best.value if result.best else None)

Names are imported on first use (PEP 562), so ``import search.config`` or ``search --help`` loads
neither torch nor optuna. The layers live in subpackages: see README.md and docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.config import StudyConfig, load_config
    from search.errors import SearchError
    from search.study.run import Outcome, RunOptions, RunResult, run_study

__version__ = "0.1.0"

__all__ = [
    "Outcome",
    "RunOptions",
    "RunResult",
    "SearchError",
    "StudyConfig",
    "__version__",
    "load_config",
    "run_study",
]

_HOMES = {
    "load_config": "search.config",
    "StudyConfig": "search.config",
    "SearchError": "search.errors",
    "run_study": "search.study.run",
    "RunOptions": "search.study.run",
    "RunResult": "search.study.run",
    "Outcome": "search.study.run",
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
