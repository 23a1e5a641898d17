"""Column types that behave the same on SQLite and PostgreSQL, and the helpers that apply them.

Two families of helpers, by the database a model lives in:

* ``data_*`` helpers are for models of the **data** database. They pick the best type
  of whichever backend that database runs on (``JSONB`` on PostgreSQL).
* ``main_*`` helpers are for models of the **main** database, which must stay valid on
  the always-available SQLite as well as on PostgreSQL: only portable types.

Each helper tags its column (``info["enginehost.helper"]``), so a test can prove that no
main model uses a data-only helper. Timestamps are stored in UTC on both backends and
always come back timezone-aware (SQLite keeps no zone; PostgreSQL answers in the
session's zone): :class:`UTCDateTime` normalizes both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field

__all__ = [
    "HELPER_INFO_KEY",
    "UTCDateTime",
    "data_json_field",
    "data_json_type",
    "data_timestamp_field",
    "main_json_field",
    "main_json_type",
    "main_timestamp_field",
]

HELPER_INFO_KEY = "enginehost.helper"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime``: naive values are refused, results are UTC-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        _refuse_naive(value)
        value = value.astimezone(UTC)
        # SQLite has no zone: store the UTC wall time; PostgreSQL keeps the aware value.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # Straight to SQLite's text, the one SQLAlchemy's DATETIME writes
        # ("2026-11-26 12:00:00.000000"), in a third of the time its two steps take
        # (timestamps are bound several times per message written).
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            _refuse_naive(value)
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _refuse_naive(value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: enginehost stores aware UTC times only")


def data_json_type() -> TypeEngine[Any]:
    """JSON for the data database: ``JSONB`` on PostgreSQL (indexable), JSON text on SQLite."""
    return JSON().with_variant(JSONB(), "postgresql")


def main_json_type() -> TypeEngine[Any]:
    """JSON for the main database: the portable ``JSON`` type, valid on every backend."""
    return JSON()


def _tagged(helper: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    column_kwargs = dict(kwargs.pop("sa_column_kwargs", None) or {})
    column_kwargs["info"] = {**column_kwargs.get("info", {}), HELPER_INFO_KEY: helper}
    return {"sa_column_kwargs": column_kwargs, **kwargs}


def data_json_field(**kwargs: Any) -> Any:
    """A JSON column of a data model (see :func:`data_json_type`)."""
    return Field(sa_type=data_json_type(), **_tagged("data_json", kwargs))


def data_timestamp_field(**kwargs: Any) -> Any:
    """A UTC timestamp column of a data model (``timestamptz`` on PostgreSQL)."""
    return Field(sa_type=UTCDateTime(), **_tagged("data_timestamp", kwargs))


def main_json_field(**kwargs: Any) -> Any:
    """A JSON column of a main model (portable)."""
    return Field(sa_type=main_json_type(), **_tagged("main_json", kwargs))


def main_timestamp_field(**kwargs: Any) -> Any:
    """A UTC timestamp column of a main model (portable, aware UTC on every backend)."""
    return Field(sa_type=UTCDateTime(), **_tagged("main_timestamp", kwargs))
