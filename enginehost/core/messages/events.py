"""Message events staged in the message store's own transactions (the webhook outbox).

The store calls these from inside its write operations, right after the statement that
made the change, so each event is written with its change or not at all (see
:mod:`enginehost.core.webhooks.outbox`). Without an outbox, or with no webhook that wants
an event, they do nothing and build nothing: the hot paths pay a check per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from enginehost.core.messages.models import MessageRecord
from enginehost.core.webhooks.catalogue import ack_payload, message_payload

if TYPE_CHECKING:
    from enginehost.core.webhooks.outbox import Outbox

__all__ = ["MessageEvents"]

_COLUMNS = tuple(MessageRecord.model_fields)


def _row(record: MessageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _COLUMNS}


class MessageEvents:
    """Stages ``message.*`` events for one store (see the module docs)."""

    def __init__(self, outbox: Outbox | None) -> None:
        self._outbox = outbox

    @property
    def active(self) -> bool:
        """Whether any webhook is registered at all (else nothing is ever staged)."""
        return self._outbox is not None and bool(self._outbox.index)

    def received(self, target: Any, items: Sequence[tuple[MessageRecord, str | None]]) -> None:
        """``message.received`` for new messages an engine reported."""
        outbox = self._outbox
        if outbox is None or not outbox.index or not items:
            return
        outbox.stage_many(
            target,
            [
                (
                    "message.received",
                    record.session_id,
                    self._message(record, sender),
                    record.chat_id,
                )
                for record, sender in items
            ],
        )

    def sent(self, target: Any, record: MessageRecord, *, sender: str | None = None) -> None:
        """``message.sent``: a send reached the server, or an own message appeared."""
        self._one(target, "message.sent", record, sender)

    def failed(self, target: Any, record: MessageRecord) -> None:
        """``message.failed``: a send failed (or was pending when the host died)."""
        self._one(target, "message.failed", record, None)

    def ack(self, target: Any, session_id: str, message_id: str, row: Mapping[str, Any]) -> None:
        """``message.ack``: an ack moved a message's status forward."""
        outbox = self._outbox
        if outbox is None or not outbox.index:
            return
        outbox.stage(
            target,
            "message.ack",
            session_id,
            lambda: ack_payload(
                session_name=outbox.session_name(session_id),
                id=row["id"],
                chat_id=row["chat_id"],
                message_id=message_id,
                status=row["status"],
                from_me=bool(row["from_me"]),
            ),
            lane=row["chat_id"],
        )

    def _one(self, target: Any, event: str, record: MessageRecord, sender: str | None) -> None:
        outbox = self._outbox
        if outbox is None or not outbox.index:
            return
        outbox.stage(
            target, event, record.session_id, self._message(record, sender), lane=record.chat_id
        )

    def _message(self, record: MessageRecord, sender: str | None) -> Any:
        outbox = self._outbox
        assert outbox is not None
        return lambda: message_payload(
            _row(record), session_name=outbox.session_name(record.session_id), sender=sender
        )
