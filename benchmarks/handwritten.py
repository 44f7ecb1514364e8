"""The baseline: a careful hand-written Optuna + torch loop, what a user would write without us.

Same space, TPE sampler, median pruner (``n_startup_trials`` / ``n_warmup_steps`` from the config),
SQLite in WAL mode with ``synchronous=NORMAL``, the same net (``search.engine.model.build_convnet``) and data
(``search.engine.data.load_splits``, normalised once as float tensors), Adam, cross-entropy, full batches
in a fresh permutation each epoch (the last partial one dropped, as ours), one evaluation of the
whole validation split per epoch, ``trial.report`` + ``trial.should_prune`` each epoch, early
stopping on validation accuracy with the config's patience, the best epoch's value returned.
No heartbeats, checkpoints, weights files or user attrs: everything ours adds is what is measured.

``overhead.py`` imports :func:`run_handwritten`; run alone it times one study from a cold start
(the start-up comparison with ``search run``):

    python benchmarks/handwritten.py study_configs/digits.yaml --storage sqlite:////tmp/h.db --trials 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import sqlalchemy.event
import torch
import torch.nn.functional as F

from search.config import StudyConfig, load_config
from search.engine.data import load_splits
from search.engine.model import build_convnet
from search.study.space import suggest


def sqlite_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on SQLite with WAL and ``synchronous=NORMAL`` on every connection."""
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()
    return storage


def run_handwritten(
    cfg: StudyConfig,
    storage_url: str,
    n_trials: int,
    *,
    enqueue: Sequence[dict[str, Any]] = (),
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.Study:
    """``n_trials`` trials of ``cfg``'s search the hand-written way; ``enqueue``: param sets to try first."""
    splits = load_splits(cfg.data, cfg.seed)
    x_train = splits.train.images.float() / 255.0
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_val = (splits.val.images.float() / 255.0 - mean) / std
    y_train, y_val = splits.train.labels, splits.val.labels
    tc, pc = cfg.train, cfg.search.pruner

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg.search.space)
        torch.manual_seed(cfg.seed + trial.number)
        model = build_convnet(
            cfg.model,
            int(params["c1"]),
            int(params["c2"]),
            int(params["l1"]),
            splits.in_shape,
            splits.n_classes,
        )
        opt = torch.optim.Adam(model.parameters(), lr=float(params["lr"]), weight_decay=tc.weight_decay)
        batch = min(int(params["batch_size"]), len(y_train))
        best, since_best = -1.0, 0
        for epoch in range(1, tc.epochs + 1):
            model.train()
            perm = torch.randperm(len(y_train))
            for start in range(0, len(y_train) - batch + 1, batch):
                idx = perm[start : start + batch]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            model.eval()
            with torch.no_grad():
                acc = float((model(x_val).argmax(1) == y_val).float().mean())
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if acc > best + tc.min_delta:
                best, since_best = acc, 0
            else:
                since_best += 1
                if since_best >= tc.patience:
                    break
        return best

    study = optuna.create_study(
        storage=sqlite_storage(storage_url),
        study_name=cfg.name,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=pc.n_startup_trials, n_warmup_steps=pc.n_warmup_steps
        ),
    )
    for params in enqueue:
        study.enqueue_trial(dict(params))
    study.optimize(objective, n_trials=n_trials, callbacks=[on_trial] if on_trial else None)
    return study


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config")
    p.add_argument("--storage", required=True, help="sqlite:/// URL (a new file)")
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(args.config, args.set)
    study = run_handwritten(cfg, args.storage, args.trials)
    for t in study.trials:  # the line `search run` prints, with the trial's own seconds
        seconds = t.duration.total_seconds() if t.duration is not None else 0.0
        print(f"trial {t.number:>4} {t.state.name} value={t.value} {seconds:.1f}s")
    values = [t.value for t in study.trials if t.value is not None]
    print(f"{len(study.trials)} trial(s), best {max(values, default=float('nan')):.4f}")
    print(f"{time.perf_counter() - t0:.2f} s after imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
