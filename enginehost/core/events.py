"""The in-process event bus: session and message events, fanned out to subscribers.

Publishing never waits: each subscriber has a bounded queue of its own, and a subscriber
that falls behind loses its oldest events (counted in :attr:`Subscription.dropped`)
instead of slowing the engine that published them. Consumers are the plugin hooks, the
webhook outbox and live event streams.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from enginehost.core.engine import utc_now
from enginehost.core.logging import get_logger

__all__ = ["EventBus", "HostEvent", "Subscription"]

log = get_logger("enginehost.events")


@dataclass(frozen=True, slots=True)
class HostEvent:
    """One thing that happened on the host, in the webhook catalogue's vocabulary."""

    type: str
    """``session.status``, ``session.qr``, ``message.received``, ``message.sent``, ..."""
    session_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utc_now)


class Subscription:
    """A subscriber's bounded queue; iterate it with ``async for``."""

    def __init__(self, bus: EventBus, maxsize: int, types: frozenset[str] | None) -> None:
        self._bus = bus
        self._queue: deque[HostEvent] = deque()
        self._maxsize = maxsize
        self._types = types
        self._ready = anyio.Event()
        self._closed = False
        self.dropped = 0

    def wants(self, event: HostEvent) -> bool:
        return self._types is None or event.type in self._types

    def offer(self, event: HostEvent) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()

    def get_nowait(self) -> HostEvent | None:
        return self._queue.popleft() if self._queue else None

    async def get(self) -> HostEvent:
        """The next event (waits for one)."""
        while not self._queue:
            if self._closed:
                raise anyio.EndOfStream
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
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
        self._subscriptions: list[Subscription] = []

    def subscribe(self, *, maxsize: int = 1000, types: Iterable[str] | None = None) -> Subscription:
        subscription = Subscription(self, maxsize, frozenset(types) if types is not None else None)
        self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: HostEvent) -> None:
        """Deliver ``event`` to every interested subscriber, without waiting."""
        for subscription in list(self._subscriptions):
            if subscription.wants(event):
                subscription.offer(event)
