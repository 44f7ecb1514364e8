"""Why a trial slows down several-fold beside one busy process: torch threads vs free cores.

Times a tiny digits fit (the quickstart's net: c1=16, c2=32, l1=64, batch 64, 8x8 inputs,
``--epochs`` epochs) in a fresh process per variant, with one competing CPU-bound process
(``python3 -c "while True: pass"``) started and stopped by this script, then again without it.
Variants differ only in their environment: torch's default threads (all cores), 1 thread, and
the default with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers instead of spinning).
Rounds are interleaved so that other load on the machine hits every variant alike; compare the
ratios within one run. Each line shows wall time and CPU time (user + system of the child): CPU
time well above wall time x threads in use means threads spun waiting for each other.

    python benchmarks/threads_probe.py                 # 3 rounds, 3 epochs
    python benchmarks/threads_probe.py --rounds 1 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median, table

VARIANTS: dict[str, dict[str, str]] = {
    "default threads": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "default + OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}

FIT = r"""
import json, sys, time, torch
from torch import nn
from sklearn.datasets import load_digits
epochs = int(sys.argv[1])
torch.manual_seed(0)
d = load_digits()
x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.as_tensor(d.target)
net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    nn.Dropout(0.1), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
    nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
    nn.BatchNorm1d(32 * 16), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
start = time.perf_counter()
for _ in range(epochs):
    for i in range(0, len(x) - 63, 64):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
print(json.dumps({"fit_s": time.perf_counter() - start, "threads": torch.get_num_threads()}))
"""


@contextmanager
def busy_process(on: bool) -> Iterator[None]:
    """One CPU-bound competitor for the block's duration (none when ``on`` is false)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def timed_fit(extra_env: dict[str, str], epochs: int) -> tuple[float, float, int]:
    """(fit wall seconds, child CPU seconds, torch threads) of one fit in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(extra_env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-c", FIT, str(epochs)], env=env, capture_output=True, text=True, check=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["fit_s"]), cpu, int(result["threads"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for busy in (True, False):
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
        threads: dict[str, int] = {}
        with busy_process(busy):
            for _ in range(args.rounds):
                for name, extra in VARIANTS.items():
                    wall, cpu, n = timed_fit(extra, args.epochs)
                    times[name].append(wall)
                    cpus[name].append(cpu)
                    threads[name] = n
        base = median(times["1 thread"])
        for name in VARIANTS:
            rows.append(
                [
                    "1 busy process" if busy else "no extra load",
                    name,
                    threads[name],
                    f"{median(times[name]):.2f}",
                    f"{median(cpus[name]):.2f}",
                    f"{median(times[name]) / base:.2f}x",
                ]
            )
    print(
        f"cores usable: {len(os.sched_getaffinity(0))}, load average at start {load_before:.2f}, "
        f"at end {os.getloadavg()[0]:.2f}; {args.rounds} round(s) of {args.epochs} epoch(s)"
    )
    headers = ["competing load", "variant", "threads", "fit s (median)", "process CPU s", "vs 1 thread"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
