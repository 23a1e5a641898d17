"""The durable outbox and its dispatcher, in process, against a real receiver on loopback.

Each test wires what the daemon wires (stores with an outbox, a dispatcher, a guarded
client allowing loopback) on each database backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from enginehost.core.db.errors import DatabaseUnavailableError
from enginehost.core.engine import EngineMessage
from enginehost.core.messages.store import MessageStore
from enginehost.core.net.guard import AddressPolicy
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import Settings, load_settings
from enginehost.core.webhooks import dispatcher as dispatcher_module
from enginehost.core.webhooks.delivery import WebhookClient
from enginehost.core.webhooks.dispatcher import Dispatcher
from enginehost.core.webhooks.matching import WebhookIndex, WebhookSnapshot
from enginehost.core.webhooks.models import OutboxRecord, WebhookRecord
from enginehost.core.webhooks.outbox import Outbox
from enginehost.core.webhooks.signing import verify_openwa, verify_timestamped
from tests.support.receiver import Answer, Received, receiver
from tests.support.wait import until

pytestmark = pytest.mark.anyio

SECRET = "s3cret-s3cret-s3cret"
FAST = {"webhook_retry_base": 0.05, "webhook_retry_cap": 0.2, "webhook_max_attempts": 4}


@dataclass
class Host:
    database: Any
    index: WebhookIndex
    outbox: Outbox
    sessions: SessionStore
    messages: MessageStore
    dispatcher: Dispatcher
    settings: Settings

    async def webhook(self, url: str, session_id: str | None = None, **fields: Any) -> str:
        record = WebhookRecord(
            url=url,
            session_id=session_id,
            events=fields.pop("events", ["*"]),
            secret=fields.pop("secret", SECRET),
            **fields,
        )

        def work(session: Any) -> WebhookRecord:
            session.add(record)
            session.flush()
            return record

        stored = await self.database.run(work)
        self.index.put(WebhookSnapshot.of(stored))
        return str(stored.id)

    async def outbox_rows(self) -> list[dict[str, Any]]:
        table = OutboxRecord.__table__  # type: ignore[attr-defined]

        def work(connection: Any) -> list[dict[str, Any]]:
            rows = connection.execute(sa.select(table).order_by(table.c.id))
            return [dict(row._mapping) for row in rows]

        return list(await self.database.run_connection(work))


@asynccontextmanager
async def host(database: Any, *, run: bool = True, **settings: Any) -> AsyncIterator[Host]:
    config = load_settings(**{**FAST, **settings})
    index = WebhookIndex()
    outbox = Outbox(index, max_payload_bytes=config.webhook_max_payload_bytes)
    sessions = SessionStore(database, outbox=outbox)
    messages = MessageStore(database, outbox=outbox)
    outbox.name_sessions_with(sessions.cached_name)
    client = WebhookClient(
        policy=AddressPolicy.from_allow_list(["127.0.0.0/8"]),
        timeout=config.webhook_timeout,
        user_agent="enginehost-tests",
    )
    dispatcher = Dispatcher(database, messages.writes, outbox, client, config)
    await dispatcher.prepare()
    records = await _all_webhooks(database)
    index.load(records)
    state = Host(database, index, outbox, sessions, messages, dispatcher, config)
    try:
        async with anyio.create_task_group() as tasks:
            if run:
                await tasks.start(dispatcher.run)
            yield state
            tasks.cancel_scope.cancel()
    finally:
        await messages.writes.drain()
        await dispatcher.aclose()


async def _all_webhooks(database: Any) -> list[WebhookRecord]:
    from sqlmodel import select

    def work(session: Any) -> list[WebhookRecord]:
        return list(session.exec(select(WebhookRecord)).all())

    return list(await database.run(work))


def inbound(n: int, chat: str = "111@c.us", prefix: str = "in") -> list[EngineMessage]:
    return [
        EngineMessage(
            message_id=f"{prefix}-{chat}-{i}",
            chat_id=chat,
            sender=chat,
            from_me=False,
            body=f"{prefix} {i}",
        )
        for i in range(n)
    ]


def bodies(requests: list[Received], event: str | None = None) -> list[dict[str, Any]]:
    found = [r.json() for r in requests]
    return [b for b in found if event is None or b["event"] == event]


async def test_no_webhook_means_no_outbox_rows(data_db: Any) -> None:
    async with host(data_db) as h:
        session = await h.sessions.create("quiet", engine="sandbox")
        await h.messages.store_engine_messages([(session.id, m) for m in inbound(5)])
        assert await h.outbox_rows() == []


async def test_inbound_messages_are_delivered_signed_and_in_order(data_db: Any) -> None:
    with receiver() as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("alpha", engine="sandbox")
            webhook_id = await h.webhook(hook.url, session.id, events=["message.received"])
            messages = inbound(20)
            for message in messages:
                await h.messages.store_engine_messages([(session.id, message)])
            requests = await hook.arrived(20)
            await until(lambda: h.dispatcher.held() == 0)
            await until(lambda: h.dispatcher.quiet())
            assert await h.outbox_rows() == []
    assert [b["data"]["messageId"] for b in bodies(requests)] == [m.message_id for m in messages]
    first = requests[0]
    envelope = first.json()
    assert envelope["event"] == "message.received"
    assert envelope["sessionId"] == session.id
    assert envelope["data"]["sessionName"] == "alpha"
    assert envelope["data"]["body"] == "in 0"
    assert first.headers["x-openwa-event"] == "message.received"
    assert first.headers["x-openwa-delivery-id"] == envelope["deliveryId"]
    assert first.headers["x-openwa-idempotency-key"] == envelope["idempotencyKey"]
    assert first.headers["x-openwa-retry-count"] == "0"
    assert verify_openwa(SECRET, first.body, first.headers["x-openwa-signature"])
    assert verify_timestamped(
        SECRET,
        first.body,
        first.headers["x-enginehost-timestamp"],
        first.headers["x-enginehost-signature"],
    )
    assert len({r.headers["x-openwa-idempotency-key"] for r in requests}) == 20
    assert webhook_id


async def test_a_rolled_back_change_stages_nothing(data_db: Any) -> None:
    with receiver() as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("beta", engine="sandbox")
            await h.webhook(hook.url, session.id)

            def work(connection: Any) -> None:
                h.outbox.stage(connection, "session.qr", session.id, {"qr": "x"})
                raise RuntimeError("the change failed")

            with pytest.raises(RuntimeError):
                await h.database.run_connection(work)
            assert await h.outbox_rows() == []
            assert h.dispatcher.held() == 0
            await anyio.sleep(0.2)
            assert hook.requests == []


async def test_failed_attempts_are_retried_with_the_same_idempotency_key(data_db: Any) -> None:
    calls = {"n": 0}

    def flaky(_: Received) -> Answer:
        calls["n"] += 1
        return (500, {}, b"down") if calls["n"] <= 2 else (200, {}, b"ok")

    with receiver(flaky) as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("gamma", engine="sandbox")
            await h.webhook(hook.url, session.id)
            await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
            requests = await hook.arrived(3)
            await until(lambda: h.dispatcher.delivery_outcomes().get("delivered") == 1)
    assert [r.headers["x-openwa-retry-count"] for r in requests] == ["0", "1", "2"]
    assert len({r.headers["x-openwa-idempotency-key"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    assert h.dispatcher.delivery_outcomes()["failed_attempt"] == 2


async def test_a_client_error_becomes_a_dead_letter_and_redrive_delivers_it(
    data_db: Any,
) -> None:
    answers = {"status": 400}

    def refusing(_: Received) -> Answer:
        return answers["status"], {}, b"bad request"

    with receiver(refusing) as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("delta", engine="sandbox")
            webhook_id = await h.webhook(hook.url, session.id)
            await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
            await hook.arrived(1)
            await until(lambda: h.dispatcher.delivery_outcomes().get("dead_lettered") == 1)
            await until(lambda: h.dispatcher.quiet())
            letters, total = await h.dispatcher.dead_letters(webhook_id=webhook_id)
            assert total == 1 and letters[0].last_status == 400
            assert "HTTP 400" in (letters[0].last_error or "")
            assert await h.outbox_rows() == []
            assert len(hook.requests) == 1  # a 400 is not retried

            answers["status"] = 200
            assert await h.dispatcher.redrive(webhook_id=webhook_id) == 1
            requests = await hook.arrived(2)
            await until(lambda: h.dispatcher.delivery_outcomes().get("delivered") == 1)
            assert await h.dispatcher.dead_letters() == ([], 0)
    assert requests[0].body == requests[1].body
    assert (
        requests[0].headers["x-openwa-idempotency-key"]
        == (requests[1].headers["x-openwa-idempotency-key"])
    )


async def test_attempts_running_out_make_a_dead_letter(data_db: Any) -> None:
    with receiver(lambda _: (503, {}, b"busy")) as hook:
        async with host(data_db, webhook_max_attempts=3) as h:
            session = await h.sessions.create("eps", engine="sandbox")
            webhook_id = await h.webhook(hook.url, session.id)
            await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
            await until(lambda: h.dispatcher.delivery_outcomes().get("dead_lettered") == 1)
            await until(lambda: h.dispatcher.quiet())
            letters, _ = await h.dispatcher.dead_letters(webhook_id=webhook_id)
    assert len(hook.requests) == 3
    assert letters[0].attempts == 3


async def test_a_failing_chat_holds_its_own_lane_only(data_db: Any) -> None:
    failures = {"n": 0}

    def first_chat_fails_twice(request: Received) -> Answer:
        if request.json()["data"]["chatId"] == "111@c.us" and failures["n"] < 2:
            failures["n"] += 1
            return 500, {}, b"no"
        return 200, {}, b"ok"

    with receiver(first_chat_fails_twice) as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("zeta", engine="sandbox")
            await h.webhook(hook.url, session.id, events=["message.received"])
            first, second = inbound(5, "111@c.us"), inbound(5, "222@c.us")
            for a, b in zip(first, second, strict=True):
                await h.messages.store_engine_messages([(session.id, a), (session.id, b)])
            requests = await hook.arrived(12)
    delivered = [b["data"] for b in bodies(requests)]
    for chat, sent in (("111@c.us", first), ("222@c.us", second)):
        # Each chat in order; a retried delivery repeats, never overtakes.
        seen = [d["messageId"] for d in delivered if d["chatId"] == chat]
        assert list(dict.fromkeys(seen)) == [m.message_id for m in sent]
    # The healthy chat did not queue behind the failing one's retries: its first
    # delivery came before the failing chat's first retry (which waits 25 ms or more).
    first_of_second = next(
        i for i, d in enumerate(delivered) if d["messageId"] == second[0].message_id
    )
    retry_of_first = [i for i, d in enumerate(delivered) if d["chatId"] == "111@c.us"][1]
    assert first_of_second < retry_of_first


async def test_undelivered_rows_survive_a_restart(data_db: Any) -> None:
    with receiver(lambda _: (503, {}, b"later")) as down:
        async with host(data_db, webhook_retry_base=30, webhook_retry_cap=60) as h:
            session = await h.sessions.create("eta", engine="sandbox")
            webhook_id = await h.webhook(down.url, session.id, events=["message.received"])
            # Three chats: three lanes, each tried once, then waiting to retry.
            messages = [m for chat in ("1@c.us", "2@c.us", "3@c.us") for m in inbound(1, chat)]
            await h.messages.store_engine_messages([(session.id, m) for m in messages])
            await down.arrived(3)
            await until(lambda: h.dispatcher.delivery_outcomes().get("failed_attempt") == 3)
        rows = await h.outbox_rows()
    assert [(r["webhook_id"], r["attempts"]) for r in rows] == [(webhook_id, 1)] * 3
    assert all(r["next_attempt_at"] is not None for r in rows)
    with receiver() as up:
        # The receiver moved, and the stored next attempt (up to a minute away) is due.
        webhooks = WebhookRecord.__table__  # type: ignore[attr-defined]
        outbox = OutboxRecord.__table__  # type: ignore[attr-defined]
        with data_db.engine.begin() as connection:
            connection.execute(sa.update(webhooks).values(url=up.url))
            connection.execute(sa.update(outbox).values(next_attempt_at=None))
        async with host(data_db) as again:
            requests = await up.arrived(3)
            await until(lambda: again.dispatcher.quiet())
            assert await again.outbox_rows() == []
    assert sorted(r.json()["data"]["chatId"] for r in requests) == ["1@c.us", "2@c.us", "3@c.us"]
    assert all(r.headers["x-openwa-retry-count"] == "1" for r in requests)


async def test_a_stored_retry_time_is_honoured_after_a_restart(data_db: Any) -> None:
    with receiver(lambda _: (503, {}, b"later")) as down:
        async with host(data_db, webhook_retry_base=30, webhook_retry_cap=60) as h:
            session = await h.sessions.create("eta2", engine="sandbox")
            await h.webhook(down.url, session.id, events=["message.received"])
            await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
            await until(lambda: h.dispatcher.delivery_outcomes().get("failed_attempt") == 1)
        async with host(data_db) as again:
            await anyio.sleep(0.5)
            assert again.dispatcher.held() == 1
        assert len(down.requests) == 1  # not retried before its time


async def test_a_hanging_receiver_does_not_slow_a_healthy_one(data_db: Any) -> None:
    def hang(_: Received) -> Answer:
        time.sleep(1.5)
        return 200, {}, b"late"

    with receiver(hang) as slow, receiver() as fast:
        async with host(
            data_db, webhook_timeout=1.0, webhook_concurrency=4, webhook_concurrency_per_webhook=2
        ) as h:
            session = await h.sessions.create("theta", engine="sandbox")
            await h.webhook(slow.url, session.id, events=["message.received"])
            await h.webhook(fast.url, session.id, events=["message.received"])
            messages = [m for chat in range(8) for m in inbound(3, f"{chat}00@c.us")]
            started = time.monotonic()
            await h.messages.store_engine_messages([(session.id, m) for m in messages])
            await fast.arrived(len(messages), within=5)
            took = time.monotonic() - started
    # 24 deliveries to the healthy receiver while the other holds its two slots for a
    # second at a time: well under the ~12 s a shared queue would take.
    assert took < 3.0


async def test_session_status_is_staged_with_the_transition(data_db: Any) -> None:
    with receiver() as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("iota", engine="sandbox")
            await h.webhook(hook.url, session.id, events=["session.status"])
            await h.sessions.transition(session.id, "initializing", reason="starting")
            await h.sessions.transition(session.id, "initializing", reason=None)
            await h.sessions.transition(session.id, "ready")
            requests = await hook.arrived(2)
            await anyio.sleep(0.2)
    data = [b["data"] for b in bodies(requests)]
    assert [(d["previous"], d["status"]) for d in data] == [
        ("created", "initializing"),
        ("initializing", "ready"),
    ]
    assert len(hook.requests) == 2


async def test_filters_and_event_lists_choose_what_is_staged(data_db: Any) -> None:
    async with host(data_db, run=False) as h:  # nothing delivered: the rows stay
        session = await h.sessions.create("kappa", engine="sandbox")
        await h.webhook(
            "http://127.0.0.1:9/hook",
            session.id,
            events=["message.received"],
            filters={"chatIds": ["222@c.us"]},
        )
        await h.messages.store_engine_messages(
            [(session.id, m) for m in inbound(2, "111@c.us") + inbound(2, "222@c.us")]
        )
        await h.sessions.transition(session.id, "ready")
        rows = await h.outbox_rows()
    assert [json.loads(r["body"])["data"]["chatId"] for r in rows] == ["222@c.us"] * 2
    assert {r["event"] for r in rows} == {"message.received"}


async def test_a_receiver_that_keeps_failing_is_paused_as_a_whole(data_db: Any) -> None:
    """Ten chats of one webhook all failing: after the first wave, no lane hammers the
    receiver on its own schedule; the webhook waits as one (and healthy ones go on)."""
    with receiver(lambda _: (503, {}, b"down")) as down, receiver() as up:
        async with host(data_db, webhook_retry_base=0.5, webhook_retry_cap=2.0) as h:
            session = await h.sessions.create("lambda", engine="sandbox")
            await h.webhook(down.url, session.id, events=["message.received"])
            await h.webhook(up.url, session.id, events=["message.received"])
            chats = [f"{n}00@c.us" for n in range(1, 11)]
            messages = [m for chat in chats for m in inbound(1, chat)]
            await h.messages.store_engine_messages([(session.id, m) for m in messages])
            await up.arrived(10)
            await down.arrived(10)  # the first wave: each lane tried once
            await anyio.sleep(0.8)
            later = len(down.requests) - 10
    # Ten failures in a row pause the webhook for at least a second (the lanes' own
    # waits are 0.25-0.5 s): without the pause, every lane would have retried by now.
    assert later <= 1, later


def test_secrets_stay_out_of_a_webhook_s_repr() -> None:
    record = WebhookRecord(url="http://x", events=["*"], secret="TOP-SECRET", headers={"A": "HV"})
    for text in (repr(record), str(record)):
        assert "TOP-SECRET" not in text and "HV" not in text


async def test_deliveries_beyond_the_memory_window_are_read_back_in_order(
    data_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 4 deliveries in memory, 60 over three chats still all arrive, each
    once (a 2xx answer) and each chat in order, while more keep being written."""
    monkeypatch.setattr(dispatcher_module, "WINDOW", 4)

    def slowish(_: Received) -> Answer:
        time.sleep(0.005)
        return 200, {}, b"ok"

    with receiver(slowish) as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("mu", engine="sandbox")
            await h.webhook(hook.url, session.id, events=["message.received"])
            chats = ("1@c.us", "2@c.us", "3@c.us")
            sent = {chat: inbound(20, chat) for chat in chats}
            for index in range(20):  # written while earlier ones are being read back
                batch = [(session.id, sent[chat][index]) for chat in chats]
                await h.messages.store_engine_messages(batch)
                await anyio.sleep(0.002)
            requests = await hook.arrived(60)
            await until(h.dispatcher.quiet)
            assert await h.outbox_rows() == []
    assert len(requests) == 60
    delivered = [b["data"] for b in bodies(requests)]
    for chat in chats:
        seen = [d["messageId"] for d in delivered if d["chatId"] == chat]
        assert seen == [m.message_id for m in sent[chat]]


