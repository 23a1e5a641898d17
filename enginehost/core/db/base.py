"""The two model families: each with its own metadata and constraint naming convention.

Every table of the main database derives from :class:`MainModel`, every table of the
data database from :class:`DataModel`. Separate metadata means each Alembic environment
sees only its own tables; the naming convention gives every index and constraint a
predictable name, which migrations (and SQLite's batch mode) rely on.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

__all__ = ["NAMING_CONVENTION", "DataModel", "MainModel"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

main_registry = registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))
data_registry = registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))


class MainModel(SQLModel, registry=main_registry):
    """Base of the main database's tables (auth and audit)."""


class DataModel(SQLModel, registry=data_registry):
    """Base of the data database's tables (sessions, messages, templates, ...)."""
