"""The protocol's session events as engine events, for any bridge.

Every sidecar reports messages, acks, revokes, reactions, QRs and errors in the same
shapes (``docs/sidecar-protocol.md``); only chat ids differ by library. A bridge builds
its converter table with :func:`converters`, giving its own ``neutral`` function (the
library's chat id in the host's dialect) and its own ``open``/``close`` handling.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from enginehost.core.engine import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
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
)
from enginehost.sidecar.engine import epoch_time

__all__ = ["Converter", "converters", "remove_tree"]

Converter = Callable[[Mapping[str, Any]], EngineEvent]
Neutral = Callable[[str | None], str]


def _message_type(value: Any) -> MessageType:
    try:
        return MessageType(value)
    except ValueError:
        return MessageType.UNKNOWN


def converters(neutral: Neutral) -> dict[str, Converter]:
    """Converters for the events every sidecar sends, with chat ids through ``neutral``.

    ``open`` becomes a :class:`ReadyEvent`; ``close`` is the bridge's own (its codes),
    as are library-specific events.
    """

    def message(data: Mapping[str, Any]) -> EngineEvent:
        body = data.get("body")
        built = EngineMessage(
            message_id=str(data["id"]),
            chat_id=neutral(data["chat"]),
            sender=neutral(data.get("sender") or data["chat"]),
            from_me=bool(data.get("fromMe")),
            type=_message_type(data.get("type")),
            body=body if isinstance(body, str) else None,
            timestamp=epoch_time(data.get("timestamp")),
            has_media=bool(data.get("hasMedia")),
            quoted_message_id=data.get("quotedId") or None,
            raw={"pushName": data["pushName"]} if data.get("pushName") else {},
        )
        return OwnMessageEvent(built) if built.from_me else MessageEvent(built)

    def ready(data: Mapping[str, Any]) -> EngineEvent:
        me = data.get("me") or {}
        name = me.get("name")
        return ReadyEvent(
            own_id=neutral(str(me.get("id") or "")),
            push_name=name if isinstance(name, str) else None,
        )

    return {
        "qr": lambda data: QrEvent(payload=str(data["qr"])),
        "pairing_code": lambda data: PairingCodeEvent(code=str(data["code"])),
        "authenticated": lambda data: AuthenticatedEvent(),
        "open": ready,
        "message": message,
        "ack": lambda data: AckEvent(
            message_id=str(data["id"]),
            status=AckStatus(data["status"]),
            chat_id=neutral(data.get("chat")) or None,
        ),
        "revoke": lambda data: RevokeEvent(
            chat_id=neutral(data["chat"]),
            message_id=str(data["id"]),
            sender=neutral(data.get("sender")) or None,
            from_me=bool(data.get("fromMe")),
        ),
        "reaction": lambda data: ReactionEvent(
            chat_id=neutral(data["chat"]),
            message_id=str(data["id"]),
            emoji=str(data.get("emoji") or ""),
            sender=neutral(data.get("sender")) or None,
            from_me=bool(data.get("fromMe")),
        ),
        "error": lambda data: ErrorEvent(
            message=str(data.get("message") or "sidecar error"), code=data.get("code")
        ),
    }


def remove_tree(path: Path, attempts: int = 5) -> None:
    """Delete a session's stored auth (a folder), retrying briefly while files are busy.

    Blocking: run it in a worker thread.
    """
    for attempt in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