async def test_a_failed_bookkeeping_write_is_written_later(
    data_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver() as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("nu", engine="sandbox")
            await h.webhook(hook.url, session.id, events=["message.received"])
            real_submit = h.dispatcher._writes.submit
            failures = {"left": 1}

            async def flaky_submit(operation: Any) -> Any:
                # The queue is the data database's, shared: fail the dispatcher's only.
                if failures["left"] and "_flush_bookkeeping" in operation.__qualname__:
                    failures["left"] -= 1
                    raise DatabaseUnavailableError("the database went away for a moment")
                return await real_submit(operation)

            monkeypatch.setattr(h.dispatcher._writes, "submit", flaky_submit)
            monkeypatch.setattr(dispatcher_module, "_BOOKKEEPING_RETRY", 0.05)
            await h.messages.store_engine_messages([(session.id, m) for m in inbound(3)])
            await hook.arrived(3)
            await until(h.dispatcher.quiet)
            assert failures["left"] == 0
            assert await h.outbox_rows() == []


async def test_sessions_reset_at_boot_are_announced(data_db: Any) -> None:
    async with host(data_db, run=False) as h:
        session = await h.sessions.create("xi", engine="sandbox")
        await h.webhook("http://127.0.0.1:9/hook", session.id, events=["session.status"])
        await h.sessions.transition(session.id, "ready")
        reset = await h.sessions.reset_in_flight(frozenset({"ready"}), "the host restarted")
        rows = await h.outbox_rows()
    assert reset == 1
    data = [json.loads(r["body"])["data"] for r in rows]
    assert [(d["previous"], d["status"], d["reason"]) for d in data][-1] == (
        "ready",
        "disconnected",
        "the host restarted",
    )


async def test_redrive_works_in_pages(data_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher_module, "REDRIVE_PAGE", 2)
    answers = {"status": 410}
    with receiver(lambda _: (answers["status"], {}, b"")) as hook:
        async with host(data_db) as h:
            session = await h.sessions.create("omicron", engine="sandbox")
            webhook_id = await h.webhook(hook.url, session.id, events=["message.received"])
            await h.messages.store_engine_messages([(session.id, m) for m in inbound(5)])
            await until(lambda: h.dispatcher.delivery_outcomes().get("dead_lettered") == 5)
            await until(h.dispatcher.quiet)
            answers["status"] = 200
            assert await h.dispatcher.redrive(webhook_id=webhook_id) == 5
            assert await h.dispatcher.redrive(ids=["nope", "a\x00b"]) == 0
            assert await h.dispatcher.dead_letters(webhook_id="a\x00b") == ([], 0)
            await hook.arrived(10)
            await until(h.dispatcher.quiet)
            assert await h.dispatcher.dead_letters() == ([], 0)


async def test_a_webhook_s_retry_count_and_policy_override_the_settings(data_db: Any) -> None:
    with receiver(lambda _: (503, {}, b"busy")) as hook:
        # The settings would allow 4 attempts with 50 ms waits; the webhook asks for one
        # retry after a wait of 0.3 s at least (equal jitter: half of 0.6 s).
        async with host(data_db) as h:
            session = await h.sessions.create("pi", engine="sandbox")
            webhook_id = await h.webhook(
                hook.url, session.id, retry_count=1, retry_base=0.6, retry_cap=0.6
            )
            await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
            await until(lambda: h.dispatcher.delivery_outcomes().get("dead_lettered") == 1)
            await until(h.dispatcher.quiet)  # the dead letter is written
            letters, _ = await h.dispatcher.dead_letters(webhook_id=webhook_id)
    assert len(hook.requests) == 2 and letters[0].attempts == 2
    assert hook.requests[1].at - hook.requests[0].at >= 0.3


async def test_a_webhook_deleted_before_the_index_knows_fails_no_write(data_db: Any) -> None:
    """The index learns of a delete after it committed: a message stored in between
    is stored all the same, without an outbox row for the gone webhook."""
    async with host(data_db, run=False) as h:
        session = await h.sessions.create("rho", engine="sandbox")
        await h.webhook("http://127.0.0.1:9/hook", session.id, events=["message.received"])
        webhooks = WebhookRecord.__table__  # type: ignore[attr-defined]
        with data_db.engine.begin() as connection:  # behind the index's back
            connection.execute(sa.delete(webhooks))
        stored = await h.messages.store_engine_messages([(session.id, inbound(1)[0])])
        assert len(stored) == 1
        assert await h.outbox_rows() == []
