"""one template name per session: de-duplicate losslessly, then a unique index

Per (session_id, name), the row created first (ties: the lowest id) keeps the name;
every other row is renamed ``<name>-dup-<id>`` (the name part shortened only if the
result would not fit the 100-character column). No row is deleted. Then the unique
index is created. Idempotent, and a no-op when the table does not exist.

Revision ID: data_0002
Revises: data_0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "data_0002"
down_revision: str | None = "data_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_templates_session_id_name"
NAME_MAX = 100

# Portable SQL (SQLite >= 3.25 and PostgreSQL): window functions, substr, length, ||.
RENAME_DUPLICATES = sa.text(
    f"""
    UPDATE templates
    SET name = substr(name, 1, {NAME_MAX} - 5 - length(id)) || '-dup-' || id
    WHERE id IN (
        SELECT id FROM (
            SELECT id, ROW_NUMBER() OVER (
                PARTITION BY session_id, name ORDER BY created_at, id
            ) AS position
            FROM templates
        ) AS ranked
        WHERE position > 1
    )
    """
)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("templates"):
        return
    op.execute(RENAME_DUPLICATES)
    if INDEX not in {index["name"] for index in inspector.get_indexes("templates")}:
        op.create_index(INDEX, "templates", ["session_id", "name"], unique=True)


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("templates"):
        return
    if INDEX in {index["name"] for index in inspector.get_indexes("templates")}:
        op.drop_index(INDEX, table_name="templates")
