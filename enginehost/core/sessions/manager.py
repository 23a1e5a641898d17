"""The session manager: one supervised engine per running session, and its lifecycle.

Invariants (each has a test):

* **One live engine per session.** A session has at most one :class:`_Live` slot and
  that slot at most one engine object at a time. Every engine event is checked against
  the slot's current engine by identity; events of a replaced or stopped engine change
  nothing.
* **Start reserves synchronously.** The slot is taken before the first ``await``, so two
  concurrent starts make one engine.
* **Stop wins.** A stop (or delete) landing while an engine starts cancels the start and
  tears the engine down; it cannot come back to ``ready``.
* **Teardown is bounded** by ``ENGINEHOST_SESSION_TEARDOWN_TIMEOUT``: a hung engine is
  abandoned (its tasks cancelled) and reported, never wedging stop, delete or shutdown.
* **Init deadline.** An engine that shows neither a QR nor ``ready`` within
  ``ENGINEHOST_SESSION_INIT_DEADLINE`` is torn down and the session fails with that reason.

Reconnects follow :mod:`enginehost.core.sessions.reconnect`; statuses follow the table
in :mod:`enginehost.core.sessions.status`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from enginehost.core.engine import (
    AckEvent,
    AuthenticatedEvent,
    DisconnectClassification,
    DisconnectedEvent,
    Engine,
    EngineEvent,
    EngineMessage,
    ErrorEvent,
    MessageEvent,
    OwnMessageEvent,
    PairingCodeEvent,
    QrEvent,
    ReactionEvent,
    ReadyEvent,
    RevokeEvent,
    SessionInfo,
    utc_now,
)
from enginehost.core.errors import ServiceError
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.logging import bind_session, get_logger
from enginehost.core.messages.inbound import InboundWriter
from enginehost.core.messages.store import MessageNotFoundError, MessageStore
from enginehost.core.sessions.echoes import EchoGate, SendInProgress
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.reconnect import ReconnectPolicy
from enginehost.core.sessions.status import IN_FLIGHT, SessionStatus, status_for
from enginehost.core.sessions.store import SessionNotFoundError, SessionStore
from enginehost.core.settings import Settings
from enginehost.core.webhooks.catalogue import (
    authenticated_payload,
    disconnected_payload,
    qr_payload,
    reaction_payload,
    reconnect_loop_payload,
    revoked_payload,
    session_status_payload,
)

if TYPE_CHECKING:
    from enginehost.core.webhooks.outbox import Outbox

__all__ = ["HOST_CONFIG_KEYS", "EngineFactory", "LogoutError", "SessionManager", "session_info"]

log = get_logger("enginehost.sessions")

LAST_ACTIVE_INTERVAL = 60.0
RUNNING = "running"
STOPPED = "stopped"


HOST_CONFIG_KEYS = frozenset({"reconnect", "proxy"})
"""Keys of a session's config the host owns; engines get the rest (and the proxy apart)."""


def session_info(record: SessionRecord) -> SessionInfo:
    """What an engine object is told about its session."""
    config = {k: v for k, v in record.config.items() if k not in HOST_CONFIG_KEYS}
    proxy = record.config.get("proxy")
    return SessionInfo(
        id=record.id,
        name=record.name,
        config=config,
        proxy=proxy if isinstance(proxy, dict) else None,
    )


class LogoutError(ServiceError):
    status_code = 409
    default_code = "logout_failed"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"session {name!r} was stopped but could not be logged out: {reason}")


class EngineFactory(Protocol):
    """Makes engine objects by engine name (the plugin host is one)."""

    def create_engine(self, engine_name: str, session: SessionInfo) -> Engine: ...


