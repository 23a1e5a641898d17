"""The ``sessions`` table of the data database."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import Text
from sqlmodel import Field

from enginehost.core.db.base import DataModel
from enginehost.core.db.types import data_json_field, data_timestamp_field
from enginehost.core.engine import utc_now

__all__ = ["NAME_MAX", "SessionRecord"]

NAME_MAX = 100


def _new_id() -> str:
    return str(uuid4())


class SessionRecord(DataModel, table=True):
    """A session's stored state. ``name`` is unique; ``id`` is a UUID from create."""

    __tablename__ = "sessions"

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=NAME_MAX, unique=True)
    engine: str = Field(max_length=40)
    config: dict[str, Any] = data_json_field(default_factory=dict, nullable=False)
    desired_state: str = Field(default="stopped", max_length=16)
    status: str = Field(default="created", max_length=20)
    status_history: list[dict[str, Any]] = data_json_field(default_factory=list, nullable=False)
    last_error: str | None = Field(default=None, sa_type=Text, nullable=True)
    reconnect_attempt: int = Field(default=0)
    phone: str | None = Field(default=None, max_length=32)
    push_name: str | None = Field(default=None, max_length=100)
    connected_at: datetime | None = data_timestamp_field(default=None, nullable=True)
    last_active: datetime | None = data_timestamp_field(default=None, nullable=True)
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    updated_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
