"""create sessions

Revision ID: data_0003
Revises: data_0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from enginehost.core.db.types import UTCDateTime, data_json_type

revision: str = "data_0003"
down_revision: str | None = "data_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("engine", sa.String(length=40), nullable=False),
        sa.Column("config", data_json_type(), nullable=False),
        sa.Column("desired_state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_history", data_json_type(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("reconnect_attempt", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("push_name", sa.String(length=100), nullable=True),
        sa.Column("connected_at", UTCDateTime(), nullable=True),
        sa.Column("last_active", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("name", name=op.f("uq_sessions_name")),
    )


def downgrade() -> None:
    op.drop_table("sessions")
