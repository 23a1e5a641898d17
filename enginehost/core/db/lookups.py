"""Small pieces the stores' SQL shares."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["dialect_insert", "searchable"]


def searchable(*values: object, max_length: int | None = None) -> bool:
    """False when a lookup value can match no row: not a string, empty or longer than
    the column, or holding a NUL byte (which PostgreSQL refuses outright)."""
    return all(
        isinstance(value, str)
        and "\x00" not in value
        and (max_length is None or 0 < len(value) <= max_length)
        for value in values
    )


def dialect_insert(backend: str, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``..._do_update``."""
    return (postgresql.insert if backend == "postgresql" else sqlite.insert)(table)
