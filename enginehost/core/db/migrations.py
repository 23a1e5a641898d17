"""The two Alembic environments, driven from code: no ``alembic.ini`` for users.

Each database has its own environment (``enginehost/migrations/main`` and
``enginehost/migrations/data``) and its own version table, so the two are upgraded,
checked and downgraded independently, even when both live in one PostgreSQL database.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from enginehost.core.db.database import Database
from enginehost.core.db.errors import SchemaError
from enginehost.core.db.urls import DatabaseRole

__all__ = [
    "SchemaState",
    "SchemaStatus",
    "alembic_config",
    "downgrade",
    "ensure_schema",
    "history",
    "make_revision",
    "schema_status",
    "upgrade",
    "version_table",
]

UPGRADE_COMMAND = "enginehost db upgrade all"


def version_table(role: DatabaseRole) -> str:
    """The Alembic version table of ``role``: distinct, so both can share a database."""
    return f"enginehost_{role}_version"


def alembic_config(database: Database, connection: Connection | None = None) -> Config:
    """An Alembic config for ``database``'s environment, built in code."""
    config = Config()
    config.set_main_option("script_location", f"enginehost.migrations:{database.role}")
    config.set_main_option("version_table", version_table(database.role))
    # Revision files are named by date and slug so they sort in creation order.
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["role"] = database.role
    config.attributes["connection"] = connection
    config.attributes["engine"] = database.engine
    return config


def _script(database: Database) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(database))


class SchemaState(enum.StrEnum):
    UP_TO_DATE = "up-to-date"
    BEHIND = "behind"
    UNKNOWN_REVISION = "unknown-revision"
    EMPTY = "empty"
    """Never migrated (no version table, or no revision recorded)."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    role: DatabaseRole
    state: SchemaState
    current: tuple[str, ...]
    head: str

    @property
    def ok(self) -> bool:
        return self.state is SchemaState.UP_TO_DATE

    def message(self, database: Database) -> str:
        where = f"the {self.role} database ({database.target.describe()})"
        if self.state is SchemaState.UP_TO_DATE:
            return f"{where} is at head {self.head}"
        if self.state is SchemaState.UNKNOWN_REVISION:
            return (
                f"{where} is at revision {', '.join(self.current)}, which this version of "
                "enginehost does not know: a newer enginehost has migrated it. Run that "
                "newer version, or restore a backup made before the upgrade"
            )
        at = ", ".join(self.current) if self.current else "no revision (empty)"
        return f"{where} is at {at}, behind head {self.head}; run `{UPGRADE_COMMAND}`"


def schema_status(database: Database) -> SchemaStatus:
    """Where ``database``'s schema stands against this code's migrations."""
    script = _script(database)
    head = script.get_current_head() or "base"
    with database.translate_errors(), database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": version_table(database.role)}
        )
        current = tuple(context.get_current_heads())
    known = {revision.revision for revision in script.walk_revisions()}
    if not current:
        state = SchemaState.UP_TO_DATE if head == "base" else SchemaState.EMPTY
    elif any(revision not in known for revision in current):
        state = SchemaState.UNKNOWN_REVISION
    elif current == (head,):
        state = SchemaState.UP_TO_DATE
    else:
        state = SchemaState.BEHIND
    return SchemaStatus(role=database.role, state=state, current=current, head=head)


@contextmanager
def _connected(database: Database) -> Iterator[Config]:
    with database.translate_errors(), database.engine.connect() as connection:
        yield alembic_config(database, connection)
        connection.commit()


def upgrade(database: Database, revision: str = "head") -> None:
    """Upgrade ``database`` to ``revision`` (refuses an unknown current revision)."""
    status = schema_status(database)
    if status.state is SchemaState.UNKNOWN_REVISION:
        raise SchemaError(status.message(database))
    with _connected(database) as config:
        _alembic(command.upgrade, config, revision)


def downgrade(database: Database, revision: str) -> None:
    """Downgrade ``database`` to ``revision`` (``base`` undoes every migration)."""
    status = schema_status(database)
    if status.state is SchemaState.UNKNOWN_REVISION:
        raise SchemaError(status.message(database))
    with _connected(database) as config:
        _alembic(command.downgrade, config, revision)


def history(database: Database) -> list[dict[str, Any]]:
    """The revisions of ``database``'s environment, newest first, with which are applied."""
    status = schema_status(database)
    script = _script(database)
    applied: set[str] = set()
    for current in status.current:
        if current in {r.revision for r in script.walk_revisions()}:
            applied.update(r.revision for r in script.iterate_revisions(current, "base"))
    return [
        {
            "revision": revision.revision,
            "downRevision": revision.down_revision,
            "message": revision.doc,
            "applied": revision.revision in applied,
            "head": revision.is_head,
        }
        for revision in script.walk_revisions()
    ]


def make_revision(database: Database, message: str, *, autogenerate: bool) -> str:
    """Write a new revision file into the package's environment; return its path."""
    if autogenerate:
        status = schema_status(database)
        if not status.ok:
            raise SchemaError(
                "autogenerate compares the models with a database at head: "
                + status.message(database)
            )
    with _connected(database) as config:
        script = _alembic(command.revision, config, message=message, autogenerate=autogenerate)
    scripts = script if isinstance(script, list) else [script]
    return ", ".join(str(s.path) for s in scripts if s is not None)


def ensure_schema(database: Database, *, auto_migrate: bool) -> SchemaStatus:
    """At boot: migrate to head, or (without auto-migrate) refuse a schema behind head."""
    status = schema_status(database)
    if status.state is SchemaState.UNKNOWN_REVISION:
        raise SchemaError(status.message(database))
    if status.ok:
        return status
    if not auto_migrate:
        raise SchemaError(
            status.message(database) + " (ENGINEHOST_DB_AUTO_MIGRATE is false, so enginehost "
            "does not migrate at boot)"
        )
    upgrade(database)
    return schema_status(database)


def _alembic(function: Any, config: Config, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(config, *args, **kwargs)
    except CommandError as exc:
        raise SchemaError(str(exc)) from None
