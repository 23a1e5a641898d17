"""The in-process event bus: session and message events, fanned out to subscribers.

Publishing never waits: each subscriber has a bounded queue of its own, so a subscriber
that falls behind can never slow the engine that published. What happens to a full
queue is the subscriber's choice (its *overflow* policy):

* ``drop_oldest`` (the default): the oldest queued event makes room, counted in
  :attr:`Subscription.dropped`. Right for consumers that must go on no matter what
  (plugin hooks, the webhook outbox).
* ``close``: the subscription ends at once, with :attr:`Subscription.overflowed` set.
  Right for a consumer that can start over, such as a live stream client: it is better
  told "you missed events, reconnect" by the stream ending than silently given a stream
  with holes in it.

Consumers are the plugin hooks, the webhook outbox and live event streams.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Literal

import anyio
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from enginehost.core.engine import utc_now
from enginehost.core.logging import get_logger

__all__ = [
    "EventBus",
    "HostEvent",
    "Listener",
    "Overflow",
    "Subscription",
    "iso_timestamp",
    "json_safe",
]

log = get_logger("enginehost.events")

Listener = Callable[["HostEvent"], None]
"""A synchronous consumer of events (see :meth:`EventBus.listen`)."""

Overflow = Literal["drop_oldest", "close"]
"""What a full subscription does with one more event (see the module doc)."""


@dataclass(frozen=True, slots=True)
class HostEvent:
    """One thing that happened on the host, in the webhook catalogue's vocabulary."""

    type: str
    """``session.status``, ``session.qr``, ``message.received``, ``message.sent``, ..."""
    session_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    """The event's payload as the catalogue (``enginehost.core.webhooks.catalogue``)
    defines it: plain JSON, the same a webhook receives."""
    at: datetime = field(default_factory=utc_now)
    subject: Any = field(default=None, compare=False, repr=False)
    """For in-process consumers: the object the event is about, when there is one (the
    :class:`~enginehost.core.engine.EngineMessage` of ``message.received``, which the
    ``message_received`` plugin hook is given). Never serialized."""

    def json_data(self) -> dict[str, Any]:
        """``data`` made of JSON types only (see :func:`json_safe`)."""
        return {str(key): json_safe(value) for key, value in self.data.items()}

    def to_json(self) -> dict[str, Any]:
        """The event as the live stream shows it: ``{event, timestamp, sessionId, data}``,
        the time in milliseconds as in a webhook delivery's envelope."""
        return {
            "event": self.type,
            "timestamp": iso_timestamp(self.at, "milliseconds"),
            "sessionId": self.session_id,
            "data": self.json_data(),
        }


def iso_timestamp(moment: datetime, timespec: str = "auto") -> str:
    """``moment`` in ISO 8601, in UTC, with a ``Z`` (as the REST API writes times);
    a naive time is taken to be UTC already, as every time inside the host is.
    ``timespec`` as for :meth:`datetime.isoformat`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


_MAX_DEPTH = 32


def json_safe(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    Event data is meant to be plain JSON already; this keeps a consumer that serializes
    it working when a publisher hands over something richer. Dataclasses become objects
    with camelCase keys (the API's convention), pydantic models their JSON dump by
    alias, enums their value, times ISO 8601 in UTC, bytes base64, NaN and infinities
    null (JSON has no such numbers). Anything else, or anything nested deeper than
    anything the host builds, becomes its ``str()`` rather than an error.
    """
    # Enums first: a StrEnum or IntEnum is a str or int too, yet JSON wants its plain value.
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, BaseModel):
        return json_safe(value.model_dump(mode="json", by_alias=True), _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            to_camel(item.name): json_safe(getattr(value, item.name), _depth + 1)
            for item in dataclasses.fields(value)
        }
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple | set | frozenset | deque):
        return [json_safe(item, _depth + 1) for item in value]
    return str(value)


class Subscription:
    """A subscriber's bounded queue; iterate it with ``async for``."""

    def __init__(
        self,
        bus: EventBus,
        maxsize: int,
        types: frozenset[str] | None,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        self._bus = bus
        self._queue: deque[HostEvent] = deque()
        self._maxsize = maxsize
        self._types = types
        self._overflow = overflow
        # A bare asyncio future, made only while the subscriber waits: the host runs on
        # asyncio, and an anyio.Event per wait (it looks up the running library each
        # time) cost more than the rest of handing over an event.
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        """Events this subscriber never got: pushed out (``drop_oldest``), or discarded
        when it overflowed (``close``: what was queued, and the event that did not fit)."""
        self.overflowed = False
        """The queue was full with ``overflow="close"``: the subscription is closed."""

    @property
    def closed(self) -> bool:
        return self._closed

    def wants(self, event: HostEvent) -> bool:
        return self._types is None or event.type in self._types

    def offer(self, event: HostEvent) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            if self._overflow == "close":
                # Nothing more for this subscriber, not even what it has queued: what it
                # would get next is a stream with a hole in it. Its memory goes at once.
                self.dropped += len(self._queue) + 1
                self._queue.clear()
                self.overflowed = True
                self.close()
                return
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> HostEvent | None:
        return self._queue.popleft() if self._queue else None

    async def get(self) -> HostEvent:
        """The next event (waits for one); :class:`anyio.EndOfStream` once closed and
        empty."""
        while not self._queue:
            if self._closed:
                raise anyio.EndOfStream
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        """Stop receiving events (idempotent); events already queued can still be read."""
        self._closed = True
        self._wake()
        self._bus._unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[HostEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[HostEvent]:
        while True:
            try:
                yield await self.get()
            except anyio.EndOfStream:
                return


class EventBus:
    """Fan-out of :class:`HostEvent` to every subscription that wants it."""

    def __init__(self) -> None:
        # A dict as an ordered set: leaving is O(1), delivery keeps the subscription order.
        self._subscriptions: dict[Subscription, None] = {}
        self._listeners: dict[Listener, frozenset[str] | None] = {}

    def listen(
        self, listener: Listener, *, types: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call ``listener`` with each event of ``types`` (None: all) as it is published,
        inline; the function returned stops it.

        For consumers whose work per event is next to nothing (counting): a queue and a
        task of their own would cost them more than the work, a task switch per event.
        A listener must not block or await; one that raises is logged and kept.
        """
        self._listeners[listener] = frozenset(types) if types is not None else None

        def stop() -> None:
            self._listeners.pop(listener, None)

        return stop

    def subscribe(
        self,
        *,
        maxsize: int = 1000,
        types: Iterable[str] | None = None,
        overflow: Overflow = "drop_oldest",
    ) -> Subscription:
        """A new subscription holding up to ``maxsize`` events of ``types`` (None: all);
        ``overflow`` says what happens when it is full (see the module doc)."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if overflow not in ("drop_oldest", "close"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        subscription = Subscription(
            self, maxsize, frozenset(types) if types is not None else None, overflow
        )
        self._subscriptions[subscription] = None
        return subscription

    @property
    def subscription_count(self) -> int:
        """How many subscriptions are open (a leak shows here)."""
        return len(self._subscriptions)

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)

    def publish(self, event: HostEvent) -> None:
        """Deliver ``event`` to every interested listener and subscriber, without waiting."""
        for listener, types in tuple(self._listeners.items()):
            if types is None or event.type in types:
                try:
                    listener(event)
                except Exception as exc:  # a consumer's bug must not stop the publisher
                    log.error("events.listener_failed", event_type=event.type, error=str(exc))
        # A copy: a subscriber that overflows leaves the bus in the middle of the loop.
        for subscription in tuple(self._subscriptions):
            if subscription.wants(event):
                subscription.offer(event)
