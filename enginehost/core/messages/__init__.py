"""Messages: every message of every session, stored engine-neutrally (see :mod:`.store`)."""

from enginehost.core.messages.models import EarlyAck, MessageDirection, MessageRecord
from enginehost.core.messages.store import (
    HISTORY_LIMIT_MAX,
    STALE_PENDING_REASON,
    AckedMessage,
    InvalidCursorError,
    MessageError,
    MessageIdConflictError,
    MessageNotFoundError,
    MessageStore,
    MessageValidationError,
    advance,
)

__all__ = [
    "HISTORY_LIMIT_MAX",
    "STALE_PENDING_REASON",
    "AckedMessage",
    "EarlyAck",
    "InvalidCursorError",
    "MessageDirection",
    "MessageError",
    "MessageIdConflictError",
    "MessageNotFoundError",
    "MessageRecord",
    "MessageStore",
    "MessageValidationError",
    "advance",
]
