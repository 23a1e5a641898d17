"""The ``audit_log`` table of the main database: who did what, when, and how it ended."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field

from enginehost.core.db.base import MainModel
from enginehost.core.db.types import main_timestamp_field
from enginehost.core.engine import utc_now

__all__ = ["AuditEntry"]


class AuditEntry(MainModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = main_timestamp_field(default_factory=utc_now, nullable=False, index=True)
    key_id: str | None = Field(default=None, max_length=36, index=True)
    key_prefix: str | None = Field(default=None, max_length=16)
    role: str | None = Field(default=None, max_length=16)
    session: str | None = Field(default=None, max_length=100)
    action: str = Field(max_length=100)
    outcome: int
    """The HTTP status code the call ended with."""
    client: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=1024)
