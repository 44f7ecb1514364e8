"""What a worker counts of its study (search/study/tally.py): the counts by state and the RUNNING
trials with their heartbeats, from one query, equal to what Optuna's own storage says, on SQLite
and PostgreSQL."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from search.store.storage import make_storage
from search.study.tally import StudyReader
from tests.pg import postgres_server, storage_url  # noqa: F401  (fixtures)


def _study_in_every_state(url: str, name: str) -> optuna.Study:
    """A study with trials in each state (3 COMPLETE, 2 PRUNED, 1 FAIL, 2 WAITING, 2 RUNNING, one
    of which has beaten its heartbeat), and another study beside it that must not be counted."""
    storage = make_storage(url, heartbeat_interval_s=60, grace_period_s=120)
    other = optuna.create_study(study_name="other", storage=storage)
    other.tell(other.ask(), 1.0)
    study = optuna.create_study(study_name=name, storage=storage)
    for value in (0.1, 0.2, 0.3):
        study.tell(study.ask(), value)
    for _ in range(2):
        study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    beating, silent = study.ask(), study.ask()
    storage.record_heartbeat(beating._trial_id)
    del silent
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    return study


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_counts_and_running_trials_equal_optunas(storage_url: str) -> None:  # noqa: F811
    study = _study_in_every_state(storage_url, "s")
    truth = Counter(t.state for t in study.get_trials(deepcopy=False))
    assert truth == {
        TrialState.COMPLETE: 3,
        TrialState.PRUNED: 2,
        TrialState.FAIL: 1,
        TrialState.RUNNING: 2,
        TrialState.WAITING: 2,
    }
    reader = StudyReader(make_storage(storage_url, create=False, heartbeat=False))
    assert reader.counts("s") == truth
    counts, running = reader.running("s", grace_period_s=120)
    assert counts == truth
    assert sorted(rt.number for rt in running) == [6, 7]
    beat = {rt.number: rt.heartbeat_age_s for rt in running}
    assert beat[7] is None  # never beat
    assert beat[6] is not None and 0.0 <= beat[6] < 60.0
    assert not any(rt.stale for rt in running)  # both started (or beat) within the grace period
    assert StudyReader(make_storage(storage_url, create=False, heartbeat=False)).counts("other") == {
        TrialState.COMPLETE: 1
    }


def test_a_study_without_trials_counts_nothing(storage_url: str) -> None:  # noqa: F811
    storage = make_storage(storage_url, heartbeat=False)
    optuna.create_study(study_name="empty", storage=storage)
    counts, running = StudyReader(storage).running("empty", grace_period_s=60)
    assert counts == Counter() and sum(counts.values()) == 0 and running == []
