"""Message events, produced where the change is made: in the message store's writes.

The store calls these from inside its write operations, right after the statement that
made the change. Each event is built once (its payload from the catalogue,
:mod:`enginehost.core.webhooks.catalogue`) and goes two ways:

* its webhook deliveries are staged in the same transaction (see
  :mod:`enginehost.core.webhooks.outbox`), so they exist exactly when the change does;
* it is published on the event bus once the transaction has committed (live streams,
  plugin hooks, metrics), never for a change that rolled back.

So webhooks and live consumers see the same events with the same data. Without a bus
and with no webhook wanting an event, nothing is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from enginehost.core.db.after_commit import after_commit
from enginehost.core.engine import EngineMessage
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.messages.models import MessageRecord
from enginehost.core.webhooks.catalogue import ack_payload, message_payload

if TYPE_CHECKING:
    from enginehost.core.webhooks.outbox import Outbox

__all__ = ["MessageEvents"]

_COLUMNS = tuple(MessageRecord.model_fields)
_COLUMN_NAMES = frozenset(_COLUMNS)

# (event, session id, payload, lane, subject)
_Event = tuple[str, str, dict[str, Any], str, Any]


def _row(record: MessageRecord) -> Mapping[str, Any]:
    """The record's columns by name. The store's records are built with
    ``model_construct``, which keeps every field in ``__dict__``: read it as is (the
    ORM's attribute descriptors cost about 5 µs per message here)."""
    values: dict[str, Any] = record.__dict__
    if values.keys() >= _COLUMN_NAMES:
        return values
    return {name: getattr(record, name) for name in _COLUMNS}


class MessageEvents:
    """Produces ``message.*`` events for one store (see the module docs)."""

    def __init__(self, outbox: Outbox | None, bus: EventBus | None) -> None:
        self._outbox = outbox
        self._bus = bus

    @property
    def active(self) -> bool:
        """Whether anyone may want an event (else callers need not prepare any)."""
        return self._bus is not None or (self._outbox is not None and bool(self._outbox.index))

    def received(
        self, target: Any, items: Sequence[tuple[Mapping[str, Any], EngineMessage]]
    ) -> None:
        """``message.received`` for new messages an engine reported, given as the rows
        just inserted (every column by name) and the engine's messages."""
        if not items or not self.active:
            return
        self._emit(
            target,
            [
                (
                    "message.received",
                    row["session_id"],
                    self._message(row, message.sender),
                    row["chat_id"],
                    message,
                )
                for row, message in items
            ],
        )

    def sent(self, target: Any, record: MessageRecord, *, sender: str | None = None) -> None:
        """``message.sent``: a send reached the server, or an own message appeared."""
        if self.active:
            data = self._message(_row(record), sender)
            self._emit(target, [("message.sent", record.session_id, data, record.chat_id, None)])

    def failed(self, target: Any, records: Sequence[MessageRecord]) -> None:
        """``message.failed``: sends that failed (or were pending when the host died)."""
        if records and self.active:
            self._emit(
                target,
                [
                    ("message.failed", r.session_id, self._message(_row(r), None), r.chat_id, None)
                    for r in records
                ],
            )

    def ack(self, target: Any, session_id: str, message_id: str, row: Mapping[str, Any]) -> None:
        """``message.ack``: an ack moved a message's status forward."""
        if not self.active:
            return
        data = ack_payload(
            session_name=self._name(session_id),
            id=row["id"],
            chat_id=row["chat_id"],
            message_id=message_id,
            status=row["status"],
            from_me=bool(row["from_me"]),
        )
        self._emit(target, [("message.ack", session_id, data, row["chat_id"], None)])

    def _emit(self, target: Any, events: list[_Event]) -> None:
        outbox = self._outbox
        if outbox is not None:
            outbox.stage_many(target, [(e[0], e[1], e[2], e[3]) for e in events])
        bus = self._bus
        if bus is not None:
            after_commit(target, _publisher(bus, events))

    def _message(self, row: Mapping[str, Any], sender: str | None) -> dict[str, Any]:
        return message_payload(row, session_name=self._name(row["session_id"]), sender=sender)

    def _name(self, session_id: str) -> str:
        return self._outbox.session_name(session_id) if self._outbox is not None else ""


def _publisher(bus: EventBus, events: list[_Event]) -> Callable[[], None]:
    def publish() -> None:
        for event, session_id, data, _, subject in events:
            bus.publish(HostEvent(type=event, session_id=session_id, data=data, subject=subject))

    return publish
