"""Persistence: the main database (auth, audit) and the data database (everything else).

:func:`open_databases` resolves both from the settings and checks they can be opened;
:func:`prepare_schemas` migrates them (or refuses a schema behind the code) at boot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from enginehost.core.db.database import Database
from enginehost.core.db.errors import (
    DatabaseBusyError,
    DatabaseConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
)
from enginehost.core.db.urls import DatabaseRole, DatabaseTarget, resolve_targets
from enginehost.core.settings import Settings

__all__ = [
    "Database",
    "DatabaseBusyError",
    "DatabaseConfigError",
    "DatabaseError",
    "DatabaseRole",
    "DatabaseTarget",
    "DatabaseUnavailableError",
    "Databases",
    "SchemaError",
    "open_databases",
    "prepare_schemas",
]


@dataclass(frozen=True, slots=True)
class Databases:
    """Both databases of a host."""

    main: Database
    data: Database

    def __iter__(self) -> Iterator[Database]:
        yield self.main
        yield self.data

    def get(self, role: DatabaseRole) -> Database:
        return self.main if role is DatabaseRole.MAIN else self.data

    def dispose(self) -> None:
        for database in self:
            database.dispose()


def open_databases(
    settings: Settings, data_dir: Path, roles: tuple[DatabaseRole, ...] = tuple(DatabaseRole)
) -> Databases:
    """Open both databases and check each answers; errors name the setting or path.

    ``roles`` limits which are checked (a CLI command about one database should not fail
    because the other is down); both are always resolved, so a conflict is still caught.
    """
    targets = resolve_targets(settings, data_dir)
    databases = Databases(
        main=Database(targets[DatabaseRole.MAIN], settings),
        data=Database(targets[DatabaseRole.DATA], settings),
    )
    try:
        for role in roles:
            databases.get(role).check()
    except BaseException:
        databases.dispose()
        raise
    return databases


def prepare_schemas(databases: Databases, *, auto_migrate: bool) -> None:
    """Bring both schemas to head (or refuse, without auto-migrate); main first."""
    from enginehost.core.db.migrations import ensure_schema

    for database in databases:
        ensure_schema(database, auto_migrate=auto_migrate)
