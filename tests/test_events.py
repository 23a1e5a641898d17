"""The event bus: fan-out, filters, and slow consumers that never block publishers."""

from __future__ import annotations

import anyio
import pytest

from enginehost.core.events import EventBus, HostEvent

pytestmark = pytest.mark.anyio


async def test_fan_out_with_type_filters() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    statuses = bus.subscribe(types=["session.status"])
    bus.publish(HostEvent(type="session.status", session_id="s"))
    bus.publish(HostEvent(type="message.received", session_id="s"))
    assert [(await everything.get()).type for _ in range(2)] == [
        "session.status",
        "message.received",
    ]
    assert (await statuses.get()).type == "session.status"
    assert statuses.get_nowait() is None


async def test_a_slow_consumer_loses_its_oldest_events_and_never_blocks() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=10)
    # publish() is synchronous: it cannot wait for a consumer, only drop for it.
    for index in range(10_000):
        bus.publish(HostEvent(type="message.received", session_id="s", data={"i": index}))
    assert slow.dropped == 9_990
    assert [(await slow.get()).data["i"] for _ in range(10)] == list(range(9_990, 10_000))


async def test_closing_ends_iteration_and_unsubscribes() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    received: list[str] = []

    async def consume() -> None:
        async for event in subscription:
            received.append(event.type)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        bus.publish(HostEvent(type="a", session_id="s"))
        await anyio.sleep(0.05)
        subscription.close()
    bus.publish(HostEvent(type="b", session_id="s"))
    assert received == ["a"]
