"""Finished trials read with plain SQL (search/store/trial_rows.py) equal Optuna's own reads of
them, on SQLite and PostgreSQL: values by objective (infinities too), NaN and infinite
intermediate values, params of every distribution, attrs as JSON, both datetimes."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.store import trial_rows
from search.store.storage import make_storage
from search.store.trial_rows import read_finished, read_trials
from tests.pg import postgres_server, storage_url  # noqa: F401  (fixtures)

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "drop": FloatDistribution(0.0, 0.5, step=0.1),
    "c1": IntDistribution(4, 64, step=4),
    "l1": IntDistribution(16, 512, log=True),
    "act": CategoricalDistribution(["relu", "gelu", None, 3]),
}


@pytest.fixture
def away_from_utc() -> Iterator[None]:
    """Local time 5:30 ahead of UTC (a POSIX zone: no tz database needed). Optuna stores UTC and
    hands back local time; on a machine in UTC, as CI's, a mix-up of the two cannot show."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-5:30"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def _trials() -> list[FrozenTrial]:
    """Finished trials of two objectives in every shape a finished trial takes."""
    params = {"lr": 0.003, "drop": 0.2, "c1": 12, "l1": 100, "act": None}
    steps = {0: 0.5, 1: float("nan"), 2: float("inf"), 3: float("-inf"), 4: -1.25}
    attrs = {"accuracy": 0.93, "history": [1, 2.5, None], "nested": {"a": {"b": "c"}}, "name": "x"}

    def trial(state: TrialState, values: list[float] | None, **kw: Any) -> FrozenTrial:
        return optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=DISTRIBUTIONS, **kw
        )

    return [
        trial(TrialState.COMPLETE, [0.9, 1234.0], user_attrs=attrs, system_attrs={"retry": 2}),
        trial(TrialState.COMPLETE, [float("inf"), float("-inf")], intermediate_values=steps),
        trial(TrialState.PRUNED, None, intermediate_values={0: 0.1}, user_attrs={"pid": 7}),
        trial(TrialState.FAIL, None, user_attrs={"error": "CUDA out of memory"}),
        optuna.trial.create_trial(state=TrialState.COMPLETE, values=[1.0, 2.0]),  # no params at all
    ]


def _same(ours: FrozenTrial, optunas: FrozenTrial) -> None:
    """Equal, NaN equal to NaN (FrozenTrial's own == says NaN != NaN)."""
    nan = [s for s, v in optunas.intermediate_values.items() if math.isnan(v)]
    assert [s for s, v in ours.intermediate_values.items() if math.isnan(v)] == nan
    for trial in (ours, optunas):
        trial.intermediate_values = {s: v for s, v in trial.intermediate_values.items() if s not in nan}
    assert ours.__dict__ == optunas.__dict__
    assert list(ours.params) == list(optunas.params)  # and in the order they were suggested


@pytest.mark.usefixtures("away_from_utc")
def test_plain_sql_reads_equal_optunas(storage_url: str) -> None:  # noqa: F811
    storage = make_storage(storage_url, heartbeat=False)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.add_trials(_trials())
    running = study.ask()  # RUNNING: not one of the study's finished trials
    sid = study._study_id
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    finished = [storage.get_trial(tid) for tid in ids if tid != running._trial_id]
    ids.remove(running._trial_id)
    engine = storage.engine
    reads = [read_trials(engine, ids), read_trials(engine, ids[:2]), read_finished(engine, sid)]
    for read in reads:  # in one read, one by one, the study's
        assert [t._trial_id for t in read] == [t._trial_id for t in finished][: len(read)]
        for ours, optunas in zip(read, finished[: len(read)], strict=True):
            _same(ours, storage.get_trial(optunas._trial_id))
    assert len(read_finished(engine, sid)) == 5
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    running.set_user_attr("pid", 7)
    storage.set_trial_intermediate_value(running._trial_id, 0, 0.5)  # (report() is single-objective)
    [read] = read_trials(engine, [running._trial_id, 10_000])  # RUNNING, and an unknown id
    _same(read, storage.get_trial(running._trial_id))
    assert (
        read.state == TrialState.RUNNING
        and set(read.params) == {"lr"}
        and read.intermediate_values == {0: 0.5}
    )


def test_many_trials_are_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=False)
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trials([optuna.trial.create_trial(value=float(v)) for v in range(25)])
    monkeypatch.setattr(trial_rows, "CHUNK", 10)
    ids = [t._trial_id for t in study.get_trials()]
    assert [t.value for t in read_trials(storage.engine, ids)] == [float(v) for v in range(25)]


def test_only_the_studys_trials_are_read(storage_url: str) -> None:  # noqa: F811
    storage = make_storage(storage_url, heartbeat=False)
    for name in ("a", "b"):
        study = optuna.create_study(study_name=name, storage=storage)
        study.add_trials([optuna.trial.create_trial(value=float(v)) for v in range(3)])
    b = optuna.load_study(study_name="b", storage=storage)
    assert [t.value for t in read_finished(storage.engine, b._study_id)] == [0.0, 1.0, 2.0]
    assert {t._trial_id for t in read_finished(storage.engine, b._study_id)} == {
        t._trial_id for t in b.get_trials()
    }
