"""What both Alembic ``env.py`` files run: one function, configured by the host's config.

The environments run online only, on the connection the host opened (see
:mod:`enginehost.core.db.migrations`); each compares against its own metadata and
records its version in its own table.
"""

from __future__ import annotations

from typing import Any

from enginehost.core.db.migrations import version_table
from enginehost.core.db.schema import metadata_for
from enginehost.core.db.urls import DatabaseRole


def run_migrations(context: Any) -> None:
    """The body of an ``env.py``: migrate the connection the host passed in."""
    config = context.config
    role = DatabaseRole(config.attributes["role"])
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "enginehost migrations run through `enginehost db ...`, not the alembic command"
        )
    metadata = metadata_for(role)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        # Both databases may share one PostgreSQL database: each environment looks only
        # at its own tables, never proposing to drop the other's (or a version table).
        return type_ != "table" or name in metadata.tables

    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=include_name,
        version_table=version_table(role),
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()
