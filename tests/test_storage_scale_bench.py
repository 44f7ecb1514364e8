"""``benchmarks/storage_scale.py --quick`` runs and prints its table (figures: docs/BENCHMARKS.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.bouncer import pgbouncer_bin
from tests.pg import pg_bin
from tests.test_benchmarks import lines, run_bench, table_rows


def test_storage_scale_quick(tmp_path: Path) -> None:
    if (pg_bin() is None or pgbouncer_bin() is None) and not os.environ.get("CI"):
        pytest.skip("PostgreSQL or PgBouncer not installed (CI installs them)")
    backends = ["sqlite", "pgbouncer", "journal"]
    out = lines(run_bench("storage_scale.py", "--quick", "--backends", *backends, cwd=tmp_path))
    assert out[0].startswith("machine: ") and "load average" in out[0]
    rows = table_rows(out)
    assert rows[0][:4] == ["backend", "pattern", "workers", "trials/s"]
    cells = {(r[0], r[1]): r for r in rows[1:]}
    assert set(cells) == {
        ("sqlite", "new"),
        ("sqlite", "today"),
        ("pgbouncer", "new"),
        ("pgbouncer", "today"),
        ("journal", "optuna"),
    }
    for row in cells.values():
        assert row[2] == "2" and float(row[3]) > 0, row  # trials were finished in the window
        assert float(row[4]) > 0 and float(row[5]) >= float(row[4]) and row[6] == "0", row
        assert float(row[7]) > 0, row  # the workers' own CPU per trial
    assert cells[("sqlite", "new")][8] == "-" and float(cells[("pgbouncer", "new")][8]) > 0
    ask = next(line for line in out if line.startswith("TPE ask()"))
    assert re.fullmatch(
        r"TPE ask\(\) \+ 5 suggestions at 20 finished trials: \d+ ms; "
        r"a new worker's first read \(\d+ trials\): \d+ ms \(Optuna's own storage: \d+ ms\)",
        ask,
    )
