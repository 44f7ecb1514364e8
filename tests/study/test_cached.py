"""The storage a running study reads through (search/study/cached.py): finished trials read once
per process, no other worker's RUNNING trial read for the sampler, and the same samples as
Optuna's own storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.config import config_from_dict
from search.store import trial_rows
from search.store.storage import make_storage
from search.study import cached
from search.study.cached import FinishedView, StudyStorage
from search.study.sampling import make_sampler

Reads = tuple[list[int], list[str]]


def _counting(storage: StudyStorage, monkeypatch: pytest.MonkeyPatch) -> Reads:
    """From now on: (the ids of the trials ``storage`` reads from its database, by Optuna's ORM or
    with plain SQL; the trials each plain SQL read asked for: by id, a list, or the study's)."""
    ids: list[int] = []
    reads: list[str] = []
    original: Callable[[int], FrozenTrial] = storage.rdb.get_trial
    frozen, fetch = trial_rows._frozen, trial_rows._fetch

    def counted(trial_id: int) -> FrozenTrial:
        ids.append(trial_id)
        return original(trial_id)

    def counted_frozen(row: Any, rows: trial_rows.Rows) -> FrozenTrial:
        trial = frozen(row, rows)
        ids.append(trial._trial_id)
        return trial

    def counted_fetch(
        conn: Any, where: str, params: dict[str, Any], rows: trial_rows.Rows, *tables: Any
    ) -> None:
        reads.append(where)
        fetch(conn, where, params, rows, *tables)

    monkeypatch.setattr(storage.rdb, "get_trial", counted)
    monkeypatch.setattr(trial_rows, "_frozen", counted_frozen)
    monkeypatch.setattr(trial_rows, "_fetch", counted_fetch)
    return ids, reads


def _two_views(tmp_path: Path) -> tuple[optuna.Study, optuna.Study, StudyStorage]:
    """One study seen by another worker (Optuna's storage) and by this one (StudyStorage)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    other = optuna.create_study(study_name="s", storage=make_storage(url, heartbeat=False))
    mine = StudyStorage(make_storage(url, heartbeat=False))
    return other, optuna.load_study(study_name="s", storage=mine), mine


def _finish(other: optuna.Study, values: list[float | None]) -> list[int]:
    """One trial per value run by another worker: told that value (None: PRUNED); their ids."""
    ids = []
    for value in values:
        trial = other.ask()
        if value is None:
            other.tell(trial, state=TrialState.PRUNED)
        else:
            other.tell(trial, value)
        ids.append(trial._trial_id)
    return ids


def test_finished_trials_are_read_once_and_running_ones_only_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other, study, storage = _two_views(tmp_path)
    _finish(other, [1.0, 2.0])
    running = other.ask()  # another worker's trial, still running
    reads, queries = _counting(storage, monkeypatch)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.value for t in complete] == [1.0, 2.0]
    assert len(reads) == 2  # each finished trial read once
    assert queries == ["trial_id = :tid"] * 2  # a few: each by its id
    assert running._trial_id not in reads
    study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(reads) == 2  # and never again
    other.tell(running, 3.0)
    assert [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))] == [1.0, 2.0, 3.0]
    assert reads[2:] == [running._trial_id]  # the newly finished trial only
    everything = study.get_trials(deepcopy=False)  # every state: Optuna's own read
    assert [t.state for t in everything] == [TrialState.COMPLETE] * 3


def test_the_waiting_queue_is_read_as_it_is_now(tmp_path: Path) -> None:
    other, study, _ = _two_views(tmp_path)
    other.enqueue_trial({"x": 1.0})
    other.enqueue_trial({"x": 2.0})
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.number for t in waiting] == [0, 1]
    taken = other.ask()  # another worker takes trial 0
    assert taken.number == 0
    assert [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))] == [1]
    assert study.ask().number == 1


def _sampled(study: optuna.Study, n: int) -> list[dict[str, Any]]:
    """Run ``n`` trials of a deterministic objective; their params."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        c1 = trial.suggest_int("c1", 4, 32)
        act = trial.suggest_categorical("act", ["relu", "gelu"])
        return -abs(lr - 0.01) * 10 + c1 / 100 + (0.05 if act == "gelu" else 0.0)

    study.optimize(objective, n_trials=n)
    return [t.params for t in study.get_trials(states=(TrialState.COMPLETE,))]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_samples_are_the_same_as_through_optunas_own_storage(tmp_path: Path, sampler: str) -> None:
    """The sampler sees through StudyStorage what it sees through Optuna's storage: with another
    worker's trial RUNNING throughout (TPE's constant liar lies about it), the same seed gives the
    same params."""
    sampling = {"name": sampler, "n_startup_trials": 3}
    cfg = config_from_dict({"name": "s", "seed": 7, "search": {"sampler": sampling}})
    params = []
    for storage_kind in ("optuna", "ours"):
        url = f"sqlite:///{tmp_path / storage_kind}.db"
        rdb = make_storage(url, heartbeat=False)
        storage: optuna.storages.BaseStorage = rdb if storage_kind == "optuna" else StudyStorage(rdb)
        study = optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(cfg))
        stuck = optuna.load_study(study_name="s", storage=url, sampler=optuna.samplers.RandomSampler(0))
        stuck.ask(  # every param: TPE's constant liar ignores a running trial that lacks one
            {
                "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                "c1": optuna.distributions.IntDistribution(4, 32),
                "act": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
            }
        )
        params.append(_sampled(study, 10))
    assert params[0] == params[1]
    assert len({p["c1"] for p in params[0]}) > 3  # sampled, not one point over and over


