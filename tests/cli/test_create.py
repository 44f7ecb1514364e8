"""``search create`` and ``SEARCH_STORAGE``, through the CLI as a cluster's study-creator step runs them."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from search.cli import main
from tests.conftest import run_cli, tiny_config, write_config
from tests.pg import PostgresServer, postgres_server  # noqa: F401  (fixture)


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _search(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``search ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_create_makes_the_study_a_run_would_and_trains_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config()))
    url = f"sqlite:///{workdir}/studies.db"
    code, out, _ = _search(capsys, "create", cfg, "--storage", url)
    assert code == 0
    assert out.splitlines()[0] == f"study tiny: created in {url} (3 trials to run); no trial run"
    assert "next: search worker --study-name tiny" in out
    assert [t.state.name for t in _trials(url)] == ["WAITING"]  # trial 0, the space's midpoint; none trained
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["config"]["search"]["n_trials"] == 3
    assert study.user_attrs["data"]["classes"] == [str(i) for i in range(10)]  # the data was loaded
    assert not (workdir / "storage" / "artifacts").exists()

    code, out, err = _search(capsys, "create", cfg, "--storage", url, "--n-trials", "4")
    assert code == 0
    assert out.splitlines()[0] == (
        f"study tiny: exists in {url} with this experiment (0/3 trials finished); nothing changed"
    )
    assert "keeps its stored total of 3 trials" in err and "pass --n-trials 4 to `search worker`" in err
    assert len(_trials(url)) == 1

    # a worker joins it with the storage from the environment only, and finishes the total
    monkeypatch.setenv("SEARCH_STORAGE", url)
    joined = run_cli("worker", "--study-name", "tiny", cwd=workdir, check=0)
    assert "study tiny: 3/3 finished" in joined.stdout
    assert sum(t.state.is_finished() for t in _trials(url)) == 3


def test_create_refuses_a_different_experiment_and_a_bad_url(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config()))
    url = f"sqlite:///{workdir}/studies.db"
    assert _search(capsys, "create", cfg, "--storage", url)[0] == 0
    code, _, err = _search(capsys, "create", cfg, "--storage", url, "--set", "train.epochs=3")
    assert code == 2
    assert "error: study 'tiny' in" in err and "train.epochs: stored 2, now 3" in err
    assert len(_trials(url)) == 1  # nothing changed

    code, _, err = _search(capsys, "create", cfg, "--storage", "studies2.db")
    assert code == 2 and "error: --storage: not a database URL but a plain file path" in err
    assert not (workdir / "studies2.db").exists()
    secret = "postgresql+psycopg://bob:hunter2secret@127.0.0.1:1/studies"  # nothing listens on port 1
    code, out, err = _search(capsys, "create", cfg, "--storage", secret)
    assert code == 2 and "cannot open storage postgresql+psycopg://bob:***@127.0.0.1:1/studies" in err
    assert "hunter2secret" not in err + out


def test_search_storage_comes_after_the_flag_and_before_the_config(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_config = f"sqlite:///{workdir}/config.db"
    from_env = f"sqlite:///{workdir}/env.db"
    from_flag = f"sqlite:///{workdir}/flag.db"
    cfg = str(write_config(workdir / "tiny.yaml", tiny_config(storage=in_config)))
    assert _search(capsys, "status")[0] == 2  # nothing yet: the default storage/studies.db is missing

    monkeypatch.setenv("SEARCH_STORAGE", from_env)
    code, out, _ = _search(capsys, "create", cfg)
    assert code == 0 and f"created in {from_env}" in out
    assert not (workdir / "config.db").exists()
    code, out, _ = _search(capsys, "create", cfg, "--storage", from_flag)
    assert code == 0 and f"created in {from_flag}" in out
    code, out, _ = _search(capsys, "status")  # the read-only commands: SEARCH_STORAGE, not the default
    assert code == 0 and out.splitlines()[1].split()[:6] == ["tiny", "0", "0", "0", "0", "1"]

    monkeypatch.setenv("SEARCH_STORAGE", f"sqlite:///{workdir}/none.db")
    code, _, err = _search(capsys, "status")
    assert code == 2 and err.startswith("error: SEARCH_STORAGE: no study storage at")
    monkeypatch.setenv("SEARCH_STORAGE", "")  # empty: as if unset
    code, out, _ = _search(capsys, "create", cfg)
    assert code == 0 and f"created in {in_config}" in out


def test_run_workers_hand_their_storage_past_an_inherited_search_storage(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``search run --workers 2 --storage X`` under SEARCH_STORAGE=Y: the workers use X, the parent's."""
    cfg = write_config(workdir / "tiny.yaml", tiny_config(train={"epochs": 1, "patience": 1}))
    url = f"sqlite:///{workdir}/flag.db"
    monkeypatch.setenv("SEARCH_STORAGE", f"sqlite:///{workdir}/elsewhere.db")
    run_cli("run", str(cfg), "--workers", "2", "--storage", url, "--n-trials", "2", cwd=workdir, check=0)
    assert sum(t.state.is_finished() for t in _trials(url)) == 2
    assert not (workdir / "elsewhere.db").exists()


def test_a_worker_on_a_server_database_without_study_tables_says_so_and_creates_nothing(
    workdir: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    url = postgres_server.new_database()  # empty: no `search create` ran on it
    proc = run_cli("worker", "--study-name", "tiny", "--storage", url, cwd=workdir, check=2)
    assert "cannot read study tables at postgresql+psycopg://" in proc.stderr
    assert "create the study first with `search create CONFIG --storage URL`" in proc.stderr
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []  # a reader made no tables
    finally:
        engine.dispose()


def test_a_process_holds_one_server_connection_with_its_heartbeats(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    from search.store.storage import make_storage

    url = postgres_server.new_database()
    writer = make_storage(url, heartbeat=False)
    optuna.create_study(study_name="s", storage=writer)
    # as a worker: read the config, then run with heartbeats (a thread writing every second)
    reader = make_storage(url, create=False, heartbeat_interval_s=1, grace_period_s=5)
    study = optuna.load_study(study_name="s", storage=reader)
    assert reader.engine.pool is writer.engine.pool

    def busy(trial: optuna.Trial) -> float:  # the main thread writes while the heartbeat does
        for i in range(60):
            trial.set_user_attr(f"a{i}", i)
            time.sleep(0.03)
        return 1.0

    study.optimize(busy, n_trials=2)
    assert len(reader.get_trial(study.trials[-1]._trial_id).user_attrs) == 60
    assert _connections(postgres_server, url) == 1  # table creation's two are closed
    assert writer.engine.pool.checkedin() == 1


def test_a_table_schema_of_another_optuna_is_refused_with_the_fix(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    import sqlalchemy

    from search.store import storage
    from search.store.storage import StorageError, make_storage

    url = postgres_server.new_database()
    optuna.create_study(study_name="s", storage=make_storage(url, heartbeat=False))
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v3.0.0.a'"))
    engine.dispose()
    storage._READY.discard(url)  # as another process would
    storage._POOLS.pop(url).dispose()
    with pytest.raises(StorageError, match="optuna storage upgrade --storage"):
        make_storage(url, create=False)


def _connections(server: PostgresServer, url: str) -> int:
    """Server connections open on ``url``'s database (PostgreSQL's own view)."""
    import psycopg

    dsn = f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (url.rsplit("/", 1)[1],)
        ).fetchone()
    return int(row[0]) if row else 0
