"""The session manager's invariants and reconnect policy, with the sandbox engine and a
scripted engine for behaviours no sane engine shows on purpose (hangs, silence)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from enginehost import (
    DisconnectClassification,
    Engine,
    EventSink,
    QrEvent,
    ReadyEvent,
    SessionInfo,
)
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.messages.store import MessageStore
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.reconnect import ReconnectSettingsError
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import load_settings
from enginehost.plugins.sandbox import SandboxPlugin

pytestmark = pytest.mark.anyio

FAST = {
    "reconnect_base": 0.1,
    "reconnect_cap": 1.0,
    "session_teardown_timeout": 0.5,
    "session_init_deadline": 5.0,
    "session_restore_stagger": 0.0,
}


class Scripted(Engine):
    """An engine told what to do: how long start takes, whether it speaks, whether stop hangs."""

    def __init__(self, session: SessionInfo, script: Script) -> None:
        super().__init__(session, engine_name="scripted")
        self.script = script
        self.stopped = False

    async def _start(self, sink: EventSink) -> None:
        self.script.started += 1
        await anyio.sleep(self.script.start_delay)
        if self.script.speaks:
            await sink(QrEvent(payload="qr-1"))

    async def _stop(self) -> None:
        if self.script.hang_on_stop:
            await anyio.sleep(3600)
        self.stopped = True

    async def _logout(self) -> None:
        self.stopped = True


@dataclass
class Script:
    start_delay: float = 0.0
    speaks: bool = True
    hang_on_stop: bool = False
    started: int = 0
    engines: list[Scripted] = field(default_factory=list)


class Engines:
    """An engine factory over the sandbox plugin and the scripted engine."""

    def __init__(self, sandbox: SandboxPlugin, script: Script) -> None:
        self.sandbox = sandbox
        self.script = script
        self.created: list[Engine] = []

    def create_engine(self, engine_name: str, session: SessionInfo) -> Engine:
        engine: Engine
        if engine_name == "scripted":
            engine = Scripted(session, self.script)
            self.script.engines.append(engine)
        elif engine_name == "sandbox":
            engine = self.sandbox.create_engine(session)
        else:
            raise LookupError(f"unknown engine {engine_name!r}")
        self.created.append(engine)
        return engine


@dataclass
class Host:
    manager: SessionManager
    messages: MessageStore
    store: SessionStore
    engines: Engines
    bus: EventBus
    events: list[HostEvent]
    sandbox: SandboxPlugin

    async def wait_status(self, key: str, status: str, within: float = 5) -> Any:
        with anyio.fail_after(within):
            while (record := await self.store.resolve(key)).status != status:
                await anyio.sleep(0.02)
        return record

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5) -> None:
        with anyio.fail_after(within):
            while not predicate():
                await anyio.sleep(0.02)


@asynccontextmanager
async def host(data_db: Any, tmp_path: Path, **settings: Any) -> AsyncIterator[Host]:
    config = load_settings(**{**FAST, **settings})
    sandbox = SandboxPlugin(
        {"auth_dir": str(tmp_path / "auth"), "ack_delay_seconds": 0.01},
        data_dir=tmp_path / "sandbox",
    )
    store = SessionStore(data_db)
    bus = EventBus()
    subscription = bus.subscribe(maxsize=10_000)
    events: list[HostEvent] = []
    engines = Engines(sandbox, Script())
    messages = MessageStore(data_db, bus=bus)
    manager = SessionManager(store, engines, bus, config, messages)

    async def collect() -> None:
        async for event in subscription:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        async with manager.running():
            yield Host(manager, messages, store, engines, bus, events, sandbox)
        subscription.close()


async def test_start_scan_ready_and_stop_keeps_auth(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        qr, _ = h.manager.qr(record.id)
        assert qr is not None
        await h.sandbox.engine_for(record.id).scan()
        ready = await h.wait_status("alpha", "ready")
        assert ready.phone == "15550000001"
        assert ready.connected_at is not None
        assert [e["status"] for e in ready.status_history] == [
            "initializing",
            "qr_ready",
            "authenticating",
            "ready",
        ]
        stopped = await h.manager.stop("alpha")
        assert stopped.status == "disconnected"
        assert stopped.desired_state == "stopped"
        await h.manager.stop("alpha")  # idempotent
        # Auth was kept: the next start goes straight to ready, no QR.
        await h.manager.start("alpha")
        await h.wait_status("alpha", "ready")
        statuses = [e.data["status"] for e in h.events if e.type == "session.status"]
        assert statuses[-1] == "ready"


async def test_two_concurrent_starts_make_one_engine(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        await h.store.create("alpha", engine="scripted")
        h.engines.script.start_delay = 0.2
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(h.manager.start, "alpha")
        await h.wait_status("alpha", "qr_ready")
        assert len(h.engines.created) == 1
        await h.manager.start("alpha")  # starting a running session is a no-op
        assert len(h.engines.created) == 1


async def test_a_stop_during_start_wins(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="scripted")
        h.engines.script.start_delay = 1.0
        await h.manager.start("alpha")
        await h.wait_until(lambda: h.engines.script.started == 1)
        await h.manager.stop("alpha")
        await anyio.sleep(1.2)  # past the moment the start would have finished
        final = await h.store.resolve(record.id)
        assert final.status == "disconnected"
        assert h.manager.live(record.id) is None
        assert "qr_ready" not in [e["status"] for e in final.status_history]


async def test_events_of_a_replaced_engine_change_nothing(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        first = h.sandbox.engine_for(record.id)
        first_sink = first._sink
        assert first_sink is not None
        await first.scan()
        await h.wait_status("alpha", "ready")
        await first.drop(DisconnectClassification.RESTART_NOW)
        await h.wait_until(lambda: len(h.engines.created) == 2)
        await h.wait_status("alpha", "ready")  # the new engine reconnected with saved auth
        await h.manager.stop("alpha")
        # The old engine (and the stopped new one) report through their old sinks: ignored.
        await first_sink(ReadyEvent(own_id="19999999999@c.us"))
        await first_sink(QrEvent(payload="stale"))
        final = await h.store.resolve(record.id)
        assert final.status == "disconnected"
        assert final.phone == "15550000001"


async def test_teardown_of_a_hung_engine_is_bounded(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path, session_teardown_timeout=0.3) as h:
        await h.store.create("alpha", engine="scripted")
        h.engines.script.hang_on_stop = True
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        with anyio.fail_after(3):
            stopped = await h.manager.stop("alpha")
        assert stopped.status == "disconnected"
        assert "did not stop within 0.3 s" in (stopped.status_history[-1]["reason"] or "")


async def test_an_engine_that_never_shows_a_qr_fails_at_the_init_deadline(
    data_db: Any, tmp_path: Path
) -> None:
    async with host(data_db, tmp_path, session_init_deadline=0.3) as h:
        record = await h.store.create("alpha", engine="scripted")
        h.engines.script.speaks = False
        await h.manager.start("alpha")
        failed = await h.wait_status("alpha", "failed")
        assert "no QR and was not ready within 0.3 s" in failed.status_history[-1]["reason"]
        assert failed.desired_state == "stopped"
        assert h.manager.live(record.id) is None
        assert h.engines.script.engines[0].state.value == "closed"


async def test_transient_disconnects_back_off_and_report_loops(
    data_db: Any, tmp_path: Path
) -> None:
    async with host(data_db, tmp_path, reconnect_base=0.1, reconnect_cap=1.0) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        await h.sandbox.engine_for(record.id).scan()
        await h.wait_status("alpha", "ready")
        for attempt in range(1, 6):
            engine = h.sandbox.engine_for(record.id)
            await engine.drop(DisconnectClassification.TRANSIENT, reason="network gone")
            # The reconnect may be quick: read what happened from the status events.
            await h.wait_until(lambda n=attempt: len(h.engines.created) == n + 1)
            back = await h.wait_status("alpha", "ready")
            assert back.reconnect_attempt == 0  # reset once ready again
            reasons = [e["reason"] for e in back.status_history]
            assert f"reconnecting (attempt {attempt}): network gone" in reasons
            reconnecting = [
                e
                for e in h.events
                if e.type == "session.status"
                and e.data["reason"]
                and "reconnecting" in e.data["reason"]
            ]
            assert len(reconnecting) == attempt
        loops = [e for e in h.events if e.type == "session.reconnect_loop"]
        assert [e.data["attempt"] for e in loops] == [5]
        assert len(h.engines.created) == 6  # a fresh engine object each time


async def test_logged_out_wipes_auth_and_stops(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        engine = h.sandbox.engine_for(record.id)
        await engine.scan()
        await h.wait_status("alpha", "ready")
        assert engine.auth_path.exists()
        await engine.drop(DisconnectClassification.LOGGED_OUT)
        final = await h.wait_status("alpha", "disconnected")
        await h.wait_until(lambda: h.manager.live(record.id) is None)
        final = await h.store.resolve(record.id)
        assert final.desired_state == "stopped"
        assert final.phone is None
        assert not engine.auth_path.exists()
        assert len(h.engines.created) == 1  # no reconnect after a logout


async def test_terminal_fails_without_retry(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        await h.sandbox.engine_for(record.id).drop(
            DisconnectClassification.TERMINAL, reason="banned"
        )
        failed = await h.wait_status("alpha", "failed")
        assert failed.status_history[-1]["reason"] == "banned"
        await anyio.sleep(0.3)
        assert len(h.engines.created) == 1


async def test_a_failing_start_fails_the_session(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        await h.store.create("alpha", engine="sandbox", config={"fail_start": "no network"})
        await h.manager.start("alpha")
        failed = await h.wait_status("alpha", "failed")
        assert "no network" in failed.status_history[-1]["reason"]


async def test_restore_on_boot(data_db: Any, tmp_path: Path) -> None:
    store = SessionStore(data_db)
    wanted = await store.create("wanted", engine="sandbox", config={"auto_scan_seconds": 0})
    await store.create("stopped", engine="sandbox")
    broken = await store.create("broken", engine="nonexistent")
    for record in (wanted, broken):
        await store.update(record.id, desired_state="running", status="ready")
    async with host(data_db, tmp_path) as h:
        started = await h.manager.restore()
        assert started == 2  # the broken one starts too, and fails on its own
        await h.wait_status("wanted", "ready")
        assert (await h.store.resolve("stopped")).status == "created"
        failed = await h.wait_status("broken", "failed")
        assert "unknown engine" in failed.status_history[-1]["reason"]
    # Shutdown stops sessions but keeps what the user wanted for the next boot.
    assert (await store.resolve("wanted")).desired_state == "running"
    assert (await store.resolve("wanted")).status == "disconnected"


async def test_delete_during_a_start_and_twice(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="scripted")
        h.engines.script.start_delay = 1.0
        await h.manager.start("alpha")
        assert await h.manager.delete("alpha") is True
        assert await h.manager.delete("alpha") is False
        assert h.manager.live(record.id) is None


async def test_nonsense_reconnect_overrides_are_refused(data_db: Any, tmp_path: Path) -> None:
    async with host(data_db, tmp_path) as h:
        await h.store.create("alpha", engine="sandbox", config={"reconnect": {"capSeconds": 0}})
        with pytest.raises(ReconnectSettingsError, match="capSeconds: must be between"):
            await h.manager.start("alpha")
        assert h.manager.live((await h.store.resolve("alpha")).id) is None


async def test_messages_and_acks_are_stored_once_and_published(
    data_db: Any, tmp_path: Path
) -> None:
    async with host(data_db, tmp_path) as h:
        record = await h.store.create("alpha", engine="sandbox")
        await h.manager.start("alpha")
        await h.wait_status("alpha", "qr_ready")
        engine = h.sandbox.engine_for(record.id)
        await engine.scan()
        await h.wait_status("alpha", "ready")

        inbound = await engine.receive_text("15551234567@c.us", "hello")
        await engine.receive_text("15551234567@c.us", "hello", message_id=inbound.message_id)
        typed = await engine.compose_on_phone("15551234567@c.us", "typed on the phone")
        sent = await engine.send_text("15551234567@c.us", "from the API")  # echo + acks
        await h.wait_until(
            lambda: any(e.type == "message.ack" and e.data["status"] == "read" for e in h.events)
        )
        rows, total, _ = await h.messages.history(record.id)
        assert total == 3  # the re-fired inbound message is stored once
        by_id = {row.message_id: row for row in rows}
        assert by_id[inbound.message_id].direction == "incoming"
        assert by_id[typed.message_id].from_me is True
        assert by_id[sent.message_id].status == "read"
        types = [e.type for e in h.events if e.type.startswith("message.")]
        assert types.count("message.received") == 1
        active = await h.store.resolve(record.id)
        assert active.last_active is not None
        assert active.connected_at is not None
        assert active.last_active > active.connected_at  # moved by the messages
        assert types.count("message.sent") == 2


async def test_restore_fails_sends_left_pending_by_a_crash(data_db: Any, tmp_path: Path) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    pending, _ = await MessageStore(data_db).create_pending(
        record.id, chat_id="15551234567@c.us", type="text", body="in flight"
    )
    async with host(data_db, tmp_path) as h:
        await h.manager.restore()
        failed = await h.messages.get(record.id, pending.id)
        assert failed.status == "failed"
        assert failed.failure_reason
