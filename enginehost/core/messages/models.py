"""The ``messages`` and ``early_acks`` tables of the data database.

Races are decided by unique indexes, never by reading first:

* :data:`UNIQUE_MESSAGE_ID_INDEX`, one row per engine message id per session. A pending
  send has no engine id yet (``NULL``); both backends treat NULLs as distinct, so any
  number of pending rows coexist.
* :data:`UNIQUE_IDEMPOTENCY_INDEX`, one send per ``Idempotency-Key`` per session
  (``NULL`` when the caller gave none).

``early_acks`` holds acks that named an engine id no row carries yet (an ack can beat the
send path to storing the id it just got back); the store applies them when the id is
stored.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import Index, Text
from sqlmodel import Field

from enginehost.core.db.base import DataModel
from enginehost.core.db.types import data_json_field, data_timestamp_field
from enginehost.core.engine import utc_now

__all__ = [
    "CHAT_ID_MAX",
    "IDEMPOTENCY_KEY_MAX",
    "MESSAGE_ID_MAX",
    "SESSION_ID_MAX",
    "UNIQUE_IDEMPOTENCY_INDEX",
    "UNIQUE_MESSAGE_ID_INDEX",
    "EarlyAck",
    "MessageDirection",
    "MessageRecord",
]

SESSION_ID_MAX = 36
CHAT_ID_MAX = 128
MESSAGE_ID_MAX = 128
IDEMPOTENCY_KEY_MAX = 200

UNIQUE_MESSAGE_ID_INDEX = "uq_messages_session_id_message_id"
UNIQUE_IDEMPOTENCY_INDEX = "uq_messages_session_id_idempotency_key"


class MessageDirection(enum.StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"


def new_id() -> str:
    return str(uuid4())


class MessageRecord(DataModel, table=True):
    """One message of a session, sent through the host or reported by its engine.

    ``status`` holds an :class:`~enginehost.core.engine.AckStatus` value, ``type`` a
    :class:`~enginehost.core.engine.MessageType` value and ``direction`` a
    :class:`MessageDirection` value. ``timestamp`` is when the message was sent or
    received (for a pending send: when it was accepted).
    """

    __tablename__ = "messages"
    # No index on session_id alone: every index below starts with it.
    __table_args__ = (
        Index(UNIQUE_MESSAGE_ID_INDEX, "session_id", "message_id", unique=True),
        Index(UNIQUE_IDEMPOTENCY_INDEX, "session_id", "idempotency_key", unique=True),
        Index(
            "ix_messages_session_id_chat_id_timestamp_id",
            "session_id",
            "chat_id",
            "timestamp",
            "id",
        ),
        Index("ix_messages_session_id_timestamp_id", "session_id", "timestamp", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    session_id: str = Field(max_length=SESSION_ID_MAX)
    chat_id: str = Field(max_length=CHAT_ID_MAX)
    message_id: str | None = Field(default=None, max_length=MESSAGE_ID_MAX)
    direction: str = Field(max_length=16)
    type: str = Field(default="text", max_length=16)
    status: str = Field(default="pending", max_length=16)
    body: str | None = Field(default=None, sa_type=Text, nullable=True)
    from_me: bool = Field(default=False)
    has_media: bool = Field(default=False)
    quoted_message_id: str | None = Field(default=None, max_length=MESSAGE_ID_MAX)
    failure_reason: str | None = Field(default=None, sa_type=Text, nullable=True)
    idempotency_key: str | None = Field(default=None, max_length=IDEMPOTENCY_KEY_MAX)
    timestamp: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    updated_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    raw: dict[str, Any] | None = data_json_field(default=None, nullable=True)


class EarlyAck(DataModel, table=True):
    """The furthest ack seen for an engine id that no message row carried at the time."""

    __tablename__ = "early_acks"

    session_id: str = Field(primary_key=True, max_length=SESSION_ID_MAX)
    message_id: str = Field(primary_key=True, max_length=MESSAGE_ID_MAX)
    status: str = Field(max_length=16)
    at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
