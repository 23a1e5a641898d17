"""The ``baileys`` engine object: one session connection, run by a shared sidecar.

The engine attaches its session to a sidecar of the plugin's pool, asks the sidecar to
start a socket, and turns the sidecar's events into the host's engine events. Events
are queued per session and reported in order by a task of the engine's own, so a slow
sink for one session does not hold up the sidecar's other sessions until that queue is
full (10,000 events); then the sidecar's output waits rather than the host's memory
growing, and the sidecar's heartbeat knows the host, not the sidecar, is behind.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from enginehost import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
    DisconnectClassification,
    DisconnectedEvent,
    Engine,
    EngineError,
    EngineEvent,
    EngineMessage,
    EngineNotRunningError,
    ErrorEvent,
    EventSink,
    MessageEvent,
    MessageType,
    OwnMessageEvent,
    PairingCodeEvent,
    QrEvent,
    ReactionEvent,
    ReadyEvent,
    RevokeEvent,
    SendResult,
    SessionInfo,
)
from enginehost.core.logging import get_logger
from enginehost.plugins.baileys_bridge.disconnects import classify
from enginehost.plugins.baileys_bridge.jids import to_library, to_neutral
from enginehost.sidecar import SessionLink, SidecarError, SidecarGoneError, SidecarLease

__all__ = ["BaileysEngine", "ConnectSlots"]

_log = get_logger("enginehost.baileys")

_QUEUE = 10_000
# Shorter than the host's teardown timeout (10 s by default), so a slow sidecar answer
# still leaves time to detach cleanly.
_STOP_TIMEOUT = 5.0


class ConnectSlots:
    """Bounds how many sessions connect at once (see ``max_concurrent_connects``).

    A slot is held from the socket's start until it shows a QR, opens, closes, or the
    engine stops, whichever comes first.
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


