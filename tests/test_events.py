"""The event bus: fan-out, filters, slow consumers that never block publishers (their
overflow policies), and the JSON view of events."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from enginehost.core.engine import EngineMessage, MessageType
from enginehost.core.events import EventBus, HostEvent, json_safe

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


async def test_overflow_close_ends_the_subscription_the_moment_it_is_full() -> None:
    bus = EventBus()
    strict = bus.subscribe(maxsize=3, overflow="close")
    patient = bus.subscribe(maxsize=3)
    for index in range(3):
        bus.publish(HostEvent(type="message.ack", session_id="s", data={"i": index}))
    assert not strict.overflowed and not strict.closed
    assert bus.subscription_count == 2
    bus.publish(HostEvent(type="message.ack", session_id="s", data={"i": 3}))
    # The fourth did not fit: closed, emptied and gone from the bus at once.
    assert strict.overflowed and strict.closed
    assert strict.dropped == 4
    assert strict.get_nowait() is None
    assert bus.subscription_count == 1
    with pytest.raises(anyio.EndOfStream):
        await strict.get()
    assert [event async for event in strict] == []
    # Later events reach the others as before, and nothing more is counted for it.
    bus.publish(HostEvent(type="message.ack", session_id="s", data={"i": 4}))
    assert strict.dropped == 4
    assert [(await patient.get()).data["i"] for _ in range(3)] == [2, 3, 4]
    assert not patient.overflowed


async def test_overflow_close_wakes_a_waiting_consumer_and_ends_its_loop() -> None:
    bus = EventBus()
    subscription = bus.subscribe(maxsize=2, overflow="close")
    received: list[int] = []

    async def consume() -> None:
        async for event in subscription:
            received.append(event.data["i"])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            bus.publish(HostEvent(type="message.ack", session_id="s", data={"i": 0}))
            await anyio.sleep(0.05)  # the consumer takes it and waits again
            for index in range(1, 10):  # faster than it can take them
                bus.publish(HostEvent(type="message.ack", session_id="s", data={"i": index}))
    assert received == [0]
    assert subscription.overflowed and bus.subscription_count == 0


async def test_filtered_out_events_do_not_fill_a_subscription() -> None:
    bus = EventBus()
    subscription = bus.subscribe(maxsize=1, types=["session.qr"], overflow="close")
    for _ in range(5):
        bus.publish(HostEvent(type="session.status", session_id="s"))
    assert not subscription.overflowed
    bus.publish(HostEvent(type="session.qr", session_id="s"))
    assert (await subscription.get()).type == "session.qr"


def test_subscribe_refuses_a_bad_policy_or_size() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="overflow"):
        bus.subscribe(overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        bus.subscribe(maxsize=0)
    assert bus.subscription_count == 0


class _Color(enum.StrEnum):
    RED = "red"


@dataclasses.dataclass
class _Inner:
    when: datetime
    chat_id: str


def test_the_json_view_turns_rich_data_into_plain_json() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))
    message = EngineMessage(
        message_id="M1",
        chat_id="1@c.us",
        sender="1@c.us",
        from_me=True,
        type=MessageType.TEXT,
        timestamp=at,
        raw={"nested": {"bytes": b"\x00\x01", "set": {1}}},
    )
    event = HostEvent(
        type="message.sent",
        session_id="s1",
        data={
            "message": message,
            "color": _Color.RED,
            "inner": [_Inner(when=datetime(2026, 1, 1), chat_id="2@g.us")],
            "ratio": math.nan,
            "day": date(2026, 1, 1),
            "plain": {"a": [1, 2.5, None, True]},
        },
        at=at,
    )
    view = event.to_json()
    json.dumps(view, allow_nan=False)  # plain JSON only: this raises otherwise
    assert view["event"] == "message.sent" and view["sessionId"] == "s1"
    assert view["timestamp"] == "2026-01-02T01:04:05.600Z"
    data = view["data"]
    assert data["message"]["messageId"] == "M1" and data["message"]["fromMe"] is True
    assert data["message"]["type"] == MessageType.TEXT.value
    assert data["message"]["timestamp"] == "2026-01-02T01:04:05.600000Z"
    assert data["message"]["raw"] == {"nested": {"bytes": "AAE=", "set": [1]}}
    assert data["color"] == "red" and type(data["color"]) is str
    assert data["inner"] == [{"when": "2026-01-01T00:00:00Z", "chatId": "2@g.us"}]
    assert data["ratio"] is None
    assert data["day"] == "2026-01-01"
    assert data["plain"] == {"a": [1, 2.5, None, True]}
    # The event itself is untouched.
    assert event.data["message"] is message


def test_the_json_view_survives_a_cycle() -> None:
    loop: list[Any] = []
    loop.append(loop)
    rendered = json_safe({"loop": loop})
    json.dumps(rendered)


def test_listeners_are_called_inline_filtered_and_can_stop() -> None:
    bus = EventBus()
    seen: list[str] = []
    everything: list[str] = []

    def broken(event: HostEvent) -> None:
        raise ValueError("a consumer's bug")

    bus.listen(broken)
    stop = bus.listen(lambda event: seen.append(event.type), types=("message.sent",))
    bus.listen(lambda event: everything.append(event.type))
    bus.publish(HostEvent(type="message.sent", session_id="s"))
    bus.publish(HostEvent(type="session.qr", session_id="s"))
    assert seen == ["message.sent"]  # at once: no await happened
    assert everything == ["message.sent", "session.qr"]  # the broken one stopped nothing
    stop()
    bus.publish(HostEvent(type="message.sent", session_id="s"))
    assert seen == ["message.sent"]