def test_trials_many_workers_finished_since_are_read_in_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other, study, storage = _two_views(tmp_path)
    _finish(other, [float(x) for x in range(20)])
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 20  # seen
    _finish(other, [100.0 + x for x in range(6)])  # six since: more than a few, not most of the study
    ids, reads = _counting(storage, monkeypatch)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.value for t in complete][-6:] == [100.0 + x for x in range(6)]
    assert len(complete) == 26
    assert sorted(ids) == sorted(t._trial_id for t in complete[-6:])  # the six only, once each
    assert reads == ["trial_id IN :ids"]  # in one read, not one each


def test_a_worker_joining_a_large_study_reads_its_finished_trials_in_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other, study, storage = _two_views(tmp_path)
    _finish(other, [float(x) if x % 3 else None for x in range(30)])
    other.ask()  # running elsewhere: not read
    ids, reads = _counting(storage, monkeypatch)
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    assert [t.number for t in pruned] == list(range(0, 30, 3))
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 20
    assert sorted(ids) == sorted(t._trial_id for t in other.get_trials() if t.state.is_finished())
    assert reads == [trial_rows.STUDY_FINISHED]  # one read of the study's finished trials


def test_running_trials_are_read_afresh_each_time_and_finished_ones_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TPE's constant liar (on by default in Optuna 5) asks for RUNNING trials too: each call reads
    them again (their params change), with plain SQL, not through Optuna's cache."""
    other, study, storage = _two_views(tmp_path)
    done = _finish(other, [1.0, 2.0])
    running = other.ask()
    ids, _ = _counting(storage, monkeypatch)
    monkeypatch.setattr(storage.rdb, "_get_trials", lambda *a, **k: pytest.fail("read by Optuna's cache"))
    only_running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t._trial_id for t in only_running] == ids == [running._trial_id]  # no finished one read
    ids.clear()
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    first = study.get_trials(deepcopy=False, states=states)
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    assert first[2].params == {}
    running.suggest_float("x", 0.0, 1.0)
    again = study.get_trials(deepcopy=False, states=states)
    assert list(again[2].params) == ["x"]  # as it is now
    assert sorted(ids) == sorted([*done, running._trial_id, running._trial_id])  # finished: once
    other.tell(running, 3.0)
    assert [t.value for t in study.get_trials(deepcopy=False, states=states)] == [1.0, 2.0, 3.0]
    assert len(ids) == 5  # the trial that ended, read once more


def _statements(storage: StudyStorage) -> list[str]:
    """From now on: the SQL ``storage`` sends to its database."""
    sql: list[str] = []
    sqlalchemy.event.listen(
        storage.rdb.engine, "before_cursor_execute", lambda _c, _cur, statement, *_: sql.append(statement)
    )
    return sql


LIAR = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # what TPE's constant liar asks


def test_a_sampler_reads_running_trials_params_not_their_attrs_or_steps(tmp_path: Path) -> None:
    other, study, storage = _two_views(tmp_path)
    _finish(other, [1.0])
    study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))  # known: not read again
    running = other.ask()
    x = running.suggest_float("x", 0.0, 1.0)
    running.set_user_attr("host", "node-7")
    other._storage.set_trial_system_attr(running._trial_id, "grid_id", 3)
    running.report(0.5, step=1)
    sql = _statements(storage)
    seen = FinishedView(study, number=2)._get_trials(deepcopy=False, states=LIAR)
    assert [t.state for t in seen] == [TrialState.COMPLETE, TrialState.RUNNING]
    lied = seen[1]
    assert lied.params == {"x": x} and list(lied.distributions) == ["x"]
    assert lied.system_attrs == {"grid_id": 3}
    assert lied.user_attrs == {} and lied.intermediate_values == {}
    assert sql and not [q for q in sql if "trial_user_attributes" in q or "trial_intermediate_values" in q]
    # everyone else (search status, the run loop) still reads a running trial whole
    whole = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert whole[0].user_attrs == {"host": "node-7"} and whole[0].intermediate_values == {1: 0.5}


