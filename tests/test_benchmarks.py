"""Benchmarks keep working: each one's ``--quick`` mode runs as a subprocess and prints its format.

No timing assertions: the figures themselves live in docs/BENCHMARKS.md. Also the fast-path
contract of ``search.engine.train.fit`` that the throughput benchmark relies on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.config import ModelConfig, TrainConfig
from search.engine.augment import BatchTransform
from search.engine.data import ImageSet
from search.engine.inference import eval_batch_size
from search.engine.model import ConvNet
from search.engine.train import fit
from tests.conftest import REPO, cli_env, png_size

BENCH = REPO / "benchmarks"


def run_bench(name: str, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        check=False,
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return [line for line in proc.stdout.splitlines() if line.strip()]


def table_rows(out: list[str]) -> list[list[str]]:
    """Cells of the Markdown table rows (header and separator excluded)."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out if line.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= {"-"}]


def test_throughput_quick(tmp_path: Path) -> None:
    out = lines(run_bench("throughput.py", "--quick", "--breakdown", cwd=tmp_path))
    assert re.fullmatch(r"speedup: \d+\.\d\dx", out[-1])
    assert out[0].startswith("machine: ")
    assert "batch 8" in out[1] and "augmentation: seed" in out[1]
    names = [row[0] for row in table_rows(out)]
    assert any(n.startswith("seed-style: PIL transforms in a DataLoader") for n in names)
    assert any(n.startswith("ours: uint8 on device, BatchTransform, channels_last") for n in names)
    assert "ours: BatchTransform only" in names and "seed-style: train step only (fp32, NCHW)" in names
    seed, ours = (float(r[1]) for r in table_rows(out)[1:3])
    assert seed > 0 and ours > 0
    assert out[-1] == f"speedup: {ours / seed:.2f}x" or abs(float(out[-1][9:-1]) - ours / seed) < 0.02
    # the default path (train.precision auto, named with what it resolved to) and fp32, in one run
    default, fp32 = table_rows(out)[2][0], table_rows(out)[3]
    assert re.search(r", (fp32|bf16) \(the default: train\.precision auto\)$", default), default
    assert fp32[0].endswith(", fp32 (train.precision fp32)") and float(fp32[1]) > 0
    assert re.fullmatch(r"speedup fp32: \d+\.\d\dx", out[-2])
    assert abs(float(out[-2][14:-1]) - float(fp32[1]) / seed) < 0.02


def test_throughput_quick_names_the_cpu_limit(tmp_path: Path) -> None:
    out = lines(run_bench("throughput.py", "--quick", cwd=tmp_path))
    limit = next(line for line in out if line.startswith("limit: "))
    m = re.fullmatch(
        r"limit: sgemm (\d+\.\d) GFLOPS \(torch.mm 256x256 fp32, \d+ thread\(s\)\); "
        r"net 0\.366 GFLOP per training image \(3 x 0\.122 forward\) -> (\d+\.\d) img/s; "
        r"ours (\d+\.\d) img/s = (\d+) % of it; load average \d+\.\d",
        limit,
    )
    assert m is not None, limit
    gflops, limit_rate, ours, share = (float(g) for g in m.groups())
    assert gflops > 0 and abs(limit_rate - gflops / 0.366) < 0.01 * limit_rate + 0.2
    assert abs(share - 100 * ours / limit_rate) <= 1


def test_quickstart_quick(tmp_path: Path) -> None:
    """One layout under load (2 workers beside the busy process it starts) and the start-up table."""
    args = ("--quick", "--layouts", "2x1", "--conditions", "loaded")
    out = lines(run_bench("quickstart.py", *args, cwd=tmp_path))
    rows = table_rows(out)
    runs = [r for r in rows if r[0] in ("1x2", "2x1")]
    assert [r[:2] for r in runs] == [["2x1", "loaded"]]
    assert float(runs[0][2]) > 0 and 0 <= float(runs[0][3]) <= 1, runs  # it finished, with a best value
    starts = {r[0]: r for r in rows if r[0].startswith(("search ", "hand-written"))}
    assert len(starts) == 4 and all(float(r[1]) > 0 for r in starts.values())
    for name in ("search run, 1 trial (data cached)", "hand-written loop, 1 trial (data cached)"):
        assert 0 < float(starts[name][3]) < float(starts[name][1])  # wall less the trial's own seconds
    assert out[-1] == "faster: neither clearly (one layout measured)"
    assert not list(Path(tmp_path).iterdir())  # every run in its own temporary folder


