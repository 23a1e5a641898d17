"""The message store on both backends: sends, acks, echoes, idempotency, history paging."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import anyio
import pytest
from sqlmodel import Session, col, func, select

from enginehost.core.engine import AckStatus, EngineMessage, MessageType
from enginehost.core.errors import ServiceError
from enginehost.core.messages import (
    HISTORY_LIMIT_MAX,
    STALE_PENDING_REASON,
    AckedMessage,
    EarlyAck,
    InvalidCursorError,
    MessageIdConflictError,
    MessageNotFoundError,
    MessageRecord,
    MessageStore,
    MessageValidationError,
    advance,
)
from enginehost.core.messages import store as store_module

S1 = str(uuid4())
S2 = str(uuid4())
CHAT = "15550001111@c.us"
OTHER_CHAT = "15550002222@c.us"
T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(data_db: Any) -> MessageStore:
    return MessageStore(data_db)


def engine_message(
    message_id: str,
    *,
    chat_id: str = CHAT,
    from_me: bool = False,
    at: datetime | None = None,
    body: str | None = "hello",
    **extra: Any,
) -> EngineMessage:
    return EngineMessage(
        message_id=message_id,
        chat_id=chat_id,
        sender="me" if from_me else chat_id,
        from_me=from_me,
        body=body,
        timestamp=at or datetime.now(UTC),
        **extra,
    )


def count_messages(database: Any, session_id: str | None = None) -> int:
    def work(session: Session) -> int:
        statement = select(func.count()).select_from(MessageRecord)
        if session_id is not None:
            statement = statement.where(col(MessageRecord.session_id) == session_id)
        return session.exec(statement).one()

    return int(database.run_sync(work))


def early_acks(database: Any) -> list[tuple[str, str, str]]:
    def work(session: Session) -> list[tuple[str, str, str]]:
        rows = session.exec(select(EarlyAck)).all()
        return sorted((row.session_id, row.message_id, row.status) for row in rows)

    return list(database.run_sync(work))


def assert_aware_utc(value: datetime) -> None:
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def assert_times(record: MessageRecord) -> None:
    for value in (record.timestamp, record.created_at, record.updated_at):
        assert_aware_utc(value)
    assert record.updated_at >= record.created_at


async def send(store: MessageStore, session_id: str = S1, **kwargs: Any) -> MessageRecord:
    record, created = await store.create_pending(
        session_id, chat_id=kwargs.pop("chat_id", CHAT), type="text", body="hi", **kwargs
    )
    assert created
    return record


# ============================================================================== status


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        ("pending", "sent", "sent"),
        ("pending", "read", "read"),
        ("sent", "delivered", "delivered"),
        ("delivered", "read", "read"),
        ("read", "delivered", "read"),
        ("read", "sent", "read"),
        ("delivered", "sent", "delivered"),
        ("sent", "pending", "sent"),
        ("pending", "failed", "failed"),
        ("sent", "failed", "failed"),
        ("delivered", "failed", "delivered"),
        ("read", "failed", "read"),
        ("failed", "sent", "failed"),
        ("failed", "read", "failed"),
        ("failed", "pending", "failed"),
    ],
)
def test_status_only_moves_forward(current: str, new: str, expected: str) -> None:
    assert advance(current, new) == expected


# =============================================================================== sends


@pytest.mark.anyio
async def test_pending_then_sent_then_acks_forward_only(store: MessageStore) -> None:
    record, created = await store.create_pending(
        S1, chat_id=CHAT, type=MessageType.TEXT, body="hi", quoted_message_id="Q1"
    )
    assert created
    assert (record.status, record.message_id, record.direction) == ("pending", None, "outgoing")
    assert record.from_me and not record.has_media
    assert (record.type, record.body, record.quoted_message_id) == ("text", "hi", "Q1")
    assert_times(record)

    sent_at = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
    sent = await store.mark_sent(record.id, message_id="ENG-1", timestamp=sent_at)
    assert (sent.id, sent.status, sent.message_id, sent.timestamp) == (
        record.id,
        "sent",
        "ENG-1",
        sent_at,
    )
    assert_times(sent)

    delivered = await store.apply_ack(S1, "ENG-1", AckStatus.DELIVERED)
    assert delivered is not None and delivered.status == "delivered"
    read = await store.apply_ack(S1, "ENG-1", "read")
    assert read is not None and read.status == "read"
    for later in (AckStatus.DELIVERED, AckStatus.SENT, AckStatus.PENDING, AckStatus.FAILED):
        again = await store.apply_ack(S1, "ENG-1", later)
        assert again is not None and again.status == "read"
    stored = await store.get(S1, record.id)
    assert (stored.status, stored.message_id) == ("read", "ENG-1")
    assert_times(stored)
    assert (await store.by_message_id(S1, "ENG-1")).id == record.id


@pytest.mark.anyio
async def test_failed_is_final(store: MessageStore) -> None:
    record = await send(store)
    failed = await store.mark_failed(record.id, "engine not connected")
    assert (failed.status, failed.failure_reason) == ("failed", "engine not connected")
    assert (await store.mark_failed(record.id, "again")).failure_reason == "engine not connected"
    # The send did reach the server after all: it gets its id (no duplicate echo row
    # later) but stays failed, and acks do not revive it.
    late = await store.mark_sent(record.id, message_id="ENG-F", timestamp=T0)
    assert (late.status, late.message_id) == ("failed", "ENG-F")
    acked = await store.apply_ack(S1, "ENG-F", AckStatus.READ)
    assert acked is not None and acked.status == "failed"
    echo, created = await store.store_own(S1, engine_message("ENG-F", from_me=True))
    assert not created and echo.id == record.id


@pytest.mark.anyio
async def test_failure_only_from_pending_or_sent(store: MessageStore) -> None:
    sent = await send(store)
    await store.mark_sent(sent.id, message_id="A", timestamp=T0)
    # mark_failed is for sends that never left: a sent row is returned unchanged ...
    assert (await store.mark_failed(sent.id, "late timeout")).status == "sent"
    # ... but the engine may report a failure of a sent message.
    failed = await store.apply_ack(S1, "A", AckStatus.FAILED)
    assert failed is not None and failed.status == "failed"

    delivered = await send(store)
    await store.mark_sent(delivered.id, message_id="B", timestamp=T0)
    await store.apply_ack(S1, "B", AckStatus.DELIVERED)
    after = await store.apply_ack(S1, "B", AckStatus.FAILED)
    assert after is not None and after.status == "delivered"


@pytest.mark.anyio
async def test_mark_sent_again(store: MessageStore) -> None:
    record = await send(store)
    first = await store.mark_sent(record.id, message_id="ENG-1", timestamp=T0)
    again = await store.mark_sent(record.id, message_id="ENG-1", timestamp=T0 + timedelta(1))
    assert (again.id, again.message_id, again.timestamp) == (first.id, "ENG-1", T0)
    with pytest.raises(MessageIdConflictError) as caught:
        await store.mark_sent(record.id, message_id="ENG-2", timestamp=T0)
    assert (caught.value.status_code, caught.value.code) == (409, "message_id_conflict")


@pytest.mark.anyio
async def test_not_found(store: MessageStore) -> None:
    record = await send(store)
    attempts = [
        store.get(S2, record.id),
        store.get(S1, str(uuid4())),
        store.get(S1, "x" * 500),
        store.get(S1, "nul\x00"),
        store.by_message_id(S1, "nope"),
        store.by_message_id(S1, "nul\x00"),
        store.mark_sent(str(uuid4()), message_id="X", timestamp=T0),
        store.mark_failed(str(uuid4()), "r"),
    ]
    for attempt in attempts:
        with pytest.raises(MessageNotFoundError) as caught:
            await attempt
        assert isinstance(caught.value, ServiceError)
        assert (caught.value.status_code, caught.value.code) == (404, "message_not_found")
    assert (await store.get(S1, record.id)).id == record.id


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("chat_id", {"chat_id": ""}),
        ("chat_id", {"chat_id": "c" * 129}),
        ("chat_id", {"chat_id": "a\x00b"}),
        ("session_id", {"session_id": "s" * 37}),
        ("type", {"type": "hologram"}),
        ("body", {"body": "nul\x00"}),
        ("idempotency_key", {"idempotency_key": "k" * 201}),
        ("idempotency_key", {"idempotency_key": ""}),
        ("quoted_message_id", {"quoted_message_id": "q" * 129}),
    ],
)
async def test_create_pending_validates(
    store: MessageStore, data_db: Any, field: str, kwargs: dict[str, Any]
) -> None:
    values: dict[str, Any] = {"session_id": S1, "chat_id": CHAT, "type": "text", "body": "b"}
    values.update(kwargs)
    session_id = values.pop("session_id")
    with pytest.raises(MessageValidationError) as caught:
        await store.create_pending(session_id, **values)
    assert (caught.value.status_code, caught.value.code, caught.value.field) == (
        422,
        "validation_failed",
        field,
    )
    assert caught.value.extra["errors"][0]["path"] == field
    assert count_messages(data_db) == 0


@pytest.mark.anyio
async def test_fail_stale_pending(store: MessageStore, data_db: Any) -> None:
    pending = [await send(store), await send(store), await send(store, S2)]
    done = await send(store)
    await store.mark_sent(done.id, message_id="DONE", timestamp=T0)
    await store.store_inbound(S1, engine_message("IN"))

    assert await store.fail_stale_pending() == 3
    for record in pending:
        stored = await store.get(record.session_id, record.id)
        assert (stored.status, stored.failure_reason) == ("failed", STALE_PENDING_REASON)
        assert_times(stored)
    assert (await store.get(S1, done.id)).status == "sent"
    assert (await store.by_message_id(S1, "IN")).status == "delivered"
    assert (await store.history(S1, status="pending"))[1] == 0
    assert await store.fail_stale_pending("again") == 0


# ========================================================================= idempotency


@pytest.mark.anyio
async def test_idempotency_key_returns_the_first_row(store: MessageStore, data_db: Any) -> None:
    first, created = await store.create_pending(
        S1, chat_id=CHAT, type="text", body="one", idempotency_key="key-1"
    )
    assert created
    again, created = await store.create_pending(
        S1, chat_id=OTHER_CHAT, type="image", body="two", idempotency_key="key-1"
    )
    assert not created
    assert (again.id, again.body, again.chat_id, again.idempotency_key) == (
        first.id,
        "one",
        CHAT,
        "key-1",
    )
    # Once sent, the key still answers with the (now sent) row.
    await store.mark_sent(first.id, message_id="E1", timestamp=T0)
    again, created = await store.create_pending(
        S1, chat_id=CHAT, type="text", body="one", idempotency_key="key-1"
    )
    assert not created and (again.id, again.status) == (first.id, "sent")
    # Keys are per session; no key never deduplicates.
    other, created = await store.create_pending(
        S2, chat_id=CHAT, type="text", body="one", idempotency_key="key-1"
    )
    assert created and other.id != first.id
    await send(store)
    await send(store)
    assert count_messages(data_db, S1) == 3
    assert count_messages(data_db, S2) == 1


@pytest.mark.anyio
async def test_concurrent_creates_with_one_key_make_one_row(
    store: MessageStore, data_db: Any
) -> None:
    results: list[tuple[MessageRecord, bool]] = []

    async def attempt(number: int) -> None:
        results.append(
            await store.create_pending(
                S1, chat_id=CHAT, type="text", body=f"try {number}", idempotency_key="race"
            )
        )

    async with anyio.create_task_group() as group:
        for number in range(10):
            group.start_soon(attempt, number)

    assert len(results) == 10
    assert sum(created for _, created in results) == 1
    assert len({record.id for record, _ in results}) == 1
    assert count_messages(data_db) == 1


# ====================================================================== engine events


@pytest.mark.anyio
async def test_refired_events_are_stored_once(store: MessageStore, data_db: Any) -> None:
    at = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    message = engine_message(
        "IN-1",
        at=at,
        has_media=True,
        type=MessageType.IMAGE,
        quoted_message_id="Q",
        raw={"pushName": "Ada", "nul": "a\x00b"},
    )
    first, created = await store.store_inbound(S1, message)
    assert created
    assert (first.direction, first.from_me, first.status, first.type) == (
        "incoming",
        False,
        "delivered",
        "image",
    )
    assert (first.timestamp, first.has_media, first.quoted_message_id) == (at, True, "Q")
    assert first.raw == {"pushName": "Ada", "nul": "a\ufffdb"}
    assert_times(first)
    again, created = await store.store_inbound(S1, message)
    assert not created and again.id == first.id

    own = engine_message("OWN-1", from_me=True)
    mine, created = await store.store_own(S1, own)
    assert created
    assert (mine.direction, mine.from_me, mine.status) == ("outgoing", True, "sent")
    again, created = await store.store_own(S1, own)
    assert not created and again.id == mine.id
    # The same engine id in another session is another message.
    _, created = await store.store_inbound(S2, message)
    assert created
    assert count_messages(data_db, S1) == 2
    assert count_messages(data_db, S2) == 1


@pytest.mark.anyio
async def test_concurrently_refired_events_are_stored_once(
    store: MessageStore, data_db: Any
) -> None:
    results: list[tuple[MessageRecord, bool]] = []

    async def fire(own: bool) -> None:
        if own:
            results.append(await store.store_own(S1, engine_message("OWN", from_me=True)))
        else:
            results.append(await store.store_inbound(S1, engine_message("IN")))

    async with anyio.create_task_group() as group:
        for number in range(20):
            group.start_soon(fire, number % 2 == 0)

    for message_id in ("IN", "OWN"):
        mine = [(r, c) for r, c in results if r.message_id == message_id]
        assert len(mine) == 10
        assert sum(created for _, created in mine) == 1
        assert len({record.id for record, _ in mine}) == 1
    assert count_messages(data_db) == 2


@pytest.mark.anyio
async def test_engine_values_are_checked_and_cleaned(store: MessageStore, data_db: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.store_inbound(S1, engine_message("N", at=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="message_id"):
        await store.store_inbound(S1, engine_message("m" * 129))
    with pytest.raises(ValueError, match="message_id"):
        await store.store_inbound(S1, engine_message(""))
    with pytest.raises(ValueError, match="chat_id"):
        await store.store_inbound(S1, engine_message("M", chat_id="c" * 129))
    assert count_messages(data_db) == 0

    big = {"blob": "x" * (store_module.RAW_MAX_BYTES + 1)}
    record, _ = await store.store_inbound(
        S1, engine_message("BIG", body="a\x00b", raw=big, type=MessageType.DOCUMENT)
    )
    assert record.body == "a\ufffdb"
    assert record.raw is not None and record.raw["truncated"] is True
    plain, _ = await store.store_inbound(S1, engine_message("PLAIN", body=None))
    assert plain.raw is None and plain.body is None
    odd, _ = await store.store_inbound(
        S1, engine_message("ODD", raw={"when": T0, "nan": float("nan"), 1: [1, 2]})
    )
    assert odd.raw == {"when": str(T0), "nan": "nan", "1": [1, 2]}


@pytest.mark.anyio
async def test_batch_inbound_skips_duplicates(store: MessageStore, data_db: Any) -> None:
    await store.store_inbound(S1, engine_message("M1"))
    batch = [engine_message(f"M{n}", at=T0 + timedelta(seconds=n)) for n in (1, 2, 2, 3)]
    assert await store.store_inbound_batch(S1, batch) == 2
    assert count_messages(data_db, S1) == 3
    assert await store.store_inbound_batch(S1, batch) == 0
    assert await store.store_inbound_batch(S1, []) == 0
    stored = await store.by_message_id(S1, "M3")
    assert (stored.timestamp, stored.direction, stored.status) == (
        T0 + timedelta(seconds=3),
        "incoming",
        "delivered",
    )
    assert_times(stored)
    # A re-fired single event after the batch is still a duplicate.
    _, created = await store.store_inbound(S1, engine_message("M2"))
    assert not created
    assert count_messages(data_db, S1) == 3


@pytest.mark.anyio
async def test_large_batch(store: MessageStore, data_db: Any) -> None:
    batch = [engine_message(f"L{n}", at=T0 + timedelta(milliseconds=n)) for n in range(1200)]
    assert await store.store_inbound_batch(S1, batch) == 1200
    assert await store.store_inbound_batch(S1, [*batch[1100:], engine_message("NEW")]) == 1
    assert count_messages(data_db, S1) == 1201


@pytest.mark.anyio
async def test_batch_own_messages_take_early_acks(store: MessageStore, data_db: Any) -> None:
    assert await store.apply_ack(S1, "OWN-B", AckStatus.READ) is None
    assert await store.apply_ack(S1, "IN-B", AckStatus.READ) is None
    batch = [engine_message("OWN-B", from_me=True), engine_message("IN-B")]
    assert await store.store_inbound_batch(S1, batch) == 2
    own = await store.by_message_id(S1, "OWN-B")
    assert (own.direction, own.from_me, own.status) == ("outgoing", True, "read")
    # Acks are about own messages: an incoming one keeps its status and the ack waits.
    assert (await store.by_message_id(S1, "IN-B")).status == "delivered"
    assert early_acks(data_db) == [(S1, "IN-B", "read")]


# ====================================================================== the echo race


@pytest.mark.anyio
async def test_echo_before_mark_sent_is_merged_into_the_send(
    store: MessageStore, data_db: Any
) -> None:
    pending, _ = await store.create_pending(
        S1, chat_id=CHAT, type="text", body="hi", idempotency_key="k1"
    )
    echo, created = await store.store_own(
        S1, engine_message("ENG-E", from_me=True, body="hi", raw={"engine": "extra"})
    )
    assert created and echo.id != pending.id
    delivered = await store.apply_ack(S1, "ENG-E", AckStatus.DELIVERED)
    assert delivered is not None and delivered.id == echo.id
    assert count_messages(data_db) == 2

    merged = await store.mark_sent(pending.id, message_id="ENG-E", timestamp=T0)
    assert (merged.id, merged.message_id, merged.status, merged.idempotency_key) == (
        pending.id,
        "ENG-E",
        "delivered",  # the better of the two: the echo had been delivered
        "k1",
    )
    assert merged.raw == {"engine": "extra"}
    assert_times(merged)
    assert count_messages(data_db) == 1
    assert (await store.by_message_id(S1, "ENG-E")).id == pending.id
    with pytest.raises(MessageNotFoundError):
        await store.get(S1, echo.id)
    # Re-fired echo, retried request: both land on the one row.
    again, created = await store.store_own(S1, engine_message("ENG-E", from_me=True))
    assert not created and again.id == pending.id
    retried, created = await store.create_pending(
        S1, chat_id=CHAT, type="text", body="hi", idempotency_key="k1"
    )
    assert not created and retried.id == pending.id
    assert early_acks(data_db) == []


@pytest.mark.anyio
async def test_echo_after_mark_sent_is_not_a_second_row(store: MessageStore, data_db: Any) -> None:
    pending = await send(store)
    await store.mark_sent(pending.id, message_id="ENG-A", timestamp=T0)
    echo, created = await store.store_own(S1, engine_message("ENG-A", from_me=True))
    assert not created
    assert (echo.id, echo.status, echo.message_id) == (pending.id, "sent", "ENG-A")
    read = await store.apply_ack(S1, "ENG-A", AckStatus.READ)
    assert read is not None and read.id == pending.id and read.status == "read"
    assert count_messages(data_db) == 1


@pytest.mark.anyio
async def test_echo_race_run_concurrently(store: MessageStore, data_db: Any) -> None:
    rounds = 15
    pendings = [await send(store, idempotency_key=f"k{n}") for n in range(rounds)]

    async def sent(n: int) -> None:
        await store.mark_sent(pendings[n].id, message_id=f"R{n}", timestamp=T0)

    async def echoed(n: int) -> None:
        await store.store_own(S1, engine_message(f"R{n}", from_me=True))

    async def acked(n: int) -> None:
        await store.apply_ack(S1, f"R{n}", AckStatus.DELIVERED)

    async with anyio.create_task_group() as group:
        for n in range(rounds):
            # Alternate the start order so both orders of the race happen.
            tasks = [sent, echoed, acked] if n % 2 else [acked, echoed, sent]
            for task in tasks:
                group.start_soon(task, n)

    assert count_messages(data_db) == rounds
    for n, pending in enumerate(pendings):
        stored = await store.by_message_id(S1, f"R{n}")
        assert (stored.id, stored.idempotency_key, stored.status) == (
            pending.id,
            f"k{n}",
            "delivered",
        )
    assert early_acks(data_db) == []


# ========================================================================== early acks


@pytest.mark.anyio
async def test_an_ack_before_mark_sent_is_applied_when_the_id_is_stored(
    store: MessageStore, data_db: Any
) -> None:
    pending = await send(store)
    assert await store.apply_ack(S1, "ENG-X", AckStatus.DELIVERED) is None
    assert await store.apply_ack(S1, "ENG-X", AckStatus.SENT) is None  # keeps the furthest
    assert await store.apply_ack(S1, "ENG-X", AckStatus.PENDING) is None
    assert early_acks(data_db) == [(S1, "ENG-X", "delivered")]
    assert await store.apply_ack(S1, "ENG-X", AckStatus.READ) is None
    assert early_acks(data_db) == [(S1, "ENG-X", "read")]
    assert (await store.get(S1, pending.id)).status == "pending"

    sent = await store.mark_sent(pending.id, message_id="ENG-X", timestamp=T0)
    assert (sent.id, sent.status) == (pending.id, "read")
    assert early_acks(data_db) == []


@pytest.mark.anyio
async def test_early_acks_per_session_and_for_own_messages(
    store: MessageStore, data_db: Any
) -> None:
    await store.apply_ack(S1, "SHARED", AckStatus.READ)
    await store.apply_ack(S2, "SHARED", AckStatus.DELIVERED)
    await store.apply_ack(S1, "FAILS", AckStatus.FAILED)
    own, _ = await store.store_own(S2, engine_message("SHARED", from_me=True))
    assert own.status == "delivered"
    assert early_acks(data_db) == [(S1, "FAILS", "failed"), (S1, "SHARED", "read")]

    failing = await send(store)
    failed = await store.mark_sent(failing.id, message_id="FAILS", timestamp=T0)
    assert failed.status == "failed"
    assert early_acks(data_db) == [(S1, "SHARED", "read")]
    with pytest.raises(MessageValidationError):
        await store.apply_ack(S1, "SHARED", "bogus")


@pytest.mark.anyio
async def test_acks_racing_mark_sent(store: MessageStore, data_db: Any) -> None:
    rounds = 15
    pendings = [await send(store) for _ in range(rounds)]

    async def sent(n: int) -> None:
        await store.mark_sent(pendings[n].id, message_id=f"A{n}", timestamp=T0)

    async def acked(n: int) -> None:
        await store.apply_ack(S1, f"A{n}", AckStatus.READ)

    async with anyio.create_task_group() as group:
        for n in range(rounds):
            first, second = (sent, acked) if n % 2 else (acked, sent)
            group.start_soon(first, n)
            group.start_soon(second, n)

    for pending in pendings:
        assert (await store.get(S1, pending.id)).status == "read"
    assert early_acks(data_db) == []


@pytest.mark.anyio
async def test_prune_early_acks(store: MessageStore, data_db: Any) -> None:
    await store.apply_ack(S1, "GONE", AckStatus.READ)
    assert await store.prune_early_acks(timedelta(hours=1)) == 0
    assert await store.prune_early_acks(timedelta(seconds=-1)) == 1
    assert early_acks(data_db) == []


# ============================================================================= history


async def seed_history(store: MessageStore) -> list[MessageRecord]:
    """Six messages of S1 a minute apart (oldest first), and one of S2."""
    records: list[MessageRecord] = []
    for n in range(6):
        chat = CHAT if n % 2 == 0 else OTHER_CHAT
        at = T0 + timedelta(minutes=n)
        if n in (1, 4):
            record = await send(store, chat_id=chat)
            record = await store.mark_sent(record.id, message_id=f"H{n}", timestamp=at)
        else:
            record, _ = await store.store_inbound(S1, engine_message(f"H{n}", chat_id=chat, at=at))
        records.append(record)
    await store.store_inbound(S2, engine_message("OTHER", at=T0))
    return records


@pytest.mark.anyio
async def test_history_filters_total_newest_first(store: MessageStore) -> None:
    records = await seed_history(store)
    newest_first = [r.id for r in reversed(records)]

    rows, total, cursor = await store.history(S1)
    assert ([r.id for r in rows], total, cursor) == (newest_first, 6, None)
    for row in rows:
        assert_times(row)

    rows, total, _ = await store.history(S1, chat_id=CHAT)
    assert ([r.message_id for r in rows], total) == (["H4", "H2", "H0"], 3)
    rows, total, _ = await store.history(S1, direction="outgoing")
    assert ([r.message_id for r in rows], total) == (["H4", "H1"], 2)
    rows, total, _ = await store.history(S1, from_me=False)
    assert ([r.message_id for r in rows], total) == (["H5", "H3", "H2", "H0"], 4)
    rows, total, _ = await store.history(S1, status=AckStatus.SENT)
    assert total == 2
    rows, total, _ = await store.history(
        S1, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=4)
    )
    assert ([r.message_id for r in rows], total) == (["H3", "H2", "H1"], 3)
    rows, total, _ = await store.history(S1, chat_id=OTHER_CHAT, direction="incoming")
    assert ([r.message_id for r in rows], total) == (["H5", "H3"], 2)

    rows, total, cursor = await store.history(S1, limit=2, offset=1)
    assert ([r.id for r in rows], total) == (newest_first[1:3], 6)
    assert cursor is not None
    rows, total, _ = await store.history(S1, offset=10)
    assert (rows, total) == ([], 6)

    rows, total, _ = await store.history(S2)
    assert ([r.message_id for r in rows], total) == (["OTHER"], 1)
    assert await store.history(str(uuid4())) == ([], 0, None)
    assert await store.history("nul\x00") == ([], 0, None)
    assert await store.history(S1, chat_id="nul\x00") == ([], 0, None)


@pytest.mark.anyio
async def test_history_cursor_pages_are_stable_under_inserts(store: MessageStore) -> None:
    # Many rows share a timestamp, so the id breaks ties across page boundaries too.
    batch = [
        engine_message(f"P{n}", at=T0 + timedelta(seconds=n // 4), chat_id=CHAT) for n in range(25)
    ]
    assert await store.store_inbound_batch(S1, batch) == 25
    expected, total, _ = await store.history(S1, limit=HISTORY_LIMIT_MAX)
    assert total == 25

    seen: list[str] = []
    cursor: str | None = None
    page_number = 0
    while True:
        rows, total, cursor = await store.history(S1, chat_id=CHAT, limit=7, after=cursor)
        seen.extend(r.id for r in rows)
        page_number += 1
        # New messages arrive between pages (newer, and some at the very same time as
        # the newest row): later pages neither repeat nor skip a row.
        await store.store_inbound(
            S1, engine_message(f"NEW{page_number}", at=T0 + timedelta(hours=page_number))
        )
        await store.store_inbound(S1, engine_message(f"TIE{page_number}", at=T0 + timedelta(0, 6)))
        if cursor is None:
            break
    assert page_number == 4
    assert seen == [r.id for r in expected]
    assert total == 25 + 2 * (page_number - 1)


@pytest.mark.anyio
async def test_history_cursor_with_filters_and_last_page(store: MessageStore) -> None:
    records = await seed_history(store)
    rows, _, cursor = await store.history(S1, chat_id=CHAT, limit=2)
    assert [r.message_id for r in rows] == ["H4", "H2"]
    rows, _, cursor = await store.history(S1, chat_id=CHAT, limit=2, after=cursor)
    assert ([r.message_id for r in rows], cursor) == (["H0"], None)
    # Exactly a full last page: no cursor pointing at an empty page.
    rows, _, cursor = await store.history(S1, limit=6)
    assert (len(rows), cursor) == (len(records), None)


def _b64(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        "x" * 600,
        _b64(b"\xff\xfe"),
        _b64(b"not json"),
        _b64(b"[1, 2]"),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00"}).encode()),
        _b64(json.dumps({"t": "yesterday", "i": "x"}).encode()),
        _b64(json.dumps({"t": "2026-01-01T00:00:00", "i": "x"}).encode()),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "i": 5}).encode()),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "i": "x" * 37}).encode()),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "i": "a\x00"}).encode()),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "i": "x", "z": 1}).encode()),
    ],
)
async def test_malformed_cursor_is_422(store: MessageStore, cursor: str) -> None:
    with pytest.raises(InvalidCursorError) as caught:
        await store.history(S1, after=cursor)
    assert isinstance(caught.value, ServiceError)
    assert (caught.value.status_code, caught.value.code) == (422, "invalid_cursor")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("limit", {"limit": 0}),
        ("limit", {"limit": HISTORY_LIMIT_MAX + 1}),
        ("limit", {"limit": True}),
        ("offset", {"offset": -1}),
        ("direction", {"direction": "sideways"}),
        ("status", {"status": "lost"}),
        ("since", {"since": datetime(2026, 1, 1)}),
        ("until", {"until": "yesterday"}),
        ("from_me", {"from_me": "yes"}),
    ],
)
async def test_history_validates(store: MessageStore, field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(MessageValidationError) as caught:
        await store.history(S1, **kwargs)
    assert (caught.value.status_code, caught.value.code, caught.value.field) == (
        422,
        "validation_failed",
        field,
    )


@pytest.mark.anyio
async def test_history_limits_are_inclusive(store: MessageStore) -> None:
    await seed_history(store)
    assert len((await store.history(S1, limit=1))[0]) == 1
    assert len((await store.history(S1, limit=HISTORY_LIMIT_MAX))[0]) == 6


# ======================================================================= group commit


@pytest.mark.anyio
async def test_concurrent_writes_share_transactions(store: MessageStore, data_db: Any) -> None:
    """A burst of sends and their acks commits in far fewer transactions than writes,
    and every write still lands (the figures behind the send benchmark)."""
    pendings: list[MessageRecord] = []

    async def one(n: int) -> None:
        record, _ = await store.create_pending(S1, chat_id=CHAT, type="text", body=f"m{n}")
        pendings.append(await store.mark_sent(record.id, message_id=f"G{n}", timestamp=T0))
        await store.apply_ack(S1, f"G{n}", AckStatus.READ)

    async with anyio.create_task_group() as group:
        for n in range(60):
            group.start_soon(one, n)
    assert store.writes.operations == 180
    assert store.writes.batches <= 180 / 4, store.writes.batches
    assert count_messages(data_db, S1) == 60
    for n in range(60):
        assert (await store.by_message_id(S1, f"G{n}")).status == "read"


@pytest.mark.anyio
async def test_stores_of_one_database_share_the_write_queue_and_early_acks(
    data_db: Any,
) -> None:
    first, second = MessageStore(data_db), MessageStore(data_db)
    assert first.writes is second.writes
    pending = await send(first)
    assert await second.apply_ack(S1, "SHARED-ID", AckStatus.READ) is None
    sent = await first.mark_sent(pending.id, message_id="SHARED-ID", timestamp=T0)
    assert sent.status == "read"  # the ack kept through the other store was applied
    assert early_acks(data_db) == []


@pytest.mark.anyio
async def test_early_acks_left_by_an_earlier_run_are_applied(
    database_url: str, tmp_path: Any
) -> None:
    from enginehost.core.db.migrations import upgrade
    from tests.conftest import open_database

    earlier = open_database(database_url, "data", tmp_path)
    upgrade(earlier)
    await MessageStore(earlier).apply_ack(S1, "FROM-BEFORE", AckStatus.DELIVERED)
    earlier.dispose()
    later = open_database(database_url, "data", tmp_path)  # a new process, in effect
    try:
        store = MessageStore(later)
        own, _ = await store.store_own(S1, engine_message("FROM-BEFORE", from_me=True))
        assert own.status == "delivered"
        assert early_acks(later) == []
    finally:
        later.dispose()


@pytest.mark.anyio
async def test_stored_ids_look_for_early_acks_only_when_one_may_exist(
    store: MessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = store._sql
    real = statements.take_early_ack
    looked: list[dict[str, Any]] = []

    class Counting:
        def first(self, connection: Any, parameters: dict[str, Any]) -> Any:
            looked.append(parameters)
            return real.first(connection, parameters)

    monkeypatch.setattr(statements, "take_early_ack", Counting())
    for n in range(5):
        pending = await send(store)
        await store.mark_sent(pending.id, message_id=f"PLAIN{n}", timestamp=T0)
        await store.store_own(S1, engine_message(f"PLAIN{n}", from_me=True))
    assert looked == []  # no early ack kept: no DELETE per stored id
    await store.apply_ack(S1, "EARLY", AckStatus.READ)
    pending = await send(store)
    assert (await store.mark_sent(pending.id, message_id="EARLY", timestamp=T0)).status == "read"
    assert looked == [{"session_id": S1, "message_id": "EARLY"}]


@pytest.mark.anyio
async def test_acks_that_cannot_move_a_recent_message_are_settled_without_a_write(
    store: MessageStore, data_db: Any
) -> None:
    pending = await send(store)
    sent = await store.mark_sent(pending.id, message_id="KNOWN", timestamp=T0)
    before = store.writes.operations
    # Engines ack "sent" right after the send stored it: nothing to write.
    settled = await store.apply_ack(S1, "KNOWN", AckStatus.SENT)
    assert settled is not None and (settled.id, settled.status) == (sent.id, "sent")
    assert store.writes.operations == before
    # An ack that moves it forward goes to the database, and is remembered.
    read = await store.apply_ack(S1, "KNOWN", AckStatus.READ)
    assert read is not None and read.status == "read"
    assert store.writes.operations == before + 1
    late = await store.apply_ack(S1, "KNOWN", AckStatus.DELIVERED)
    assert late is not None and (late.id, late.status) == (sent.id, "read")
    assert store.writes.operations == before + 1
    assert (await store.get(S1, sent.id)).status == "read"
    # A store of the same database shares what is known; unknown ids still ask.
    other = MessageStore(data_db)
    assert await other.apply_ack(S1, "KNOWN", AckStatus.SENT) == AckedMessage(sent.id, "read")
    assert await other.apply_ack(S1, "NEVER-SEEN", AckStatus.SENT) is None
    assert store.writes.operations == before + 2
