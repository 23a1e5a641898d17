"""An engine object whose connection lives in a shared sidecar: the part every bridge
has in common.

A :class:`SidecarEngine` attaches its session to a sidecar of its plugin's pool, asks
the sidecar to start the session, and turns the sidecar's events into the host's engine
events through the bridge's own :meth:`SidecarEngine.convert`. Events are queued per
session and reported in order by a task of the engine's own, so a slow sink for one
session does not hold up the sidecar's other sessions until that queue is full (10,000
events); then the sidecar's output waits rather than the host's memory growing, and
the sidecar's heartbeat knows the host, not the sidecar, is behind.

Subclasses give :meth:`start_params`, :meth:`convert` and :meth:`wipe_auth`, plus the
send operations of their capabilities (through :meth:`call`).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from enginehost.core.engine import (
    DisconnectClassification,
    DisconnectedEvent,
    Engine,
    EngineError,
    EngineEvent,
    EngineNotRunningError,
    ErrorEvent,
    EventSink,
    SendResult,
    SessionInfo,
)
from enginehost.core.logging import get_logger
from enginehost.sidecar.pool import SessionLink, SidecarLease
from enginehost.sidecar.process import SidecarError, SidecarGoneError

__all__ = ["ConnectSlots", "SidecarEngine", "epoch_time"]

_log = get_logger("enginehost.sidecar.engine")

_QUEUE = 10_000
# Shorter than the host's teardown timeout (10 s by default), so a slow sidecar answer
# still leaves time to detach cleanly.
_STOP_TIMEOUT = 5.0

Attach = Callable[[str, SessionLink], Awaitable[SidecarLease]]


class ConnectSlots:
    """Bounds how many sessions of a bridge connect at once.

    A slot is held from the session's start in the sidecar until the first event that
    settles the connect (a QR, an open connection, a close) or the engine stops.
    """

    def __init__(self, limit: int) -> None:
        self._semaphore = anyio.Semaphore(limit)

    async def acquire(self, within: float) -> Callable[[], None] | None:
        """Wait up to ``within`` seconds for a slot: an idempotent release, or ``None``."""
        with anyio.move_on_after(within):
            await self._semaphore.acquire()
            return self._releaser()
        return None

    def _releaser(self) -> Callable[[], None]:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._semaphore.release()

        return release


def epoch_time(value: Any) -> datetime:
    """Seconds since the epoch from the wire as a UTC time; nonsense becomes now."""
    if isinstance(value, int | float) and value > 0:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    return datetime.now(UTC)


class SidecarEngine(Engine):
    """One connection of one session, run by a sidecar (see the module docstring)."""

    settling_events: ClassVar[frozenset[str]] = frozenset({"qr", "open", "close"})
    """Sidecar events after which the session no longer holds a connect slot."""

    def __init__(
        self,
        session: SessionInfo,
        *,
        engine_name: str,
        attach: Attach,
        slots: ConnectSlots,
        slot_wait: float = 60.0,
    ) -> None:
        super().__init__(session, engine_name=engine_name)
        self._attach = attach
        self._slots = slots
        self._slot_wait = slot_wait
        self._lease: SidecarLease | None = None
        self._release_slot: Callable[[], None] = lambda: None
        self._queue_in, self._queue_out = _queue()
        self._connection_over = False

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def start_params(self) -> Mapping[str, Any]:
        """The params of ``session.start`` (besides ``session``)."""

    @abstractmethod
    def convert(self, event: str, data: Mapping[str, Any]) -> EngineEvent | None:
        """The engine event for a sidecar event; ``None`` to ignore it. May raise on
        malformed data: the caller reports that as an :class:`ErrorEvent`."""

    @abstractmethod
    async def wipe_auth(self) -> None:
        """Delete the session's stored auth (the host's part of a logout)."""

    def text_target(self, chat_id: str) -> Mapping[str, Any]:
        """The params naming the chat of ``message.sendText`` (the library's dialect)."""
        return {"chatId": chat_id}

    @property
    def sidecar_pid(self) -> int | None:
        """The PID of the sidecar serving this connection (for operators and tests)."""
        return self._lease.pid if self._lease is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def _start(self, sink: EventSink) -> None:
        self.spawn(self._report, sink, name=f"{self.engine_name}-events-{self.session.id}")
        # Bounded: the host's init deadline runs meanwhile, and a session that waits
        # past it would fail for good; a transient disconnect retries it with backoff.
        release = await self._slots.acquire(self._slot_wait)
        if release is None:
            await self._unavailable(
                "connect_slots_busy",
                f"no connect slot within {self._slot_wait:g} s (max_concurrent_connects)",
            )
            return
        self._release_slot = release
        try:
            # Raises EngineError naming the fix when the bridge cannot run at all.
            self._lease = await self._attach(self.session.id, self)
            await self._lease.request("session.start", self.start_params())
        except BaseException as exc:
            # _stop is not called when _start fails, and a stop that cancels a start
            # lands here too: what the sidecar may have started must not outlive us.
            with anyio.CancelScope(shield=True):
                await self._leave_sidecar()
            if isinstance(exc, SidecarGoneError) or (
                isinstance(exc, SidecarError) and exc.code == "timeout"
            ):
                # The sidecar died or lagged: worth another try, not a failed session.
                await self._unavailable("sidecar_unavailable", f"the sidecar failed: {exc}")
                return
            if isinstance(exc, SidecarError):
                raise EngineError(
                    f"{self.engine_name} sidecar could not start the session ({exc.code}): {exc}"
                ) from exc
            raise

    async def _unavailable(self, code: str, reason: str) -> None:
        """Report a start that could not happen now as a transient disconnect."""
        self._connection_over = True
        await self._enqueue(
            DisconnectedEvent(DisconnectClassification.TRANSIENT, engine_code=code, reason=reason)
        )

    async def _report(self, sink: EventSink) -> None:
        async with self._queue_out:
            async for event in self._queue_out:
                await sink(event)

    async def _stop(self) -> None:
        await self._leave_sidecar()
        self._queue_in.close()

    async def _leave_sidecar(self, method: str = "session.stop") -> None:
        """End the session in the sidecar (``session.stop``, or ``session.logout`` to
        unlink first), so it forgets it, and stop hearing from it."""
        self._release_slot()
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                try:
                    await lease.request(method, {}, seconds=_STOP_TIMEOUT)
                except SidecarError as exc:
                    _log.warning(
                        "sidecar_engine.leave_failed",
                        session_id=self.session.id,
                        method=method,
                        error=str(exc),
                    )
        finally:
            if lease is not None:
                lease.detach()

    async def _logout(self) -> None:
        # Connected: logout unlinks on the server, then ends. After a close the sidecar
        # still holds the session: stop makes it forget it. The host's part, wiping
        # the auth state, follows either way.
        await self._leave_sidecar("session.stop" if self._connection_over else "session.logout")
        self._queue_in.close()
        await self.wipe_auth()

    # ------------------------------------------------------------------ sidecar -> host

    async def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        try:
            converted = self.convert(event, data)
        except Exception as exc:  # a bad event must never reach the sidecar's reader
            _log.warning(
                "sidecar_engine.event_malformed",
                session_id=self.session.id,
                sidecar_event=event,
                error=repr(exc),
            )
            converted = ErrorEvent(message=f"malformed {event} event from the sidecar: {exc}")
        if converted is None:
            return
        if event in self.settling_events:
            self._release_slot()
        if isinstance(converted, DisconnectedEvent):
            self._connection_over = True
        await self._enqueue(converted)

    async def on_lost(self, reason: str) -> None:
        self._release_slot()
        self._connection_over = True
        self._lease = None
        await self._enqueue(
            DisconnectedEvent(
                DisconnectClassification.TRANSIENT,
                engine_code="sidecar_lost",
                reason=f"the sidecar process ended: {reason}",
            )
        )

    async def _enqueue(self, event: EngineEvent) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._queue_in.send(event)

    # ------------------------------------------------------------------ requests

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        result = await self.call(
            "message.sendText",
            {**self.text_target(chat_id), "text": text, "quotedId": quoted_message_id},
        )
        return SendResult(
            message_id=str(result["id"]), timestamp=epoch_time(result.get("timestamp"))
        )

    async def call(
        self, method: str, params: Mapping[str, Any], *, needs_connection: bool = True
    ) -> Mapping[str, Any]:
        """A request about this session, with the sidecar's failures in the engine
        contract's terms: no connection (or ``not_connected``, ``no_session``) is
        :class:`EngineNotRunningError`, anything else :class:`EngineError`."""
        self.require_running()
        lease = self._lease
        if lease is None or (needs_connection and self._connection_over):
            raise EngineNotRunningError(
                f"{self.engine_name} session {self.session.name!r} has no open connection"
            )
        try:
            return await lease.request(method, params)
        except SidecarGoneError as exc:
            raise EngineNotRunningError(f"the sidecar went away: {exc}") from exc
        except SidecarError as exc:
            if exc.code in ("not_connected", "no_session"):
                raise EngineNotRunningError(f"{method}: {exc}") from exc
            raise EngineError(f"{method} failed: {exc}") from exc


def _queue() -> tuple[MemoryObjectSendStream[EngineEvent], MemoryObjectReceiveStream[EngineEvent]]:
    return anyio.create_memory_object_stream[EngineEvent](_QUEUE)
