"""Every table of each database, gathered: import this to get complete metadata.

The Alembic environments and the tests compare these metadata with the migrations, so
a model module that is not imported here would be a table the migrations never make.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from enginehost.core.audit.models import AuditEntry
from enginehost.core.auth.models import ApiKey
from enginehost.core.db.base import DataModel, MainModel
from enginehost.core.db.urls import DatabaseRole
from enginehost.core.messages.models import EarlyAck, MessageRecord
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.templates.models import Template
from enginehost.core.webhooks.models import DeadLetterRecord, OutboxRecord, WebhookRecord

__all__ = ["DATA_MODELS", "MAIN_MODELS", "metadata_for"]

MAIN_MODELS = (ApiKey, AuditEntry)
DATA_MODELS = (
    DeadLetterRecord,
    EarlyAck,
    MessageRecord,
    OutboxRecord,
    SessionRecord,
    Template,
    WebhookRecord,
)


def metadata_for(role: DatabaseRole) -> MetaData:
    """The complete metadata of the database playing ``role``."""
    return MainModel.metadata if role is DatabaseRole.MAIN else DataModel.metadata
