"""The quickstart as a newcomer runs it: wall time of ``search run study_configs/digits.yaml``.

Each run is a fresh ``python -m search run`` in a fresh temporary folder (new SQLite storage, data
cache, weights and checkpoints: the data are decoded once, as on a first run), timed from the
process start to its exit, for three layouts:

- ``default``: one process, torch threads as the policy decides (``search run``: free cores, so
  one thread beside a busy process on 2 cores);
- ``1x2``: one process with ``--threads 2`` (the policy before it counted busy cores);
- ``2x1``: ``--workers 2``, one thread each (usable cores // 2);

each quiet (whatever else the machine runs) and loaded: beside one competing CPU-bound process
(``python3 -c "while True: pass"``) that this script starts before the run and stops after it.
The environment's ``OMP_NUM_THREADS`` is removed, so the thread policy decides.

Then the start-up costs: ``search validate``, ``search status``, and a one-trial ``search run``
against the hand-written loop's one trial (``benchmarks/handwritten.py``), each a fresh process.

    python benchmarks/quickstart.py                 # 6 quickstart runs (~3 min quiet) + start-up
    python benchmarks/quickstart.py --repeats 2
    python benchmarks/quickstart.py --quick         # 1 trial, 1 epoch: seconds, checks that it runs

Every run is bounded by ``--timeout`` seconds (default 600). The last line names the faster layout
(``faster: 2x1``, ...) when it beats every other in both conditions by more than 10 %, else
``faster: neither clearly``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "study_configs" / "digits.yaml"
LAYOUTS = {"default": [], "1x2": ["--threads", "2"], "2x1": ["--workers", "2"]}
CONDITIONS = ("quiet", "loaded")
CLEAR_MARGIN = 0.10  # a layout counts as faster when it wins by more than this in both conditions
BEST = re.compile(r"trials finished in .*; best trial \d+ value=(\d\.\d+)")


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("OMP_NUM_THREADS", None)
    out.pop("MKL_NUM_THREADS", None)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    return out


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


@contextlib.contextmanager
def competing_load(on: bool) -> Iterator[None]:
    """One busy-looping process for the block (none when not ``on``); always stopped after."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # running before the measured process starts
        yield
    finally:
        proc.kill()
        proc.wait()