def test_throughput_without_cuda_is_bad_input(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run_bench("throughput.py", "--device", "cuda", "--quick", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --device:") and "CUDA" in proc.stderr


def test_precision_quick(tmp_path: Path) -> None:
    out = lines(run_bench("precision.py", "--quick", cwd=tmp_path))
    rows = table_rows(out)
    assert rows[0][:5] == ["dataset", "trial", "fp32 img/s", "bf16 img/s", "bf16/fp32"]
    assert [r[:2] for r in rows[1:]] == [["digits", "small-b64"]]
    row = rows[1]
    assert float(row[2]) > 0 and float(row[3]) > 0 and re.fullmatch(r"\d+\.\d\dx", row[4])
    assert 0 < float(row[5]) <= 100 and 0 < float(row[6]) <= 100 and row[9] in ("yes", "no")
    assert any(line.startswith("machine: ") and "bf16 units: " in line for line in out)
    assert re.fullmatch(r"train\.precision auto on this CPU: (fp32|bf16)", out[-1])
    assert not list(tmp_path.iterdir())  # the data cache went to a temporary directory


def test_overhead_quick(tmp_path: Path) -> None:
    out = lines(run_bench("overhead.py", "--quick", cwd=tmp_path))
    assert re.fullmatch(r"per-trial ratio: \d+\.\d\dx \(ours / hand-written\)", out[-1])
    assert re.fullmatch(r"per-epoch ratio: \d+\.\d\dx \(ours / hand-written\)", out[-2])
    assert any(re.fullmatch(r"overhead: \d+\.\d ms/trial at 6 finished trials \(sqlite\)", x) for x in out)
    rows = table_rows(out)
    assert rows[0][:3] == ["storage", "finished trials", "timed"]
    levels = [r for r in rows if r[0] == "sqlite"]
    assert [(r[0], r[1], r[2]) for r in levels] == [("sqlite", "3", "2"), ("sqlite", "6", "2")]
    assert all(float(r[10]) > 0 and float(r[11]) > 0 for r in levels)  # SQL statements, commits a trial
    parts = {r[0]: r for r in rows if len(r) == 3 and r[0] != "part"}
    assert float(parts["report"][1]) > 0 and float(parts["user attrs"][2]) > 0
    loops = {r[0]: r for r in rows if r[0] in ("ours", "hand-written")}
    # the same two enqueued param sets, 2 epochs each (no pruning before 5 COMPLETE trials)
    assert loops["ours"][2:4] == loops["hand-written"][2:4] == ["2", "4"]
    assert not list(tmp_path.iterdir())  # everything went to a temporary directory


def test_workers_quick(tmp_path: Path) -> None:
    """Trivial trials through `search worker`'s loop (run_study joining a study) in a worker
    process, then a SIGKILLed worker's trial retried by another."""
    out = lines(run_bench("workers.py", "--quick", cwd=tmp_path))
    assert out[0].startswith("trivial trials, 10 per run")
    rows = [line.split() for line in out if line.startswith("SQLite")]
    assert rows[0][:2] == ["SQLite", "1"] and float(rows[0][2]) > 0 and rows[0][3] == "10", rows
    assert out[-2] == "SIGKILL to retry (heartbeat 1s, grace period 3s)"
    assert rows[1][0] == "SQLite" and float(rows[1][1]) > 0 and rows[1][2] == "s", rows
    assert not list(tmp_path.iterdir())  # everything went to a temporary directory


def test_pruning_quick(tmp_path: Path) -> None:
    out = lines(run_bench("pruning.py", "--quick", cwd=tmp_path))
    assert re.fullmatch(
        r"fewer epochs than none: median -?\d+\.\d %, successive_halving -?\d+\.\d %", out[-1]
    )
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert list(rows) == ["none", "median", "successive_halving"]
    # without a pruner every trial runs its 2 epochs (patience 3 cannot stop it earlier)
    assert rows["none"][1:4] == ["4", "0", "8"]
    for pruner in ("median", "successive_halving"):
        trials, pruned, epochs = (int(v) for v in rows[pruner][1:4])
        assert trials == 4 and 0 <= pruned <= 3 and 4 <= epochs <= 8


def test_pareto_quick(tmp_path: Path) -> None:
    out = lines(run_bench("pareto.py", "--quick", "--plot", "fronts.png", cwd=tmp_path))
    assert out[-1] == "plot: fronts.png" and png_size(tmp_path / "fronts.png")[0] > 100
    assert re.fullmatch(r"goal \(>= 30 % fewer epochs, hypervolume within 2 %\): (met|missed)", out[-2])
    assert "reference point: accuracy 0, cost 1.1 x the dearest trial" in out[1]
    rows = {r[2]: r for r in table_rows(out)[1:]}
    assert list(rows) == ["none", "pruned", "pruned vs none"]
    assert rows["none"][3:5] == ["0", "8"]  # 4 trials of 2 epochs, none pruned
    epochs, pruned = int(rows["pruned"][4]), int(rows["pruned"][3])
    assert 4 <= epochs <= 8 and 8 - epochs <= pruned <= 3  # trial 0 has no cheaper peer: never pruned
    for study in ("none", "pruned"):
        assert 0 < float(rows[study][6]) < 1  # hypervolume: a fraction of the reference box


def test_seed_grid_quick(tmp_path: Path) -> None:
    out = lines(run_bench("seed_grid.py", "--quick", "--device", "cpu", cwd=tmp_path))
    assert re.fullmatch(r"grid: \d+\.\d s, \d+\.\dx the seed's time", out[-1])
    assert re.search(r"synthetic data, \d+ training / \d+ validation images", out[1]) and "QUICK" in out[1]
    rows = table_rows(out)
    grid = next(r for r in rows if r[0] == "cifar10_grid")
    assert grid[1] == "2"  # two grid points, both completed
    assert [r[0] for r in rows if r[0].isdigit()] == ["8", "16", "32"]


# ------------------------------------------------------------------------------ fit's fast path


def _tiny(n: int) -> tuple[ConvNet, ImageSet, ImageSet, BatchTransform]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 3
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(padding=1), (2, 4, 8), (1, 8, 8), 3)
    return model, ImageSet(images, labels), ImageSet(images[:8], labels[:8]), BatchTransform([0.5], [0.25])


def _host_syncs(monkeypatch: pytest.MonkeyPatch, n: int) -> int:
    """How many times our code (``search/``) reads a tensor value back to the host in one epoch
    over ``n`` images. (On the CPU, torch's own Adam reads its step counters; on CUDA fit uses the
    fused Adam, which does not.)"""
    calls = 0
    ours = str(REPO / "search")

    def count() -> None:
        nonlocal calls
        if sys._getframe(2).f_code.co_filename.startswith(ours):
            calls += 1

    item, to_float = torch.Tensor.item, torch.Tensor.__float__

    def counting_item(self: torch.Tensor) -> object:
        count()
        return item(self)

    def counting_float(self: torch.Tensor) -> float:
        count()
        return to_float(self)

    model, train, val, transform = _tiny(n)
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", counting_item)
        m.setattr(torch.Tensor, "__float__", counting_float)
        fit(model, train, val, lr=1e-3, batch_size=4, cfg=TrainConfig(epochs=1), transform=transform)
    return calls


def test_fit_reads_back_once_per_epoch_not_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    few, many = _host_syncs(monkeypatch, 16), _host_syncs(monkeypatch, 64)  # 4 vs 16 steps
    assert few == many and 1 <= few <= 6


def test_evaluation_batches_are_larger_than_training_batches() -> None:
    assert eval_batch_size(1024, 512) == 1024
    assert eval_batch_size(1024, 1024) == 2048
    model, train, val, transform = _tiny(40)
    val = ImageSet(train.images, train.labels)  # 40 validation images
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append((mod.training, inp[0].shape[0])))
    cfg = TrainConfig(epochs=1, eval_batch_size=4)  # configured smaller than the training batch
    fit(model, train, val, lr=1e-3, batch_size=8, cfg=cfg, transform=transform)
    train_batches = [b for training, b in seen if training]
    eval_batches = [b for training, b in seen if not training]
    assert train_batches == [8] * 5
    assert eval_batches == [16, 16, 8]  # twice the training batch


