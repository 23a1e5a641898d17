"""create webhooks, webhook_outbox and webhook_dead_letters

``webhooks`` holds registrations (``session_id`` NULL for a global one); deleting a
session deletes its webhooks, and deleting a webhook deletes its outbox rows and dead
letters. ``webhook_outbox`` holds deliveries still to make, written in the transaction
of the change that caused each event; its ids are assigned by the host in write order.

Revision ID: data_0005
Revises: data_0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from enginehost.core.db.types import UTCDateTime, data_json_type

revision: str = "data_0005"
down_revision: str | None = "data_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", data_json_type(), nullable=False),
        sa.Column("filters", data_json_type(), nullable=False),
        sa.Column("secret", sa.String(length=512), nullable=True),
        sa.Column("headers", data_json_type(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=True),
        sa.Column("retry_base", sa.Float(), nullable=True),
        sa.Column("retry_cap", sa.Float(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_webhooks_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_index("ix_webhooks_session_id", "webhooks", ["session_id"])
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("webhook_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("lane", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_outbox_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_outbox")),
    )
    op.create_index("ix_webhook_outbox_webhook_id", "webhook_outbox", ["webhook_id"])
    op.create_table(
        "webhook_dead_letters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("webhook_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("lane", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dead_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_dead_letters_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_dead_letters")),
    )
    op.create_index("ix_webhook_dead_letters_webhook_id", "webhook_dead_letters", ["webhook_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_dead_letters_webhook_id", table_name="webhook_dead_letters")
    op.drop_table("webhook_dead_letters")
    op.drop_index("ix_webhook_outbox_webhook_id", table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
    op.drop_index("ix_webhooks_session_id", table_name="webhooks")
    op.drop_table("webhooks")
