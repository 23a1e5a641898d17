"""The webhook tables of the data database.

* ``webhooks``: registrations, per session (``session_id`` set) or global (NULL, admin).
  Deleting a session deletes its webhooks; deleting a webhook deletes what it still had
  to deliver (foreign keys with ``ON DELETE CASCADE``).
* ``webhook_outbox``: deliveries still to make, one row per event and webhook, written
  in the transaction of the change that caused the event. A row leaves the table when
  its receiver took it, or when its attempts ran out (then it becomes a dead letter).
  ``id`` orders the rows: the host assigns increasing ids as it writes, so reading by
  id gives, for each lane (webhook, session, chat), the order of the changes.
* ``webhook_dead_letters``: deliveries whose attempts ran out, with the last error,
  until an admin re-drives or deletes them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import BigInteger, Column, ForeignKey, String, Text
from sqlmodel import Field

from enginehost.core.db.base import DataModel
from enginehost.core.db.types import data_json_field, data_timestamp_field
from enginehost.core.engine import utc_now

__all__ = [
    "EVENT_MAX",
    "HEADER_VALUE_MAX",
    "LANE_MAX",
    "URL_MAX",
    "DeadLetterRecord",
    "OutboxRecord",
    "WebhookRecord",
]

URL_MAX = 2048
EVENT_MAX = 64
LANE_MAX = 200
HEADER_VALUE_MAX = 1024


def _new_id() -> str:
    return str(uuid4())


class WebhookRecord(DataModel, table=True):
    """A webhook registration. ``secret`` and ``headers`` are write-only in the API."""

    __tablename__ = "webhooks"

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=36)
    session_id: str | None = Field(
        default=None,
        sa_column=Column(
            String(36), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True, index=True
        ),
    )
    url: str = Field(max_length=URL_MAX)
    events: list[str] = data_json_field(default_factory=list, nullable=False)
    """Event names, or ``["*"]`` for all."""
    filters: dict[str, Any] = data_json_field(default_factory=dict, nullable=False)
    # Kept out of repr: a logged or printed record must not show them.
    secret: str | None = Field(default=None, max_length=512, repr=False)
    headers: dict[str, str] = data_json_field(default_factory=dict, nullable=False, repr=False)
    active: bool = Field(default=True)
    retry_count: int | None = Field(default=None)
    """Retries after the first attempt; None: the host's setting."""
    retry_base: float | None = Field(default=None)
    retry_cap: float | None = Field(default=None)
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    updated_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)


class OutboxRecord(DataModel, table=True):
    """A delivery still to make (see the module docs)."""

    __tablename__ = "webhook_outbox"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    webhook_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    session_id: str | None = Field(default=None, max_length=36)
    event: str = Field(max_length=EVENT_MAX)
    lane: str = Field(max_length=LANE_MAX)
    """What orders deliveries: the chat id of a message event, empty for session events."""
    idempotency_key: str = Field(max_length=64)
    delivery_id: str = Field(max_length=36)
    body: str = Field(sa_type=Text)
    """The exact JSON body sent (and signed) on every attempt."""
    attempts: int = Field(default=0)
    next_attempt_at: datetime | None = data_timestamp_field(default=None, nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text, nullable=True)
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)


class DeadLetterRecord(DataModel, table=True):
    """A delivery whose attempts ran out."""

    __tablename__ = "webhook_dead_letters"

    id: str = Field(primary_key=True, max_length=36)
    """The delivery id it had in the outbox."""
    webhook_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    session_id: str | None = Field(default=None, max_length=36)
    event: str = Field(max_length=EVENT_MAX)
    lane: str = Field(max_length=LANE_MAX)
    idempotency_key: str = Field(max_length=64)
    body: str = Field(sa_type=Text)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_type=Text, nullable=True)
    last_status: int | None = Field(default=None)
    """The receiver's last HTTP status, when it answered."""
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    dead_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
