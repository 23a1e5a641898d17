"""The durable outbox: deliveries written in the transaction of the change they announce.

A store method that changes state (stores a message, moves an ack, fails a send, moves
a session's status) calls :meth:`Outbox.stage` inside its own transaction with the event
that change causes. The outbox asks the webhook index who wants it; for each webhook it
renders the delivery's exact body once and inserts a row into ``webhook_outbox`` on the
same connection. So a change that commits has its deliveries on disk, and a change that
rolls back has none: a crash can neither lose an event nor announce one that did not
happen. Once the transaction has committed, the rows are handed to the dispatcher (see
:mod:`enginehost.core.db.after_commit`). With no webhook wanting an event, staging
costs a few dictionary look-ups and writes nothing.

Row ids increase in the order rows are staged; a lane's (webhook, session, chat) events
come from one writer at a time (a session's engine events are handled one after the
other), so for each lane the id order is the order of the changes. The dispatcher
delivers each lane in that order, after a restart too.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from enginehost.core.db.after_commit import after_commit
from enginehost.core.engine import utc_now
from enginehost.core.webhooks.catalogue import envelope_bytes
from enginehost.core.webhooks.matching import WebhookIndex
from enginehost.core.webhooks.models import LANE_MAX, OutboxRecord, WebhookRecord

__all__ = ["Delivery", "Outbox"]

_TABLE = OutboxRecord.__table__  # type: ignore[attr-defined]
_WEBHOOKS = WebhookRecord.__table__  # type: ignore[attr-defined]


def _guarded_insert() -> Any:
    """INSERT of one outbox row per parameter set, only while its webhook exists.

    The index learns of a deleted webhook once the delete has committed; a writer that
    matched the webhook just before must not fail its own change (a stored message, a
    status) on the outbox's foreign key: its row for the gone webhook is skipped.
    """
    columns = list(_TABLE.c)
    values = sa.select(*[sa.bindparam(c.key, type_=c.type) for c in columns]).where(
        sa.exists().where(_WEBHOOKS.c.id == sa.bindparam("webhook_id"))
    )
    return sa.insert(_TABLE).from_select([c.key for c in columns], values)


_INSERT = _guarded_insert()


@dataclass(slots=True, eq=False)
class Delivery:
    """One delivery still to make (an outbox row, in memory)."""

    id: int
    webhook_id: str
    session_id: str | None
    event: str
    lane: str
    idempotency_key: str
    delivery_id: str
    body: bytes
    attempts: int
    created_at: datetime
    last_error: str | None = None

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Delivery:
        return cls(
            id=row["id"],
            webhook_id=row["webhook_id"],
            session_id=row["session_id"],
            event=row["event"],
            lane=row["lane"],
            idempotency_key=row["idempotency_key"],
            delivery_id=row["delivery_id"],
            body=row["body"].encode(),
            attempts=row["attempts"],
            created_at=row["created_at"],
            last_error=row.get("last_error"),
        )


def idempotency_key(webhook_id: str, event_id: str) -> str:
    """The same for every attempt (and re-drive) of one event to one webhook, and
    different for any other pair."""
    return hashlib.sha256(f"{webhook_id}:{event_id}".encode()).hexdigest()[:32]


class Outbox:
    """Stages deliveries in the writers' transactions (see the module docs)."""

    def __init__(self, index: WebhookIndex, *, max_payload_bytes: int) -> None:
        self._index = index
        self._max_payload_bytes = max_payload_bytes
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()  # staging runs in worker threads
        self._accept: Callable[[list[Delivery]], None] | None = None
        self._session_names: Callable[[str], str | None] = lambda session_id: None

    def name_sessions_with(self, names: Callable[[str], str | None]) -> None:
        """How payloads get a session's name from its id (the session store's cache)."""
        self._session_names = names

    def session_name(self, session_id: str | None) -> str:
        """The name of ``session_id`` for payloads ("" when unknown)."""
        return (self._session_names(session_id) if session_id is not None else None) or ""

    @property
    def index(self) -> WebhookIndex:
        return self._index

    def start_ids_after(self, last_id: int) -> None:
        """Continue ids after the largest one stored (at boot, before any staging)."""
        with self._ids_lock:
            self._ids = itertools.count(last_id + 1)

    def next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def deliver_to(self, accept: Callable[[list[Delivery]], None] | None) -> None:
        """Where committed deliveries go (the dispatcher); None: nowhere (they wait in
        the table for the next start)."""
        self._accept = accept

    def stage(
        self,
        target: Connection | Any,
        event: str,
        session_id: str | None,
        data: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        lane: str = "",
    ) -> int:
        """Insert the deliveries of one event on ``target`` (the writer's connection or
        ORM session, inside its transaction); the number of deliveries.

        ``data`` may be a function, called only when some webhook may want the event
        (building a payload costs more than finding that nobody does)."""
        return self.stage_many(target, [(event, session_id, data, lane)])

    def stage_many(
        self,
        target: Connection | Any,
        events: Sequence[
            tuple[str, str | None, Mapping[str, Any] | Callable[[], Mapping[str, Any]], str]
        ],
    ) -> int:
        """:meth:`stage` for several events ``(event, session_id, data, lane)``, in order,
        with one INSERT."""
        if not self._index:
            return 0
        rows: list[dict[str, Any]] = []
        deliveries: list[Delivery] = []
        now = utc_now()
        for event, session_id, data, lane in events:
            if not self._index.matching_any(event, session_id):
                continue
            payload = data() if callable(data) else data
            webhooks = self._index.matching(event, session_id, payload)
            if not webhooks:
                continue
            event_id = str(uuid4())
            lane = lane[:LANE_MAX]
            for webhook in webhooks:
                delivery_id = str(uuid4())
                key = idempotency_key(webhook.id, event_id)
                body = envelope_bytes(
                    event=event,
                    timestamp=now,
                    session_id=session_id,
                    idempotency_key=key,
                    delivery_id=delivery_id,
                    data=payload,
                    max_bytes=self._max_payload_bytes,
                )
                row_id = self.next_id()
                row: dict[str, Any] = {
                    "id": row_id,
                    "webhook_id": webhook.id,
                    "session_id": session_id,
                    "event": event,
                    "lane": lane,
                    "idempotency_key": key,
                    "delivery_id": delivery_id,
                    "body": body.decode(),
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error": None,
                    "created_at": now,
                }
                rows.append(row)
                deliveries.append(
                    Delivery(
                        id=row_id,
                        webhook_id=webhook.id,
                        session_id=session_id,
                        event=event,
                        lane=lane,
                        idempotency_key=key,
                        delivery_id=delivery_id,
                        body=body,
                        attempts=0,
                        created_at=now,
                    )
                )
        if not rows:
            return 0
        target.execute(_INSERT, rows)
        accept = self._accept
        if accept is not None:
            after_commit(target, lambda: accept(deliveries))
        return len(rows)
