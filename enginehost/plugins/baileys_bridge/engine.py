"""The ``baileys`` engine object: one session connection, run by a shared sidecar.

The lifecycle (attach to a sidecar, start, queue and report events, teardown) is the
generic :class:`~enginehost.sidecar.SidecarEngine`; this module adds what is Baileys':
the session's auth folder, the JID dialect, the disconnect codes and the events.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread

from enginehost import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
    DisconnectedEvent,
    EngineEvent,
    EngineMessage,
    ErrorEvent,
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
from enginehost.sidecar import ConnectSlots, SidecarEngine, epoch_time
from enginehost.sidecar.engine import Attach

__all__ = ["BaileysEngine", "ConnectSlots"]

_log = get_logger("enginehost.baileys")


class BaileysEngine(SidecarEngine):
    """One connection of one session on the ``baileys`` engine."""

    def __init__(
        self,
        session: SessionInfo,
        *,
        engine_name: str,
        auth_dir: Path,
        attach: Attach,
        slots: ConnectSlots,
        slot_wait: float = 60.0,
    ) -> None:
        super().__init__(
            session, engine_name=engine_name, attach=attach, slots=slots, slot_wait=slot_wait
        )
        self.auth_dir = auth_dir

    def start_params(self) -> Mapping[str, Any]:
        return {"authDir": str(self.auth_dir), "pairingPhone": None}

    def convert(self, event: str, data: Mapping[str, Any]) -> EngineEvent | None:
        converter = _CONVERTERS.get(event)
        if converter is None:
            _log.debug("baileys.event_ignored", session_id=self.session.id, sidecar_event=event)
            return None
        return converter(data)

    async def wipe_auth(self) -> None:
        await anyio.to_thread.run_sync(_remove_tree, self.auth_dir)

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        result = await self.call(
            "message.sendText",
            {"jid": to_library(chat_id), "text": text, "quotedId": quoted_message_id},
        )
        return SendResult(
            message_id=str(result["id"]), timestamp=epoch_time(result.get("timestamp"))
        )

    async def request_pairing_code(self, phone_number: str) -> str:
        result = await self.call("session.pairingCode", {"phone": phone_number})
        return str(result["code"])


# ---------------------------------------------------------------------- conversions


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
        timestamp=epoch_time(data.get("timestamp")),
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
