"""The ``baileys`` engine object: one session connection, run by a shared sidecar.

The lifecycle (attach to a sidecar, start, queue and report events, teardown) is the
generic :class:`~enginehost.sidecar.SidecarEngine`; this module adds what is Baileys':
the session's auth folder, the JID dialect, the disconnect codes and the events.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread

from enginehost import (
    DisconnectedEvent,
    EngineEvent,
    ErrorEvent,
    SessionInfo,
)
from enginehost.core.logging import get_logger
from enginehost.plugins.baileys_bridge.disconnects import classify
from enginehost.plugins.baileys_bridge.jids import to_library, to_neutral
from enginehost.sidecar import ConnectSlots, SidecarEngine
from enginehost.sidecar.engine import Attach
from enginehost.sidecar.events import Converter, converters, remove_tree

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
        await anyio.to_thread.run_sync(remove_tree, self.auth_dir)

    def text_target(self, chat_id: str) -> Mapping[str, Any]:
        return {"jid": to_library(chat_id)}

    async def request_pairing_code(self, phone_number: str) -> str:
        result = await self.call("session.pairingCode", {"phone": phone_number})
        return str(result["code"])


# ---------------------------------------------------------------------- conversions


def _close(data: Mapping[str, Any]) -> EngineEvent:
    code = data.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    reason = str(data.get("reason") or "connection closed")
    # The library's messages ("Stream Errored (unknown)") rarely name the code.
    if code is not None:
        reason = f"{reason} (code {code})"
    return DisconnectedEvent(classify(code), engine_code=code, reason=reason)


def _stuck(data: Mapping[str, Any]) -> EngineEvent:
    return ErrorEvent(
        message="the session held incoming messages waiting for the phone's app-state key "
        f"({data.get('reason') or 'no key'}); they were released",
        code="stuck_buffering",
    )


_CONVERTERS: dict[str, Converter] = {
    **converters(to_neutral),
    "close": _close,
    "stuck": _stuck,
}
