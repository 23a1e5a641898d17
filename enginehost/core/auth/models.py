"""The ``api_keys`` table of the main database.

Only a keyed hash of each key is stored, with a short visible prefix so operators can
tell keys apart; the secret itself is shown once and never kept.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field

from enginehost.core.db.base import MainModel
from enginehost.core.db.types import main_json_field, main_timestamp_field
from enginehost.core.engine import utc_now

__all__ = ["ApiKey"]


class ApiKey(MainModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16, index=True)
    key_hash: str = Field(max_length=128, unique=True)
    role: str = Field(max_length=16)
    sessions: list[str] | None = main_json_field(default=None, nullable=True)
    """Session names the key is limited to; ``None`` means every session."""
    expires_at: datetime | None = main_timestamp_field(default=None, nullable=True)
    created_at: datetime = main_timestamp_field(default_factory=utc_now, nullable=False)
    last_used_at: datetime | None = main_timestamp_field(default=None, nullable=True)
    revoked_at: datetime | None = main_timestamp_field(default=None, nullable=True)