def test_a_running_trial_that_ends_before_the_sampler_reads_it_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other, study, storage = _two_views(tmp_path)
    running = other.ask()
    running.set_user_attr("host", "node-7")
    real = cached.read_trials

    def ending_first(engine: Any, ids: Any, sampled: Any = ()) -> list[FrozenTrial]:
        if sampled and other.get_trials()[0].state == TrialState.RUNNING:
            other.tell(running, 2.0)  # listed RUNNING, COMPLETE by the time it is read
        return real(engine, ids, sampled)

    monkeypatch.setattr(cached, "read_trials", ending_first)
    seen = storage.sampled_trials(study._study_id, frozenset(LIAR))
    assert [(t.state, t.value, t.user_attrs) for t in seen] == [
        (TrialState.COMPLETE, 2.0, {"host": "node-7"})
    ]
    monkeypatch.setattr(cached, "read_trials", lambda *a, **k: pytest.fail("read again"))
    assert study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[0].user_attrs == {"host": "node-7"}


def test_a_listing_reads_from_the_first_trial_not_known_finished(tmp_path: Path) -> None:
    """Once a worker knows a study's first trials finished, its listings start after them: their
    rows are not read again however large the study grows (and a trial that finishes late, below
    newer ones, is still found)."""
    other, study, storage = _two_views(tmp_path)
    _finish(other, [float(x) for x in range(20)])
    late = other.ask()  # running elsewhere, below the next ones
    after = _finish(other, [50.0, 51.0])
    lows: list[int] = []

    def listed(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.startswith("SELECT trial_id, state FROM trials WHERE study_id"):  # (sid[, low])
            lows.append(int(params[1]) if len(params) > 1 else 0)

    sqlalchemy.event.listen(storage.rdb.engine, "after_cursor_execute", listed)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 22
    other.tell(late, 7.0)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.value for t in complete][20:] == [7.0, 50.0, 51.0]
    assert study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == []
    assert lows == [0, late._trial_id, max(after) + 1]  # the whole study once, then the rest


def test_workers_of_one_machine_read_each_finished_trial_from_the_database_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers of one machine on one study: the trials one ran and the ones it read from the
    database are left in the machine's shared folder, where the other finds them."""
    monkeypatch.setenv("SEARCH_TRIAL_CACHE", str(tmp_path / "shared"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    elsewhere = optuna.create_study(study_name="s", storage=make_storage(url, heartbeat=False))
    first = optuna.load_study(study_name="s", storage=StudyStorage(make_storage(url, heartbeat=False)))
    second_storage = StudyStorage(make_storage(url, heartbeat=False))
    second = optuna.load_study(study_name="s", storage=second_storage)
    _finish(elsewhere, [1.0, 2.0])  # another machine's: the first worker reads them
    assert len(first.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 2
    _finish(first, [3.0, None])  # its own
    assert len(first.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 3
    ids, reads = _counting(second_storage, monkeypatch)
    seen = second.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert (ids, reads) == ([], [])  # none from the database
    assert seen == [t for t in elsewhere.get_trials() if t.state.is_finished()]
    assert [t.value for t in seen] == [1.0, 2.0, 3.0, None]
    recreated = _recreate(url, "s")  # the same name (and ids, SQLite): not the old study's trials
    _finish(recreated, [9.0])
    again = StudyStorage(make_storage(url, heartbeat=False))
    assert [t.value for t in again.get_all_trials(recreated._study_id, states=(TrialState.COMPLETE,))] == [
        9.0
    ]


def _recreate(url: str, name: str) -> optuna.Study:
    optuna.delete_study(study_name=name, storage=url)
    return optuna.create_study(study_name=name, storage=make_storage(url, heartbeat=False))


def test_a_trial_another_process_enqueued_after_this_one_opened_the_study_runs_here(
    tmp_path: Path,
) -> None:
    """The WAITING queue: a retry or an enqueued trial written by another worker is taken by this
    one, and its params (fixed or sampled) are written through Optuna's cache."""
    other, study, _ = _two_views(tmp_path)
    _finish(other, [1.0])
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 1
    other.enqueue_trial({"lr": 0.01})
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("c1", 4, 8)
    study.tell(trial, 0.5)
    assert trial.number == 1 and lr == 0.01
    assert other.trials[1].params == {"lr": 0.01, "c1": width} and other.trials[1].value == 0.5
