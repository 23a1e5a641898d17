"""The persistence layer: URLs, column types, connections, migrations, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError

from enginehost.core.db import (
    Database,
    DatabaseConfigError,
    DatabaseRole,
    DatabaseUnavailableError,
    SchemaError,
    open_databases,
)
from enginehost.core.db.base import DataModel, MainModel
from enginehost.core.db.migrations import (
    SchemaState,
    downgrade,
    ensure_schema,
    schema_status,
    upgrade,
    version_table,
)
from enginehost.core.db.schema import metadata_for
from enginehost.core.db.types import (
    HELPER_INFO_KEY,
    UTCDateTime,
    data_json_type,
    main_json_type,
)
from enginehost.core.db.urls import resolve_targets
from enginehost.core.settings import load_settings
from tests.conftest import open_database

# ----------------------------------------------------------------------------- URLs


def test_defaults_are_two_sqlite_files_in_the_data_dir(tmp_path: Path) -> None:
    targets = resolve_targets(load_settings(), tmp_path)
    assert targets[DatabaseRole.MAIN].sqlite_path == tmp_path / "main.sqlite"
    assert targets[DatabaseRole.DATA].sqlite_path == tmp_path / "enginehost.sqlite"
    assert targets[DatabaseRole.DATA].setting == "ENGINEHOST_DATABASE_URL"
    assert targets[DatabaseRole.MAIN].setting == "ENGINEHOST_MAIN_DATABASE_URL"


def test_relative_sqlite_paths_live_in_the_data_dir(tmp_path: Path) -> None:
    targets = resolve_targets(load_settings(database_url="sqlite:///state/data.db"), tmp_path)
    assert targets[DatabaseRole.DATA].sqlite_path == tmp_path / "state" / "data.db"


@pytest.mark.parametrize(
    "urls",
    [
        {"database_url": "sqlite:///same.sqlite", "main_database_url": "sqlite:///same.sqlite"},
        {"main_database_url": "sqlite:///enginehost.sqlite"},  # the data default's file
    ],
)
def test_one_sqlite_file_for_both_roles_is_refused(tmp_path: Path, urls: dict[str, str]) -> None:
    with pytest.raises(DatabaseConfigError, match="point at the same SQLite file"):
        resolve_targets(load_settings(**urls), tmp_path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "ENGINEHOST_DATABASE_URL: not a database URL"),
        ("mysql://u:p@h/db", "ENGINEHOST_DATABASE_URL: unsupported database 'mysql'"),
        ("sqlite://", "ENGINEHOST_DATABASE_URL: SQLite needs a file path"),
        ("sqlite:///:memory:", "an in-memory database would lose everything"),
        ("postgresql://u:p@localhost", "ENGINEHOST_DATABASE_URL: the URL names no database"),
    ],
)
def test_malformed_urls_name_the_setting(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(DatabaseConfigError, match=message):
        resolve_targets(load_settings(database_url=url), tmp_path)


def test_malformed_url_message_hides_the_password(tmp_path: Path) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        resolve_targets(load_settings(main_database_url="oracle://u:hunter2@h/db"), tmp_path)
    assert "ENGINEHOST_MAIN_DATABASE_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_postgres_urls_use_psycopg_and_describe_without_password(tmp_path: Path) -> None:
    targets = resolve_targets(
        load_settings(database_url="postgres://app:hunter2@db.internal:5433/enginehost"),
        tmp_path,
    )
    data = targets[DatabaseRole.DATA]
    assert data.url.drivername == "postgresql+psycopg"
    assert data.backend == "postgresql"
    assert data.describe() == "postgresql+psycopg://app:***@db.internal:5433/enginehost"


# ----------------------------------------------------------------------------- types


def _ddl(type_: Any, dialect: sa.engine.Dialect) -> str:
    return str(type_.compile(dialect=dialect))


@pytest.mark.parametrize(
    ("helper", "on_sqlite", "on_postgresql"),
    [
        (data_json_type, "JSON", "JSONB"),
        (main_json_type, "JSON", "JSON"),
        (UTCDateTime, "DATETIME", "TIMESTAMP WITH TIME ZONE"),
    ],
)
def test_column_helpers_per_backend(helper: Any, on_sqlite: str, on_postgresql: str) -> None:
    """Characterization: which helper gives which type on each backend."""
    assert _ddl(helper(), sqlite.dialect()) == on_sqlite
    assert _ddl(helper(), postgresql.dialect()) == on_postgresql


def _helpers_used(metadata: sa.MetaData) -> dict[str, str]:
    return {
        f"{table.name}.{column.name}": column.info[HELPER_INFO_KEY]
        for table in metadata.tables.values()
        for column in table.columns
        if HELPER_INFO_KEY in column.info
    }


def test_main_models_use_no_data_only_helper() -> None:
    used = _helpers_used(MainModel.metadata)
    assert used, "main models should use the main_* helpers for JSON and timestamps"
    offenders = {column: helper for column, helper in used.items() if helper.startswith("data_")}
    assert offenders == {}


def test_data_models_use_data_helpers() -> None:
    used = _helpers_used(DataModel.metadata)
    assert used
    assert all(helper.startswith("data_") for helper in used.values()), used


def test_the_two_metadata_are_separate_and_named_by_convention() -> None:
    main, data = metadata_for(DatabaseRole.MAIN), metadata_for(DatabaseRole.DATA)
    assert set(main.tables) == {"api_keys", "audit_log"}
    assert set(data.tables) == {
        "early_acks",
        "messages",
        "sessions",
        "templates",
        "webhook_dead_letters",
        "webhook_outbox",
        "webhooks",
    }
    assert main.naming_convention["uq"] == "uq_%(table_name)s_%(column_0_N_name)s"
    assert {c.name for c in main.tables["api_keys"].constraints} >= {
        "pk_api_keys",
        "uq_api_keys_key_hash",
    }


# ----------------------------------------------------------------------------- connections

_stamps = sa.Table(
    "stamps",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime()),
)


def test_timestamps_are_stored_in_utc_and_come_back_aware(
    database_url: str, tmp_path: Path
) -> None:
    database = open_database(database_url, "data", tmp_path)
    _stamps.create(database.engine)
    local = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))

    database.run_sync(lambda s: s.execute(sa.insert(_stamps).values(id=1, at=local)))
    [stored] = database.run_sync(lambda s: s.execute(sa.select(_stamps.c.at)).scalars().all())
    assert stored == local
    assert stored.tzinfo == UTC
    assert stored.hour == 4  # 09:30 at +05:30 is 04:00 UTC
    with pytest.raises(StatementError, match="naive datetime"):
        database.run_sync(
            lambda s: s.execute(sa.insert(_stamps).values(id=2, at=datetime(2026, 1, 1)))
        )
    database.dispose()


def test_sqlite_timestamps_are_the_text_sqlalchemy_writes(tmp_path: Path) -> None:
    # Rows written before and after the direct conversion must compare and sort as one.
    database = open_database(f"sqlite:///{tmp_path / 's.sqlite'}", "data", tmp_path)
    _stamps.create(database.engine)
    plain = sa.Table("plain", sa.MetaData(), sa.Column("at", sa.DateTime()))
    plain.create(database.engine)
    values = [
        datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-2))),
    ]
    for index, value in enumerate(values):
        naive = value.astimezone(UTC).replace(tzinfo=None)
        database.run_sync(
            lambda s, i=index, v=value: s.execute(sa.insert(_stamps).values(id=i, at=v))
        )
        database.run_sync(lambda s, v=naive: s.execute(sa.insert(plain).values(at=v)))
    with database.engine.connect() as connection:
        ours = connection.exec_driver_sql("SELECT at FROM stamps ORDER BY id").scalars().all()
        theirs = connection.exec_driver_sql("SELECT at FROM plain ORDER BY rowid").scalars().all()
    assert ours == theirs
    assert ours[0] == "2026-11-26 12:00:00.000000"
    database.dispose()


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    database = open_database(
        f"sqlite:///{tmp_path / 'x.sqlite'}", "data", tmp_path, sqlite_busy_timeout=7
    )
    with database.engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA busy_timeout").scalar() == 7000
    database.dispose()


def test_a_failed_unit_of_work_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url, "data", tmp_path)
    _stamps.create(database.engine)
    now = datetime.now(UTC)

    def two_rows_then_fail(session: Any) -> None:
        session.execute(sa.insert(_stamps).values(id=1, at=now))
        session.execute(sa.insert(_stamps).values(id=2, at=now))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        database.run_sync(two_rows_then_fail)
    count = database.run_sync(
        lambda s: s.execute(sa.select(sa.func.count()).select_from(_stamps)).scalar_one()
    )
    assert count == 0
    database.dispose()


@pytest.mark.anyio
async def test_run_uses_a_worker_thread(tmp_path: Path) -> None:
    import threading

    database = open_database(f"sqlite:///{tmp_path / 'x.sqlite'}", "data", tmp_path)
    caller = threading.get_ident()
    worker = await database.run(lambda session: threading.get_ident())
    assert worker != caller
    database.dispose()


def test_unreachable_server_names_the_setting_and_hides_the_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(
        database_url=f"postgresql://app:hunter2@127.0.0.1:{port}/x", db_connect_timeout=2
    )
    with pytest.raises(DatabaseUnavailableError) as caught:
        open_databases(settings, tmp_path, (DatabaseRole.DATA,))
    message = str(caught.value)
    assert "cannot connect to the data database" in message
    assert "from ENGINEHOST_DATABASE_URL" in message
    assert f"127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_wrong_credentials_name_the_setting(tmp_path: Path, postgres_server_url: str) -> None:
    url = sa.engine.make_url(postgres_server_url).set(password="definitely-wrong")
    settings = load_settings(main_database_url=url.render_as_string(hide_password=False))
    with pytest.raises(DatabaseUnavailableError) as caught:
        open_databases(settings, tmp_path, (DatabaseRole.MAIN,))
    message = str(caught.value)
    assert "ENGINEHOST_MAIN_DATABASE_URL" in message
    assert "password authentication failed" in message
    assert "definitely-wrong" not in message


def test_unusable_sqlite_directory_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = load_settings()
    with pytest.raises(DatabaseUnavailableError) as caught:
        open_databases(settings, blocker / "data")
    assert str(blocker / "data") in str(caught.value)
    assert "ENGINEHOST_DATA_DIR" in str(caught.value)


# ----------------------------------------------------------------------------- migrations


@pytest.mark.parametrize("role", list(DatabaseRole))
def test_models_and_migrations_agree(database_url: str, tmp_path: Path, role: DatabaseRole) -> None:
    database = open_database(database_url, role.value, tmp_path)
    upgrade(database)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, parents: (
                    type_ != "table" or name in metadata_for(role).tables
                ),
            },
        )
        differences = compare_metadata(context, metadata_for(role))
    assert differences == []
    database.dispose()


@pytest.mark.parametrize("role", list(DatabaseRole))
def test_every_revision_downgrades_and_upgrades_again(
    database_url: str, tmp_path: Path, role: DatabaseRole
) -> None:
    database = open_database(database_url, role.value, tmp_path)
    upgrade(database)
    head = schema_status(database).head
    downgrade(database, "base")
    assert schema_status(database).state is SchemaState.EMPTY
    assert set(sa.inspect(database.engine).get_table_names()) == {version_table(role)}
    upgrade(database)
    assert schema_status(database).current == (head,)
    database.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_both_roles_can_share_one_postgres_database(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=database_url, main_database_url=database_url)
    databases = open_databases(settings, tmp_path)
    for database in databases:
        upgrade(database)
    for database in databases:
        status = schema_status(database)
        assert status.ok, status
    tables = set(sa.inspect(databases.data.engine).get_table_names())
    assert {"api_keys", "audit_log", "templates"} <= tables
    assert {"enginehost_main_version", "enginehost_data_version"} <= tables
    databases.dispose()


def test_schema_states_and_boot_policy(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url, "data", tmp_path)
    assert schema_status(database).state is SchemaState.EMPTY
    with pytest.raises(SchemaError, match="run `enginehost db upgrade all`") as caught:
        ensure_schema(database, auto_migrate=False)
    assert "ENGINEHOST_DB_AUTO_MIGRATE is false" in str(caught.value)

    upgrade(database, "data_0001")
    status = schema_status(database)
    assert status.state is SchemaState.BEHIND
    assert status.current == ("data_0001",)

    assert ensure_schema(database, auto_migrate=True).ok
    assert ensure_schema(database, auto_migrate=False).ok
    database.dispose()


def test_a_revision_from_newer_code_is_refused(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url, "data", tmp_path)
    upgrade(database)
    with database.engine.begin() as connection:
        connection.exec_driver_sql(
            f"UPDATE {version_table(DatabaseRole.DATA)} SET version_num = 'data_9999'"
        )
    assert schema_status(database).state is SchemaState.UNKNOWN_REVISION
    for attempt in (
        lambda: upgrade(database),
        lambda: ensure_schema(database, auto_migrate=True),
        lambda: downgrade(database, "base"),
    ):
        with pytest.raises(SchemaError, match="data_9999, which this version of enginehost"):
            attempt()
    database.dispose()


def test_databases_are_checked_one_role_at_a_time(tmp_path: Path) -> None:
    settings = load_settings(
        main_database_url="postgresql://u:p@127.0.0.1:1/x", db_connect_timeout=1
    )
    databases = open_databases(settings, tmp_path, (DatabaseRole.DATA,))
    assert isinstance(databases.data, Database)
    databases.dispose()


@pytest.mark.anyio
async def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    import threading

    import anyio

    database = open_database(f"sqlite:///{tmp_path / 'x.sqlite'}", "data", tmp_path)
    _stamps.create(database.engine)
    writing, release = threading.Event(), threading.Event()

    def slow_write(session: Any) -> None:
        session.execute(sa.insert(_stamps).values(id=1, at=datetime.now(UTC)))
        writing.set()
        release.wait(10)

    def count(session: Any) -> int:
        return int(session.execute(sa.select(sa.func.count()).select_from(_stamps)).scalar_one())

    async with anyio.create_task_group() as tg:
        tg.start_soon(database.run, slow_write)
        await anyio.to_thread.run_sync(writing.wait, 10)
        with anyio.fail_after(5):  # would block until release if reads took the write lock
            assert await database.run(count, readonly=True) == 0
        release.set()
    assert await database.run(count, readonly=True) == 1
    database.dispose()


def test_a_lock_conflict_is_busy_not_unavailable(tmp_path: Path) -> None:
    import threading

    from enginehost.core.db import DatabaseBusyError

    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    first = open_database(url, "data", tmp_path, sqlite_busy_timeout=0.1)
    second = open_database(url, "data", tmp_path, sqlite_busy_timeout=0.1)
    _stamps.create(first.engine)
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock(session: Any) -> None:
        session.execute(sa.insert(_stamps).values(id=1, at=datetime.now(UTC)))
        holding.set()
        release.wait(10)

    holder = threading.Thread(target=first.run_sync, args=(hold_the_write_lock,))
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(
            DatabaseBusyError, match="the data database is busy: database is locked"
        ):
            second.run_sync(
                lambda s: s.execute(sa.insert(_stamps).values(id=2, at=datetime.now(UTC)))
            )
    finally:
        release.set()
        holder.join(10)
    first.dispose()
    second.dispose()
