"""The ``templates`` table of the data database.

A template's name is unique within its session, decided by a unique index, so two
concurrent creates of the same name can never both succeed.
"""

from __future__ import annotations

from datetime import datetime
from uuid import uuid4

from sqlalchemy import Index, Text
from sqlmodel import Field

from enginehost.core.db.base import DataModel
from enginehost.core.db.types import data_timestamp_field
from enginehost.core.engine import utc_now

__all__ = [
    "BODY_MAX",
    "HEADER_FOOTER_MAX",
    "ID_MAX",
    "NAME_MAX",
    "UNIQUE_NAME_INDEX",
    "Template",
]

ID_MAX = 36
"""Template ids are UUIDs."""
NAME_MAX = 100
BODY_MAX = 4096
HEADER_FOOTER_MAX = 1024
UNIQUE_NAME_INDEX = "uq_templates_session_id_name"


def new_id() -> str:
    return str(uuid4())


class Template(DataModel, table=True):
    __tablename__ = "templates"
    __table_args__ = (Index(UNIQUE_NAME_INDEX, "session_id", "name", unique=True),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_MAX)
    session_id: str = Field(max_length=64, index=True)
    name: str = Field(max_length=NAME_MAX)
    body: str = Field(sa_type=Text)
    header: str | None = Field(default=None, max_length=HEADER_FOOTER_MAX)
    footer: str | None = Field(default=None, max_length=HEADER_FOOTER_MAX)
    created_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
    updated_at: datetime = data_timestamp_field(default_factory=utc_now, nullable=False)