@dataclass(eq=False)
class _Live:
    """The supervision slot of one running session (its identity is what events check)."""

    session_id: str
    name: str
    engine_name: str
    policy: ReconnectPolicy
    engine: Engine | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    start_scope: anyio.CancelScope | None = None
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    end: DisconnectedEvent | None = None
    end_failure: str | None = None
    visible: bool = False
    """The current engine showed a QR or became ready (the init deadline is met)."""
    ready_since: float | None = None
    attempt: int = 0
    qr: str | None = None
    pairing_code: str | None = None
    last_active_written: float = 0.0
    final_status: SessionStatus = SessionStatus.DISCONNECTED
    final_reason: str | None = None
    teardown_problem: str | None = None
    logout_requested: bool = False
    """A logout is stopping it: the live engine logs out (unlinks from the phone while
    it still has a connection) instead of only stopping."""


_MESSAGE_EVENTS = (MessageEvent, OwnMessageEvent, AckEvent, RevokeEvent, ReactionEvent)


class SessionManager:
    """Starts, stops and supervises sessions; the only writer of session statuses."""

    def __init__(
        self,
        store: SessionStore,
        engines: EngineFactory,
        bus: EventBus,
        settings: Settings,
        messages: MessageStore | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._messages = messages
        self._inbound = InboundWriter(messages) if messages is not None else None
        self._engines = engines
        self._bus = bus
        self._settings = settings
        self._policy = ReconnectPolicy(
            base=settings.reconnect_base,
            cap=settings.reconnect_cap,
            stable_seconds=settings.reconnect_stable_seconds,
        )
        self._live: dict[str, _Live] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._echoes = EchoGate()

    # ------------------------------------------------------------------ running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SessionManager]:
        """Supervise sessions for the duration of the block; on exit stop them all,
        keeping their desired state so the next boot restores them."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            if self._inbound is not None:
                tasks.start_soon(self._inbound.run)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop_all()
                self._tasks = None
                tasks.cancel_scope.cancel()

    async def _stop_all(self) -> None:
        async with anyio.create_task_group() as stops:
            for live in list(self._live.values()):
                stops.start_soon(self._halt, live, False)

    async def restore(self) -> int:
        """At boot: reset stale statuses, then start every session meant to run.

        Starts run with bounded concurrency and a stagger between them; one session
        failing to start never holds up the others. Returns how many were started.
        """
        reset = await self._store.reset_in_flight(
            frozenset(s.value for s in IN_FLIGHT),
            "the host restarted",
            history_limit=self._settings.session_status_history,
        )
        if self._messages is not None:
            # A send the host was making when it died never completed: say so, never
            # leave it pending.
            failed = await self._messages.fail_stale_pending()
            if failed:
                log.info("messages.stale_pending_failed", count=failed)
        if reset:
            log.info("sessions.stale_statuses_reset", count=reset)
        wanted = [s for s in await self._store.list() if s.desired_state == RUNNING]
        limiter = anyio.CapacityLimiter(self._settings.session_restore_concurrency)
        started = 0

        async def restore_one(record: SessionRecord) -> None:
            nonlocal started
            async with limiter:
                try:
                    await self.start(record.id)
                    started += 1
                except Exception as exc:
                    log.error("sessions.restore_failed", session_id=record.id, error=str(exc))

        async with anyio.create_task_group() as group:
            for index, record in enumerate(wanted):
                if index and self._settings.session_restore_stagger:
                    await anyio.sleep(self._settings.session_restore_stagger)
                group.start_soon(restore_one, record)
        return started

    # ------------------------------------------------------------------ operations

    def live(self, session_id: str) -> _Live | None:
        return self._live.get(session_id)

    def qr(self, session_id: str) -> tuple[str | None, str | None]:
        """The current QR payload and pairing code of a running session."""
        live = self._live.get(session_id)
        return (live.qr, live.pairing_code) if live is not None else (None, None)

    def engine(self, session_id: str) -> Engine | None:
        """The live engine object of a session, if any (for sends)."""
        live = self._live.get(session_id)
        return live.engine if live is not None else None

    async def start(self, session_key: str) -> SessionRecord:
        """Start a session (idempotent: a running session is left as it is)."""
        record = await self._store.resolve(session_key)
        if record.id in self._live:
            return record
        if self._tasks is None:
            raise RuntimeError("the session manager is not running")
        policy = self._policy.for_session(record.config)
        # Reserved before any await: a concurrent start sees the slot and returns.
        live = _Live(
            session_id=record.id, name=record.name, engine_name=record.engine, policy=policy
        )
        self._live[record.id] = live
        try:
            record = await self._store.update(record.id, desired_state=RUNNING)
        except BaseException:
            self._live.pop(record.id, None)
            raise
        self._tasks.start_soon(self._supervise, live, name=f"session {record.name}")
        return record

    async def stop(
        self, session_key: str, *, force: bool = False, logout: bool = False
    ) -> SessionRecord:
        """Stop a session (idempotent), keeping its auth unless ``logout``; it stays
        stopped across boots."""
        record = await self._store.resolve(session_key)
        await self._store.update(record.id, desired_state=STOPPED)
        live = self._live.get(record.id)
        if live is not None:
            live.logout_requested = logout
            await self._halt(live, force)
        return await self._store.resolve(record.id)

    async def logout(self, session_key: str) -> SessionRecord:
        """Stop a session and wipe its engine auth: the next start shows a new QR.

        A running session logs out through its live engine, which can still unlink the
        device on the phone; then a fresh engine object wipes what is left of the auth
        (the whole of it, for a session that was not running)."""
        record = await self.stop(session_key, logout=True)
        try:
            engine = self._engines.create_engine(record.engine, session_info(record))
        except Exception as exc:  # the engine is gone, or refuses the session's config
            raise LogoutError(record.name, str(exc)) from exc
        with anyio.move_on_after(self._settings.session_teardown_timeout) as scope:
            await engine.logout()
        if scope.cancelled_caught:
            log.error("session.logout_timeout", session_id=record.id)
        record, _ = await self._transition(
            record.id, SessionStatus.DISCONNECTED, "logged out", phone=None, push_name=None
        )
        return record

    async def delete(self, session_key: str) -> bool:
        """Stop and delete a session (idempotent: False when it was already gone)."""
        try:
            record = await self._store.resolve(session_key)
        except SessionNotFoundError:
            return False
        await self._store.update(record.id, desired_state=STOPPED)
        live = self._live.get(record.id)
        if live is not None:
            await self._halt(live, False)
        return await self._store.delete(record.id)

    async def _halt(self, live: _Live, force: bool) -> None:
        """Make a live session stop: cancel a start in progress, tear the engine down
        (bounded), and wait for the supervisor to finish."""
        live.stop_requested.set()
        live.ended.set()
        if live.start_scope is not None:
            live.start_scope.cancel()
        if force:
            live.scope.cancel()
        with anyio.move_on_after(self._settings.session_teardown_timeout + 1.0):
            await live.done.wait()
        if not live.done.is_set():
            live.scope.cancel()
            await live.done.wait()

    # ------------------------------------------------------------------ supervision

    async def _supervise(self, live: _Live) -> None:
        with bind_session(live.session_id, live.engine_name):
            try:
                with live.scope:
                    await self._connect_until_done(live)
            except Exception as exc:  # a bug here must not take other sessions down
                log.error("session.supervisor_failed", error=str(exc), exc_info=exc)
                live.final_status, live.final_reason = SessionStatus.FAILED, str(exc)
            finally:
                if self._live.get(live.session_id) is live:
                    del self._live[live.session_id]
                with anyio.CancelScope(shield=True):
                    await self._settle(live)
                live.done.set()

    async def _settle(self, live: _Live) -> None:
        """Write the status a finished supervision leaves (unless the row is gone)."""
        try:
            await self._transition(
                live.session_id, live.final_status, live.final_reason, reconnect_attempt=0
            )
        except SessionNotFoundError:
            pass  # deleted meanwhile: nothing to record
        except Exception as exc:
            log.error("session.settle_failed", error=str(exc))

    async def _connect_until_done(self, live: _Live) -> None:
        while not live.stop_requested.is_set():
            await self._connect_once(live)
            if live.stop_requested.is_set():
                live.final_status = SessionStatus.DISCONNECTED
                live.final_reason = "; ".join(filter(None, ["stopped", live.teardown_problem]))
                return
            if live.end_failure is not None:
                live.final_status = SessionStatus.FAILED
                live.final_reason = live.end_failure
                await self._store.update(live.session_id, desired_state=STOPPED)
                return
            end = live.end
            assert end is not None
            if end.classification is DisconnectClassification.TERMINAL:
                live.final_status, live.final_reason = SessionStatus.FAILED, end.reason
                await self._store.update(live.session_id, desired_state=STOPPED)
                return
            if end.classification is DisconnectClassification.LOGGED_OUT:
                live.final_status, live.final_reason = SessionStatus.DISCONNECTED, end.reason
                await self._store.update(
                    live.session_id, desired_state=STOPPED, phone=None, push_name=None
                )
                return
            await self._wait_before_reconnect(live, end)

    async def _wait_before_reconnect(self, live: _Live, end: DisconnectedEvent) -> None:
        if live.ready_since is not None and (
            time.monotonic() - live.ready_since >= live.policy.stable_seconds
        ):
            live.attempt = 0  # it was stable: a fresh budget
        live.ready_since = None
        if end.classification is DisconnectClassification.RESTART_NOW:
            return
        live.attempt += 1
        await self._transition(
            live.session_id,
            SessionStatus.INITIALIZING,
            f"reconnecting (attempt {live.attempt}): {end.reason}",
            reconnect_attempt=live.attempt,
            last_error=end.reason or None,
        )
        if live.attempt % live.policy.loop_every == 0:
            log.warning("session.reconnect_loop", attempt=live.attempt, reason=end.reason)
            await self._announce(
                live,
                "session.reconnect_loop",
                reconnect_loop_payload(
                    session_name=live.name, attempt=live.attempt, reason=end.reason
                ),
            )
        with anyio.move_on_after(live.policy.delay(live.attempt)):
            await live.stop_requested.wait()

    async def _connect_once(self, live: _Live) -> None:
        """One engine object's life: create, start, wait for its end, tear it down."""
        live.end, live.end_failure, live.visible = None, None, False
        live.ended = anyio.Event()
        if live.stop_requested.is_set():
            live.ended.set()
        record = await self._store.resolve(live.session_id)
        await self._transition(live.session_id, SessionStatus.INITIALIZING, "starting")
        try:
            engine = self._engines.create_engine(live.engine_name, session_info(record))
        except Exception as exc:
            live.end_failure = f"cannot create the {live.engine_name} engine: {exc}"
            return
        live.engine = engine
        async with anyio.create_task_group() as engine_tasks:
            engine_tasks.start_soon(self._init_watchdog, live, engine)
            live.start_scope = anyio.CancelScope()
            try:
                with live.start_scope:
                    await engine.start(self._sink(live, engine), engine_tasks)
            except Exception as exc:
                live.end_failure = f"the engine failed to start: {exc}"
                live.ended.set()
            finally:
                live.start_scope = None
            await live.ended.wait()
            await self._teardown(live, engine)
            engine_tasks.cancel_scope.cancel()
        live.engine = None
        live.qr = live.pairing_code = None

    async def _teardown(self, live: _Live, engine: Engine) -> None:
        logged_out = live.logout_requested or (
            live.end is not None and live.end.classification is DisconnectClassification.LOGGED_OUT
        )
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._settings.session_teardown_timeout) as scope:
                try:
                    await (engine.logout() if logged_out else engine.stop())
                except Exception as exc:
                    log.error("session.teardown_failed", error=str(exc), exc_info=exc)
            if scope.cancelled_caught:
                seconds = self._settings.session_teardown_timeout
                log.error("session.teardown_timeout", seconds=seconds)
                live.teardown_problem = f"the engine did not stop within {seconds:g} s"

    async def _init_watchdog(self, live: _Live, engine: Engine) -> None:
        with anyio.move_on_after(self._settings.session_init_deadline):
            await live.ended.wait()
            return
        if live.engine is engine and not live.visible and not live.ended.is_set():
            seconds = self._settings.session_init_deadline
            live.end_failure = f"the engine showed no QR and was not ready within {seconds:g} s"
            log.error("session.init_deadline", seconds=seconds)
            live.ended.set()

    # ------------------------------------------------------------------ engine events

    def _sink(self, live: _Live, engine: Engine) -> Callable[[EngineEvent], Any]:
        async def sink(event: EngineEvent) -> None:
            # Identity, not equality: only the slot's current engine may move the session.
            if self._live.get(live.session_id) is not live or live.engine is not engine:
                log.debug("session.stale_event_ignored", kind=event.kind)
                return
            # Once the connection is ending, its status events change nothing; messages
            # it still reports (until its teardown is over) are real and are stored.
            if live.ended.is_set() and not isinstance(event, _MESSAGE_EVENTS):
                return
            try:
                await self._on_event(live, event)
            except Exception as exc:  # never let the host's bookkeeping break an engine
                log.error("session.event_failed", kind=event.kind, error=str(exc), exc_info=exc)

        return sink

    async def _on_event(self, live: _Live, event: EngineEvent) -> None:
        status = status_for(event)
        if isinstance(event, QrEvent):
            live.visible, live.qr = True, event.payload
            await self._announce(
                live, "session.qr", qr_payload(session_name=live.name, qr=event.payload)
            )
        elif isinstance(event, PairingCodeEvent):
            live.visible, live.pairing_code = True, event.code
        elif isinstance(event, AuthenticatedEvent):
            live.qr = live.pairing_code = None
            await self._announce(
                live, "session.authenticated", authenticated_payload(session_name=live.name)
            )
        elif isinstance(event, ReadyEvent):
            live.visible, live.ready_since = True, time.monotonic()
            live.qr = live.pairing_code = None
            phone = event.own_id.split("@", 1)[0].split(":", 1)[0]
            await self._transition(
                live.session_id,
                SessionStatus.READY,
                None,
                phone=phone,
                push_name=event.push_name,
                connected_at=utc_now(),
                last_active=utc_now(),
                reconnect_attempt=0,
                last_error=None,
            )
            return
        elif isinstance(event, DisconnectedEvent):
            live.end = event
            await self._announce(
                live,
                "session.disconnected",
                disconnected_payload(
                    session_name=live.name,
                    classification=event.classification,
                    code=event.engine_code,
                    reason=event.reason,
                ),
            )
            live.ended.set()
            return  # the supervisor decides the status (reconnect, disconnected, failed)
        elif isinstance(event, MessageEvent | OwnMessageEvent | AckEvent):
            await self._on_message_event(live, event)
            return
        elif isinstance(event, RevokeEvent | ReactionEvent):
            await self._on_message_action(live, event)
            return
        elif isinstance(event, ErrorEvent):
            log.warning("session.engine_error", error=event.message, code=event.code)
            await self._store.update(live.session_id, last_error=event.message)
            return
        if status is not None:
            await self._transition(live.session_id, status, None)

    async def _on_message_event(
        self, live: _Live, event: MessageEvent | OwnMessageEvent | AckEvent
    ) -> None:
        """Store a message or an ack (re-fired events are harmless). The store announces
        what changed (``message.*`` events), once it is committed."""
        if self._messages is None:
            return
        await self._touch_last_active(live)
        if isinstance(event, AckEvent):
            await self._messages.apply_ack(live.session_id, event.message_id, event.status)
            return
        if isinstance(event, MessageEvent) and self._inbound is not None:
            # Group-committed with every other engine's inbound messages.
            await self._inbound.write(live.session_id, event.message)
            return
        # An echo of a send still in progress waits for it (see sending()).
        if not self._echoes.hold(live.session_id, live.name, event.message):
            await self._store_own(live.session_id, event.message)

    async def _on_message_action(self, live: _Live, event: RevokeEvent | ReactionEvent) -> None:
        """Announce a revoke or a reaction, naming the message's record when it has one
        (stored rows are left as they are: the event is the news)."""
        record_id: str | None = None
        if self._messages is not None:
            try:
                record = await self._messages.by_message_id(live.session_id, event.message_id)
                record_id = record.id
            except MessageNotFoundError:
                pass  # a message from before the host knew the session, say
        if isinstance(event, RevokeEvent):
            data = revoked_payload(
                session_name=live.name,
                chat_id=event.chat_id,
                message_id=event.message_id,
                id=record_id,
                sender=event.sender,
                from_me=event.from_me,
            )
            await self._announce(live, "message.revoked", data, lane=event.chat_id)
        else:
            data = reaction_payload(
                session_name=live.name,
                chat_id=event.chat_id,
                message_id=event.message_id,
                id=record_id,
                emoji=event.emoji,
                sender=event.sender,
                from_me=event.from_me,
            )
            await self._announce(live, "message.reaction", data, lane=event.chat_id)

    async def _store_own(self, session_id: str, message: EngineMessage) -> None:
        """Store an own message one by one (the store merges it with a send that stored
        its id meanwhile, and announces ``message.sent`` if it is new)."""
        assert self._messages is not None
        await self._messages.store_own(session_id, message)

    @asynccontextmanager
    async def sending(self, session: SessionRecord) -> AsyncIterator[SendInProgress]:
        """Bracket a send from asking the engine to recording the outcome.

        Own messages the engine reports meanwhile are held (see
        :mod:`~enginehost.core.sessions.echoes`). At the end the send's own echo is
        dropped, its row being the message (whose ``message.sent`` the store announces
        when it marks the row sent); the other echoes are stored as usual. Run it
        shielded from cancellation: the end must run.
        """
        send = self._echoes.begin(session.id)
        try:
            yield send
        finally:
            ended = self._echoes.end(send)
            for held in ended.released:
                try:
                    await self._store_own(held.session_id, held.message)
                except Exception as exc:  # the send itself is done: report, do not fail it
                    log.error(
                        "session.own_message_failed",
                        session_id=held.session_id,
                        message_id=held.message.message_id,
                        error=str(exc),
                        exc_info=exc,
                    )

    async def _touch_last_active(self, live: _Live) -> None:
        """Record message activity in ``lastActive``, at most once a minute per session
        (a busy session must not turn every message into a session-row write)."""
        now = time.monotonic()
        if now - live.last_active_written < LAST_ACTIVE_INTERVAL:
            return
        live.last_active_written = now
        await self._store.update(live.session_id, last_active=utc_now())

    # ------------------------------------------------------------------ status

    async def _transition(
        self, session_id: str, status: SessionStatus, reason: str | None, **changes: Any
    ) -> tuple[SessionRecord, str | None]:
        record, previous = await self._store.transition(
            session_id,
            status.value,
            reason=reason,
            history_limit=self._settings.session_status_history,
            **changes,
        )
        if previous != status.value:
            # The store staged the webhook deliveries with the status itself.
            data = session_status_payload(
                session_name=record.name,
                engine=record.engine,
                status=status,
                previous=previous,
                reason=reason,
            )
            self._bus.publish(HostEvent(type="session.status", session_id=session_id, data=data))
        return record, previous

    async def _announce(
        self, live: _Live, event_type: str, data: dict[str, Any], *, lane: str = ""
    ) -> None:
        """Publish a session event that changes no row, and stage its webhook deliveries
        in a transaction of their own (awaited: a session's events stay in order)."""
        self._bus.publish(HostEvent(type=event_type, session_id=live.session_id, data=data))
        outbox = self._outbox
        if outbox is None or self._messages is None or not outbox.index:
            return
        if not outbox.index.matching_any(event_type, live.session_id):
            return
        try:
            await self._messages.writes.submit(
                lambda connection: outbox.stage(
                    connection, event_type, live.session_id, data, lane=lane
                )
            )
        except Exception as exc:  # the session goes on; the event is logged as lost
            log.error("session.event_not_staged", event_type=event_type, error=str(exc))
