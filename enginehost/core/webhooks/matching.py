"""Which webhooks want an event: registrations as the outbox sees them, and filters.

The outbox asks for every event it may have to write (thousands per second on a busy
host), so matching works on immutable snapshots kept in memory, indexed by session:
no database read, no pydantic model, a few dictionary look-ups per event. The registry
replaces a snapshot once a change to its webhook has committed.

Filters narrow *message* events (``message.*``): each filter field is compared with
the field of the event's data that has the same meaning; an event whose data has no
such field (a session event, say) is not narrowed by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from enginehost.core.engine import utc_now
from enginehost.core.http.models import RequestModel
from enginehost.core.webhooks.catalogue import ALL_EVENTS
from enginehost.core.webhooks.models import WebhookRecord

__all__ = ["ALL_EVENTS", "WebhookFilters", "WebhookIndex", "WebhookSnapshot"]

CHAT_ID_MAX = 128
FILTER_CHATS_MAX = 1000


class WebhookFilters(RequestModel):
    """Optional filters of a webhook; every field given must match (an AND)."""

    chat_ids: list[str] | None = Field(
        None,
        max_length=FILTER_CHATS_MAX,
        description="Only these chats (neutral ids such as `123@c.us`, `456@g.us`).",
    )
    direction: Literal["incoming", "outgoing"] | None = Field(
        None, description="Only messages in this direction."
    )
    from_me: bool | None = Field(None, description="Only own messages (true) or others' (false).")
    message_types: list[str] | None = Field(
        None, max_length=50, description="Only these message types (text, image, ...)."
    )
    is_group: bool | None = Field(None, description="Only group chats (true) or others (false).")

    @field_validator("chat_ids")
    @classmethod
    def _chat_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for chat_id in value:
                if not chat_id or len(chat_id) > CHAT_ID_MAX or "@" not in chat_id:
                    raise ValueError(f"{chat_id!r} is not a chat id such as 123@c.us")
        return value


@dataclass(frozen=True, slots=True)
class WebhookSnapshot:
    """A webhook as deliveries need it: immutable, cheap to match."""

    id: str
    session_id: str | None
    url: str
    events: frozenset[str] | None
    """None: every event."""
    secret: str | None
    headers: Mapping[str, str]
    active: bool
    max_attempts: int | None
    """None: the host's setting."""
    retry_base: float | None
    retry_cap: float | None
    updated_at: datetime = field(default_factory=utc_now)
    chats: frozenset[str] | None = None
    direction: str | None = None
    from_me: bool | None = None
    types: frozenset[str] | None = None
    is_group: bool | None = None

    @classmethod
    def of(cls, record: WebhookRecord) -> WebhookSnapshot:
        filters = WebhookFilters.model_validate(record.filters or {})
        events = frozenset(record.events)
        return cls(
            id=record.id,
            session_id=record.session_id,
            url=record.url,
            events=None if ALL_EVENTS in events else events,
            secret=record.secret,
            headers=dict(record.headers or {}),
            active=record.active,
            max_attempts=None if record.retry_count is None else record.retry_count + 1,
            retry_base=record.retry_base,
            retry_cap=record.retry_cap,
            updated_at=record.updated_at,
            chats=frozenset(filters.chat_ids) if filters.chat_ids is not None else None,
            direction=filters.direction,
            from_me=filters.from_me,
            types=frozenset(filters.message_types) if filters.message_types is not None else None,
            is_group=filters.is_group,
        )

    def wants(self, event: str, data: Mapping[str, Any]) -> bool:
        """Whether this webhook takes ``event`` with ``data`` (see the module docs)."""
        if not self.active or (self.events is not None and event not in self.events):
            return False
        if not event.startswith("message."):
            return True
        chat = data.get("chatId")
        if self.chats is not None and chat is not None and chat not in self.chats:
            return False
        if (
            self.is_group is not None
            and chat is not None
            and str(chat).endswith("@g.us") != self.is_group
        ):
            return False
        if self.from_me is not None and "fromMe" in data and data["fromMe"] != self.from_me:
            return False
        if (
            self.direction is not None
            and "direction" in data
            and data["direction"] != self.direction
        ):
            return False
        return not (self.types is not None and "type" in data and data["type"] not in self.types)


class WebhookIndex:
    """Every webhook's snapshot, by session (``None``: global webhooks).

    Read from the writers' worker threads while the event loop changes it, so it is
    copy-on-write: a change builds new dictionaries and swaps them in; a reader works on
    the ones it picked up, which nobody changes. Changes are rare (registrations), reads
    are per event. Changes may arrive out of order (the after-commit callbacks of two
    transactions on PostgreSQL): an older snapshot never replaces a newer one, and a
    deleted webhook never comes back.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, WebhookSnapshot] = {}
        self._by_session: dict[str | None, dict[str, WebhookSnapshot]] = {}
        self._deleted: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def load(self, records: Iterable[WebhookRecord]) -> None:
        """Replace everything with ``records`` (at boot)."""
        self._deleted.clear()
        self._swap({record.id: WebhookSnapshot.of(record) for record in records})

    def put(self, snapshot: WebhookSnapshot) -> None:
        """Add or replace a webhook (after its change committed)."""
        current = self._by_id.get(snapshot.id)
        if snapshot.id in self._deleted or (
            current is not None and current.updated_at > snapshot.updated_at
        ):
            return  # a change that committed before the one already applied
        self._swap({**self._by_id, snapshot.id: snapshot})

    def remove(self, webhook_id: str) -> None:
        self._deleted.add(webhook_id)
        if webhook_id in self._by_id:
            self._swap({k: v for k, v in self._by_id.items() if k != webhook_id})

    def remove_session(self, session_id: str) -> None:
        """Forget a deleted session's webhooks (the database deleted them with it)."""
        gone = set(self._by_session.get(session_id, {}))
        if gone:
            self._deleted.update(gone)
            self._swap({k: v for k, v in self._by_id.items() if k not in gone})

    def _swap(self, by_id: dict[str, WebhookSnapshot]) -> None:
        by_session: dict[str | None, dict[str, WebhookSnapshot]] = {}
        for snapshot in by_id.values():
            by_session.setdefault(snapshot.session_id, {})[snapshot.id] = snapshot
        self._by_session = by_session
        self._by_id = by_id

    def get(self, webhook_id: str) -> WebhookSnapshot | None:
        return self._by_id.get(webhook_id)

    def matching_any(self, event: str, session_id: str | None) -> bool:
        """Whether some active webhook takes ``event`` of ``session_id`` before filters
        (cheap: lets a writer skip building a payload nobody wants)."""
        by_session = self._by_session
        for bucket_key in (session_id, None) if session_id is not None else (None,):
            bucket = by_session.get(bucket_key)
            if bucket:
                for snapshot in bucket.values():
                    if snapshot.active and (snapshot.events is None or event in snapshot.events):
                        return True
        return False

    def matching(
        self, event: str, session_id: str | None, data: Mapping[str, Any]
    ) -> list[WebhookSnapshot]:
        """The webhooks that take ``event`` of ``session_id``: the session's, then the
        global ones."""
        found: list[WebhookSnapshot] = []
        by_session = self._by_session
        if not by_session:
            return found
        for bucket_key in (session_id, None) if session_id is not None else (None,):
            bucket = by_session.get(bucket_key)
            if bucket:
                found.extend(s for s in bucket.values() if s.wants(event, data))
        return found
