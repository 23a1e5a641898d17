"""Group commit of inbound messages: batched under load, exactly once, errors surfaced."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from enginehost import EngineMessage
from enginehost.core.messages.inbound import InboundWriter
from enginehost.core.messages.store import MessageStore

pytestmark = pytest.mark.anyio


def _message(index: int, chat: str = "15551234567@c.us") -> EngineMessage:
    return EngineMessage(
        message_id=f"IN{index:06d}", chat_id=chat, sender=chat, from_me=False, body=f"m{index}"
    )


async def test_concurrent_writes_share_transactions_and_are_stored_once(data_db: Any) -> None:
    store = MessageStore(data_db)
    writer = InboundWriter(store)
    created: list[bool] = []

    async def deliver(index: int) -> None:
        created.append(await writer.write("s1", _message(index % 150)))  # 50 repeats

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        async with anyio.create_task_group() as senders:
            for index in range(200):
                senders.start_soon(deliver, index)
        tg.cancel_scope.cancel()
    assert created.count(True) == 150
    assert writer.written == 150
    assert writer.batches < 200 / 4  # grouped, not a transaction per message
    _, total, _ = await store.history("s1", limit=1)
    assert total == 150


async def test_a_failed_batch_fails_every_waiting_writer(data_db: Any) -> None:
    store = MessageStore(data_db)
    writer = InboundWriter(store)
    bad = EngineMessage(message_id="", chat_id="1@c.us", sender="1@c.us", from_me=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        with pytest.raises(ValueError, match="message_id must be 1 to 128 characters"):
            await writer.write("s1", bad)
        assert await writer.write("s1", _message(1)) is True  # the writer keeps going
        tg.cancel_scope.cancel()
