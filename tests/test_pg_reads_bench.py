"""``benchmarks/pg_reads.py --quick`` runs and prints its table (figures: docs/scale-out.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pg import pg_bin
from tests.test_benchmarks import lines, run_bench, table_rows


def _count(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


def test_pg_reads_quick(tmp_path: Path) -> None:
    if pg_bin() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL not installed (CI installs it)")
    out = lines(run_bench("pg_reads.py", "--quick", cwd=tmp_path))
    assert out[0].startswith("machine: ") and "load average" in out[0]
    rows = table_rows(out)
    assert rows[0][:3] == ["workers", "trials", "finished"] and "ratio vs N=1" in rows[0]
    body = {row[0]: row for row in rows[1:]}
    assert sorted(body) == ["1", "2"]
    for n, row in body.items():
        assert row[1] == "4" and row[2] == "4", row  # the exact total: 4 finished trials
        rows_read, commits, connections, per_trial = (_count(c) for c in row[3:7])
        assert rows_read > 0 and commits > 0 and per_trial == pytest.approx(rows_read / 4, abs=1), row
        assert connections >= (1 if n == "1" else 3), row  # the run process and each worker connect
        startup, rest = _count(row[8]), _count(row[9])
        assert 0 < startup < rows_read and rest == pytest.approx((rows_read - startup) / 4, abs=1), row
        assert 0 < _count(row[11]) < per_trial, row  # the study's own tables: part of all rows read
        assert all(_count(row[i]) > 0 for i in (7, 10, 12)), row
    assert [body["1"][i] for i in (7, 10, 12)] == ["1.00x"] * 3