def test_gpu_check_dry_run_writes_its_table(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --dry-run: the whole GPU check on the CPU, tiny, into $OUT."""
    out = tmp_path / "out"
    env = {**cli_env(), "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    table = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in table and "every step passed" in table
    rows = {r[0]: r for r in table_rows(table.splitlines())}
    assert rows["packages"][1] == "ok"
    assert rows["CUDA tests: pytest -m cuda tests/engine/test_cuda.py"][1].startswith("ok")
    assert re.search(r"\d+ (skipped|passed)", rows["CUDA tests: pytest -m cuda tests/engine/test_cuda.py"][2])
    throughput = rows["throughput.py --device cpu --batch-size 8"]
    assert throughput[1] == "ok" and re.search(r"speedup \d+\.\d\dx", throughput[2])
    grid = rows["seed_grid.py --device cpu --quick --batch-sizes 8"]
    assert grid[1] == "ok" and re.search(r"grid: \d+\.\d s, .* 8: \d", grid[2])
    assert "== seed grid: exit 0" in (out / "gpu_check.log").read_text()
    assert table in proc.stdout


def test_search_efficiency_quick(tmp_path: Path) -> None:
    plot = tmp_path / "out" / "eff.png"
    out = lines(run_bench("search_efficiency.py", "--quick", "--plot", str(plot), cwd=tmp_path))
    assert out[0].startswith("machine: ")
    assert "1 seed(s) 0, 1 epochs a trial, patience 2, budget 2x the grid's epochs" in out[1]
    rows = table_rows(out)
    assert rows[0][:3] == ["dataset", "variant", "epochs to grid best (reached)"]
    assert [r[:2] for r in rows[1:]] == [
        ["digits", "grid (8 points)"],
        ["digits", "defaults"],
        ["digits", "no-midpoint"],
    ]
    grid_epochs = float(rows[1][2])
    assert 1 <= grid_epochs <= 2  # 2 grid points (--quick), 1 epoch each
    for row in rows[2:]:
        assert re.fullmatch(r"(\d+\.\d|-) \([01]/1\)", row[2])
        assert float(row[6]) >= 0 and float(row[8]) > 0
    assert png_size(plot)[1] > 0 and out[-2] == f"plot: {plot}"
    assert re.fullmatch(r"goals, defaults, digits: grid best within 0\.5x .*: (yes|no) \(.*\)", out[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the studies went to a temporary folder


def test_families_quick(tmp_path: Path) -> None:
    out = lines(run_bench("families.py", "--quick", cwd=tmp_path))
    assert out[0].startswith("machine: ") and out[1].startswith("before: load average")
    assert out[-1].startswith("after: load average")
    rows = table_rows(out)
    assert [r[0] for r in rows[1:]] == [
        "convnet/plain",
        "convnet/residual",
        "convnet/depthwise",
        "convnet/inception",
        "resnet18, small-input stem",
    ]
    params = {r[0]: int(r[2].replace(",", "")) for r in rows[1:]}
    assert params["convnet/depthwise"] < params["convnet/plain"] < params["resnet18, small-input stem"]
    assert all(r[1] == "16" and float(r[3]) > 0 and float(r[4]) > 0 for r in rows[1:])


def test_ingest_quick(tmp_path: Path) -> None:
    """Our ingestion and the hand-written loop, each in its own subprocess, at two folder sizes."""
    out = lines(run_bench("ingest.py", "--quick", "--workers", "2", cwd=tmp_path))
    assert out[0].endswith("2 worker(s)") and "load" in out[0]
    rows = [r for r in table_rows(out) if r[0] != "method"]  # the second table's header too
    timed = [r for r in rows if r[1] in ("12", "36")]
    assert sorted((r[0], r[1]) for r in timed) == sorted(
        (m, n) for m in ("loop", "process", "thread") for n in ("12", "36")
    )
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in timed)  # seconds and peak RSS measured
    extra = {r[0]: r for r in rows if r not in timed}
    assert set(extra) == {"loop", "process", "thread"} and extra["loop"][2] == "1.00"
    assert "24 more photos (36 vs 12):" in out
    assert not list(tmp_path.iterdir())  # the photos and caches went to a temporary directory
