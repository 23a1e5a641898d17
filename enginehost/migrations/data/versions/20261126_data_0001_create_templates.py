"""create templates

The table as it first shipped: names were not yet unique per session, so a database
migrated to this revision may hold duplicates (``data_0002`` resolves them).

Revision ID: data_0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from enginehost.core.db.types import UTCDateTime

revision: str = "data_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("header", sa.String(length=1024), nullable=True),
        sa.Column("footer", sa.String(length=1024), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
    )
    op.create_index(op.f("ix_templates_session_id"), "templates", ["session_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_templates_session_id"), table_name="templates")
    op.drop_table("templates")