class BaileysEngine(Engine):
    """One connection of one session on the ``baileys`` engine."""

    def __init__(
        self,
        session: SessionInfo,
        *,
        engine_name: str,
        auth_dir: Path,
        attach: Callable[[str, SessionLink], Awaitable[SidecarLease]],
        slots: ConnectSlots,
        slot_wait: float = 60.0,
    ) -> None:
        super().__init__(session, engine_name=engine_name)
        self.auth_dir = auth_dir
        self._attach = attach
        self._slots = slots
        self._slot_wait = slot_wait
        self._lease: SidecarLease | None = None
        self._release_slot: Callable[[], None] = lambda: None
        self._queue_in, self._queue_out = _queue()
        self._connection_over = False

    @property
    def sidecar_pid(self) -> int | None:
        """The PID of the sidecar serving this connection (for operators and tests)."""
        return self._lease.pid if self._lease is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def _start(self, sink: EventSink) -> None:
        self.spawn(self._report, sink, name=f"baileys-events-{self.session.id}")
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
            # Raises EngineError naming the fix when Node or the dependencies are missing.
            self._lease = await self._attach(self.session.id, self)
            await self._lease.request(
                "session.start",
                {"authDir": str(self.auth_dir), "pairingPhone": None},
            )
        except BaseException as exc:
            # _stop is not called when _start fails, and a stop that cancels a start
            # lands here too: the socket the sidecar may have made must not outlive us.
            with anyio.CancelScope(shield=True):
                await self._leave_sidecar()
            if isinstance(exc, SidecarGoneError) or (
                isinstance(exc, SidecarError) and exc.code == "timeout"
            ):
                # The sidecar died or lagged: worth another try, not a failed session.
                await self._unavailable("sidecar_unavailable", f"the sidecar failed: {exc}")
                return
            if isinstance(exc, SidecarError):
                raise EngineError(f"baileys sidecar could not start the session: {exc}") from exc
            raise

    async def _unavailable(self, code: str, reason: str) -> None:
        """Report a start that could not happen now as a transient disconnect."""
        self._connection_over = True
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._queue_in.send(
                DisconnectedEvent(
                    DisconnectClassification.TRANSIENT, engine_code=code, reason=reason
                )
            )

    async def _report(self, sink: EventSink) -> None:
        async with self._queue_out:
            async for event in self._queue_out:
                await sink(event)

    async def _stop(self) -> None:
        await self._leave_sidecar()
        self._queue_in.close()

    async def _leave_sidecar(self, method: str = "session.stop") -> None:
        """End the session's socket in the sidecar (``session.stop``, or ``session.logout``
        to unlink first), forget the session there, and stop hearing from it."""
        self._release_slot()
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                try:
                    await lease.request(method, {}, seconds=_STOP_TIMEOUT)
                except SidecarError as exc:
                    _log.warning(
                        "baileys.leave_failed",
                        session_id=self.session.id,
                        method=method,
                        error=str(exc),
                    )
        finally:
            if lease is not None:
                lease.detach()

    async def _logout(self) -> None:
        # Connected: logout unlinks on the server, then ends. After a close the sidecar
        # still holds the session (its caches): stop makes it forget them. The host's
        # part, wiping the auth state, follows either way.
        await self._leave_sidecar("session.stop" if self._connection_over else "session.logout")
        self._queue_in.close()
        await anyio.to_thread.run_sync(_remove_tree, self.auth_dir)

    # ------------------------------------------------------------------ sidecar -> host

    async def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        converted = self._convert(event, data)
        if converted is None:
            return
        if event in ("qr", "open", "close"):
            self._release_slot()
        if isinstance(converted, DisconnectedEvent):
            self._connection_over = True
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._queue_in.send(converted)

    async def on_lost(self, reason: str) -> None:
        self._release_slot()
        self._connection_over = True
        self._lease = None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._queue_in.send(
                DisconnectedEvent(
                    DisconnectClassification.TRANSIENT,
                    engine_code="sidecar_lost",
                    reason=f"the sidecar process ended: {reason}",
                )
            )

    def _convert(self, event: str, data: Mapping[str, Any]) -> EngineEvent | None:
        converter = _CONVERTERS.get(event)
        if converter is None:
            _log.debug("baileys.event_ignored", session_id=self.session.id, sidecar_event=event)
            return None
        try:
            return converter(data)
        except Exception as exc:  # a bad event must never reach the sidecar's reader
            _log.warning(
                "baileys.event_malformed",
                session_id=self.session.id,
                sidecar_event=event,
                error=str(exc),
            )
            return ErrorEvent(message=f"malformed {event} event from the sidecar: {exc}")

    # ------------------------------------------------------------------ sends

    async def _call(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        self.require_running()
        lease = self._lease
        if lease is None or self._connection_over:
            raise EngineNotRunningError(
                f"baileys session {self.session.name!r} has no open connection"
            )
        try:
            return await lease.request(method, params)
        except SidecarGoneError as exc:
            raise EngineNotRunningError(f"the sidecar went away: {exc}") from exc
        except SidecarError as exc:
            if exc.code == "not_connected":
                raise EngineNotRunningError(str(exc)) from exc
            raise EngineError(f"{method} failed: {exc}") from exc

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        result = await self._call(
            "message.sendText",
            {"jid": to_library(chat_id), "text": text, "quotedId": quoted_message_id},
        )
        return SendResult(message_id=str(result["id"]), timestamp=_time(result.get("timestamp")))

    async def request_pairing_code(self, phone_number: str) -> str:
        self.require_running()
        if self._lease is None:
            raise EngineNotRunningError(f"baileys session {self.session.name!r} is not connected")
        try:
            result = await self._lease.request("session.pairingCode", {"phone": phone_number})
        except SidecarGoneError as exc:
            raise EngineNotRunningError(f"the sidecar went away: {exc}") from exc
        except SidecarError as exc:
            if exc.code in ("not_connected", "no_session"):
                raise EngineNotRunningError(f"no pairing code now: {exc}") from exc
            raise EngineError(f"pairing code request failed: {exc}") from exc
        return str(result["code"])


# ---------------------------------------------------------------------- conversions


def _queue() -> tuple[MemoryObjectSendStream[EngineEvent], MemoryObjectReceiveStream[EngineEvent]]:
    return anyio.create_memory_object_stream[EngineEvent](_QUEUE)


def _time(value: Any) -> datetime:
    if isinstance(value, int | float) and value > 0:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            pass  # nonsense from the wire: now is the best guess
    return datetime.now(UTC)


def _message_type(value: Any) -> MessageType:
    try:
        return MessageType(value)
    except ValueError:
        return MessageType.UNKNOWN


def _message(data: Mapping[str, Any]) -> EngineEvent:
    message = EngineMessage(
        message_id=str(data["id"]),
        chat_id=to_neutral(data["chat"]),
        sender=to_neutral(data.get("sender") or data["chat"]),
        from_me=bool(data.get("fromMe")),
        type=_message_type(data.get("type")),
        body=data.get("body") if isinstance(data.get("body"), str) else None,
        timestamp=_time(data.get("timestamp")),
        has_media=bool(data.get("hasMedia")),
        quoted_message_id=data.get("quotedId") or None,
        raw={"pushName": data["pushName"]} if data.get("pushName") else {},
    )
    return OwnMessageEvent(message) if message.from_me else MessageEvent(message)


def _me(data: Mapping[str, Any]) -> tuple[str, str | None]:
    me = data.get("me") or {}
    name = me.get("name")
    return to_neutral(str(me.get("id") or "")), name if isinstance(name, str) else None


def _ready(data: Mapping[str, Any]) -> EngineEvent:
    own_id, name = _me(data)
    return ReadyEvent(own_id=own_id, push_name=name)


def _close(data: Mapping[str, Any]) -> EngineEvent:
    code = data.get("code")
    code = code if isinstance(code, int) else None
    reason = str(data.get("reason") or "connection closed")
    # The library's messages ("Stream Errored (unknown)") rarely name the code.
    if code is not None:
        reason = f"{reason} (code {code})"
    return DisconnectedEvent(classify(code), engine_code=code, reason=reason)


_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], EngineEvent]] = {
    "qr": lambda data: QrEvent(payload=str(data["qr"])),
    "pairing_code": lambda data: PairingCodeEvent(code=str(data["code"])),
    "authenticated": lambda data: AuthenticatedEvent(),
    "open": _ready,
    "close": _close,
    "message": _message,
    "ack": lambda data: AckEvent(
        message_id=str(data["id"]),
        status=AckStatus(data["status"]),
        chat_id=to_neutral(data.get("chat")) or None,
    ),
    "revoke": lambda data: RevokeEvent(
        chat_id=to_neutral(data["chat"]),
        message_id=str(data["id"]),
        sender=to_neutral(data.get("sender")) or None,
        from_me=bool(data.get("fromMe")),
    ),
    "reaction": lambda data: ReactionEvent(
        chat_id=to_neutral(data["chat"]),
        message_id=str(data["id"]),
        emoji=str(data.get("emoji") or ""),
        sender=to_neutral(data.get("sender")) or None,
        from_me=bool(data.get("fromMe")),
    ),
    "stuck": lambda data: ErrorEvent(
        message="the session held incoming messages waiting for the phone's app-state key "
        f"({data.get('reason') or 'no key'}); they were released",
        code="stuck_buffering",
    ),
    "error": lambda data: ErrorEvent(
        message=str(data.get("message") or "sidecar error"), code=data.get("code")
    ),
}


def _remove_tree(path: Path) -> None:
    """Delete a session's auth state, retrying briefly while files are busy."""
    for attempt in range(5):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
