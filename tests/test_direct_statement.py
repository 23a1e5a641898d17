"""DirectStatement: the same SQL and type conversions as SQLAlchemy, on the driver's
cursor, inside SQLAlchemy's transaction, with SQLAlchemy's exception types."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from enginehost.core.db.direct import DirectStatement
from enginehost.core.db.types import UTCDateTime, data_json_type

metadata = sa.MetaData()
things = sa.Table(
    "direct_things",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("at", UTCDateTime(timezone=True), nullable=False),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("extra", data_json_type(), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
)
COLUMNS = list(things.c)
NAMES = [c.key for c in COLUMNS]


@pytest.fixture
def db(data_db: Any) -> Iterator[Any]:
    data_db.run_connection_sync(lambda c: metadata.create_all(c))
    yield data_db


def statements(db: Any) -> dict[str, DirectStatement]:
    dialect = db.engine.dialect
    return {
        "insert": DirectStatement(things.insert(), dialect, column_keys=NAMES),
        "get": DirectStatement(
            sa.select(things).where(things.c.id == sa.bindparam("key")), dialect, columns=COLUMNS
        ),
        "touch": DirectStatement(
            sa.update(things)
            .where(things.c.id == sa.bindparam("key"))
            .values(flag=True)
            .returning(*things.c),
            dialect,
            columns=COLUMNS,
        ),
    }


def test_values_round_trip_as_with_sqlalchemy(db: Any) -> None:
    sql = statements(db)
    # A non-UTC offset: stored and returned as the same instant, in UTC.
    at = datetime(2026, 11, 26, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = {"id": "a", "at": at, "flag": False, "extra": {"k": [1, "two", None]}, "note": None}

    def work(connection: Any) -> tuple[Any, Any, Any]:
        sql["insert"].run(connection, row)
        direct = sql["get"].first(connection, {"key": "a"})
        through_sqlalchemy = connection.execute(sa.select(things)).one()._asdict()
        touched = sql["touch"].first(connection, {"key": "a"})
        return direct, through_sqlalchemy, touched

    direct, through_sqlalchemy, touched = db.run_connection_sync(work)
    assert direct == through_sqlalchemy
    assert direct["at"] == at and direct["at"].tzinfo == UTC
    assert direct["flag"] is False and direct["extra"] == {"k": [1, "two", None]}
    assert touched is not None and touched["flag"] is True
    # Rows inserted directly are read back the same by SQLAlchemy in a new transaction.
    stored = db.run_connection_sync(lambda c: c.execute(sa.select(things)).one()._asdict())
    assert stored == touched
    assert db.run_connection_sync(lambda c: sql["get"].first(c, {"key": "missing"})) is None


def test_driver_errors_are_sqlalchemy_errors_and_roll_back(db: Any) -> None:
    sql = statements(db)
    row = {"id": "b", "at": datetime.now(UTC), "flag": True, "extra": None, "note": "x"}
    db.run_connection_sync(lambda c: sql["insert"].run(c, row))

    def twice(connection: Any) -> None:
        sql["insert"].run(connection, {**row, "id": "c"})
        sql["insert"].run(connection, row)  # the primary key again

    with pytest.raises(IntegrityError):
        db.run_connection_sync(twice)
    # The whole transaction rolled back: "c" is not there.
    assert db.run_connection_sync(lambda c: sql["get"].first(c, {"key": "c"})) is None


def test_missing_parameters_are_refused_before_the_database(db: Any) -> None:
    sql = statements(db)
    with pytest.raises(TypeError, match="missing parameters at, extra, flag, note"):
        db.run_connection_sync(lambda c: sql["insert"].run(c, {"id": "d"}))


def test_statements_whose_sql_changes_per_execution_are_refused(db: Any) -> None:
    expanding = sa.select(things).where(things.c.id.in_(sa.bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="changes the SQL per execution"):
        DirectStatement(expanding, db.engine.dialect, columns=COLUMNS)
