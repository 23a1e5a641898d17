"""create messages and early_acks

``messages`` holds every message of every session; two unique indexes decide races:
one row per engine message id per session (NULL while a send is pending, and NULLs are
distinct on both backends) and one send per idempotency key per session. ``early_acks``
holds acks that arrived before the send stored the engine id they name.

Revision ID: data_0004
Revises: data_0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from enginehost.core.db.types import UTCDateTime, data_json_type

revision: str = "data_0004"
down_revision: str | None = "data_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("chat_id", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("from_me", sa.Boolean(), nullable=False),
        sa.Column("has_media", sa.Boolean(), nullable=False),
        sa.Column("quoted_message_id", sa.String(length=128), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("timestamp", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("raw", data_json_type(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(
        "uq_messages_session_id_message_id", "messages", ["session_id", "message_id"], unique=True
    )
    op.create_index(
        "uq_messages_session_id_idempotency_key",
        "messages",
        ["session_id", "idempotency_key"],
        unique=True,
    )
    op.create_index(
        "ix_messages_session_id_chat_id_timestamp_id",
        "messages",
        ["session_id", "chat_id", "timestamp", "id"],
    )
    op.create_index(
        "ix_messages_session_id_timestamp_id", "messages", ["session_id", "timestamp", "id"]
    )
    op.create_table(
        "early_acks",
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "message_id", name=op.f("pk_early_acks")),
    )


def downgrade() -> None:
    op.drop_table("early_acks")
    op.drop_index("ix_messages_session_id_timestamp_id", table_name="messages")
    op.drop_index("ix_messages_session_id_chat_id_timestamp_id", table_name="messages")
    op.drop_index("uq_messages_session_id_idempotency_key", table_name="messages")
    op.drop_index("uq_messages_session_id_message_id", table_name="messages")
    op.drop_table("messages")
