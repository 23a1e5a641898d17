"""One daemon per data database: a second daemon on the same database refuses to start
(and says which), on SQLite and on PostgreSQL; the lock goes with the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from enginehost.core.db.single_writer import DatabaseInUseError, exclusive_writer
from tests.conftest import open_database
from tests.support.daemon import Daemon, cli_env


def test_a_second_daemon_on_the_same_database_refuses_to_start(
    database_url: str, tmp_path: Path
) -> None:
    # Each daemon its own data directory: only the data database is shared.
    shared = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    extra = {
        "ENGINEHOST_DATABASE_URL": shared if database_url.startswith("sqlite") else database_url
    }
    first = Daemon(cli_env(tmp_path / "one", **extra))
    second: Daemon | None = None
    third: Daemon | None = None
    try:
        first.start()
        second = Daemon(cli_env(tmp_path / "two", **extra))
        code = second.wait_exit(60)
        output = "".join(second.raw)
        assert code == 1, output
        assert "in use by another enginehost daemon" in output
        if database_url.startswith("sqlite"):
            assert f"pid {first.process.pid}" in output
        first.stop()
        # Once the first has stopped, the database is free again.
        third = Daemon(cli_env(tmp_path / "three", **extra)).start()
        third.stop()
    finally:
        for daemon in (first, second, third):
            if daemon is not None:
                daemon.kill()


def test_the_lock_is_released_and_can_be_taken_again(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url, "data", tmp_path)
    other = open_database(database_url, "data", tmp_path)
    try:
        with (
            exclusive_writer(database),
            pytest.raises(DatabaseInUseError, match="in use by another enginehost daemon"),
            exclusive_writer(other),
        ):
            pass
        with exclusive_writer(other):
            pass
    finally:
        database.dispose()
        other.dispose()
