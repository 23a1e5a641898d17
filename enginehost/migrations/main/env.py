"""Alembic environment of the main database (run by `enginehost db`)."""

from alembic import context

from enginehost.core.db.alembic_env import run_migrations

run_migrations(context)