def timed(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, str, int]:
    """(wall seconds, stdout, exit code) of one fresh process; exit code -1 when it timed out."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, "", -1
    return time.perf_counter() - t0, proc.stdout, proc.returncode


def run_args(folder: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "search",
        "-q",
        "run",
        str(CONFIG),
        "--storage",
        f"sqlite:///{folder / 'studies.db'}",
        "--set",
        f"artifacts_dir={folder / 'artifacts'}",
        "--set",
        f"checkpoints_dir={folder / 'checkpoints'}",
        "--set",
        f"data.cache_dir={folder / 'cache'}",
        *extra,
    ]


def quickstart(layout: str, loaded: bool, args: argparse.Namespace) -> tuple[float, str]:
    """One fresh quickstart run: (seconds, best validation accuracy or what went wrong)."""
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp, competing_load(loaded):
        seconds, out, code = timed(run_args(Path(tmp), LAYOUTS[layout] + args.sets), Path(tmp), args.timeout)
    if code == -1:
        return seconds, f"timed out after {args.timeout:.0f} s"
    match = BEST.search(out)
    if code != 0 or match is None:
        return seconds, f"exit {code}"
    return seconds, match.group(1)


TRIAL_SECONDS = re.compile(r"^trial +0 .* (\d+\.\d+)s$", re.MULTILINE)


def startup(args: argparse.Namespace) -> list[list[object]]:
    """Wall seconds of validate, status, a one-trial run and the hand-written loop's one trial
    (each a fresh process; for the two runs also the wall time less the trial's own duration)."""
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        one = [*args.sets, "--n-trials", "1"]
        timed(run_args(folder / "warm", one), folder, args.timeout)  # the data cache, and a study
        cache = ["--set", f"data.cache_dir={folder / 'warm' / 'cache'}"]
        hand = [sys.executable, str(REPO / "benchmarks" / "handwritten.py"), str(CONFIG)]
        hand += ["--storage", f"sqlite:///{folder / 'hand.db'}", "--trials", "1", *args.sets, *cache]
        status = ["--storage", f"sqlite:///{folder / 'warm' / 'studies.db'}"]
        commands = [
            (
                "search validate study_configs/digits.yaml",
                [sys.executable, "-m", "search", "validate", str(CONFIG)],
            ),
            ("search status (one study)", [sys.executable, "-m", "search", "status", *status]),
            ("search run, 1 trial (data cached)", run_args(folder / "ours", one + cache)),
            ("hand-written loop, 1 trial (data cached)", hand),
        ]
        for name, cmd in commands:
            walls, starts = [], []
            for _ in range(args.repeats):
                for stale in (folder / "ours" / "studies.db", folder / "hand.db"):
                    stale.unlink(missing_ok=True)
                seconds, out, code = timed(cmd, folder, args.timeout)
                walls.append(seconds if code == 0 else float("nan"))
                trial = TRIAL_SECONDS.search(out)
                if trial is not None:
                    starts.append(seconds - float(trial.group(1)))
            rows.append(
                [
                    name,
                    f"{min(walls):.2f}",
                    f"{max(walls):.2f}",
                    f"{min(starts):.2f}" if starts else "",
                ]
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 trial of 1 epoch a run (checks that it runs)")
    p.add_argument("--repeats", type=int, default=1, help="runs per layout and condition (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take (default 600)")
    p.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.sets = ["--set", "search.n_trials=1", "--set", "train.epochs=1"] if args.quick else []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_load = load_average()
    results: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for r in range(args.repeats):
        for condition in args.conditions:
            layouts = args.layouts if r % 2 == 0 else list(reversed(args.layouts))
            for layout in layouts:
                results.setdefault((layout, condition), []).append(
                    quickstart(layout, condition == "loaded", args)
                )
    rows: list[list[object]] = []
    best_time: dict[tuple[str, str], float] = {}
    for (layout, condition), done in sorted(results.items()):
        secs = sorted(s for s, _ in done)
        best_time[(layout, condition)] = secs[len(secs) // 2]
        quiet = results.get((layout, "quiet"))
        ratio = ""
        if condition == "loaded" and quiet:
            ratio = f"{best_time[(layout, condition)] / sorted(s for s, _ in quiet)[len(quiet) // 2]:.2f}x"
        rows.append(
            [layout, condition, f"{best_time[(layout, condition)]:.1f}", ", ".join(v for _, v in done), ratio]
        )
    usable = len(os.sched_getaffinity(0))
    print(
        f"machine: {os.cpu_count()} CPU(s), {usable} usable; "
        f"load average at the start {start_load}, at the end {load_average()}"
    )
    trials = "1 trial of 1 epoch (--quick)" if args.quick else "20 trials, 10 epochs"
    print(
        f"quickstart: search run {CONFIG.relative_to(REPO)} ({trials}), fresh storage and data cache "
        f"each run, {args.repeats} run(s) each, median; loaded = one extra busy process"
    )
    print()
    print(table(["layout", "condition", "wall s", "best val", "loaded / quiet"], rows))
    print()
    print(
        table(
            ["start-up (fresh process each)", "wall s (min)", "wall s (max)", "wall less the trial, s (min)"],
            startup(args),
        )
    )
    print()
    print(f"faster: {faster(best_time, args)}")
    return 0


def faster(best_time: dict[tuple[str, str], float], args: argparse.Namespace) -> str:
    if set(args.layouts) != set(LAYOUTS):
        return "neither clearly (one layout measured)"
    for a in LAYOUTS:
        others = [b for b in LAYOUTS if b != a]
        if all(
            best_time[(a, c)] * (1 + CLEAR_MARGIN) < best_time[(b, c)]
            for b in others
            for c in args.conditions
        ):
            return a
    return "neither clearly"


def table(headers: list[str], rows: list[list[object]]) -> str:
    from benchmarks._common import table as markdown

    return markdown(headers, rows)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
