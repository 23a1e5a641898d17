"""The ``webjs`` engine object: one session's browser, driven by a shared sidecar.

The lifecycle is the generic :class:`~enginehost.sidecar.SidecarEngine`; this module
adds what is whatsapp-web.js's: the session's browser profile, its close codes and its
events. Chat ids need no mapping: the library speaks the host's dialect (``@c.us``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread

from enginehost import (
    DisconnectedEvent,
    EngineEvent,
    SessionInfo,
)
from enginehost.core.logging import get_logger
from enginehost.plugins.webjs_bridge.disconnects import classify
from enginehost.sidecar import ConnectSlots, SidecarEngine
from enginehost.sidecar.engine import Attach
from enginehost.sidecar.events import Converter, converters, remove_tree

__all__ = ["WebjsEngine", "profile_dir"]

_log = get_logger("enginehost.webjs")


def profile_dir(session_data_path: Path, session_id: str) -> Path:
    """Where whatsapp-web.js's LocalAuth keeps a session's browser profile."""
    return session_data_path / f"session-{session_id}"


def _same(chat_id: str | None) -> str:
    return chat_id or ""


class WebjsEngine(SidecarEngine):
    """One connection (one browser) of one session on the ``webjs`` engine."""

    def __init__(
        self,
        session: SessionInfo,
        *,
        engine_name: str,
        session_data_path: Path,
        attach: Attach,
        slots: ConnectSlots,
        slot_wait: float = 60.0,
    ) -> None:
        super().__init__(
            session, engine_name=engine_name, attach=attach, slots=slots, slot_wait=slot_wait
        )
        self.session_data_path = session_data_path

    @property
    def profile_dir(self) -> Path:
        return profile_dir(self.session_data_path, self.session.id)

    def start_params(self) -> Mapping[str, Any]:
        return {"dataPath": str(self.session_data_path)}

    def convert(self, event: str, data: Mapping[str, Any]) -> EngineEvent | None:
        converter = _CONVERTERS.get(event)
        if converter is None:
            # "process" (the browser's PID: the sidecar process tracks it) and "state"
            # (WhatsApp Web's own state changes) are for logs only.
            _log.debug(
                "webjs.event", session_id=self.session.id, sidecar_event=event, data=dict(data)
            )
            return None
        return converter(data)

    async def wipe_auth(self) -> None:
        # The library's logout deletes the profile itself; a profile left behind (the
        # browser was gone, or files were busy) goes here.
        await anyio.to_thread.run_sync(remove_tree, self.profile_dir)


def _close(data: Mapping[str, Any]) -> EngineEvent:
    code = data.get("code")
    code = str(code) if isinstance(code, str) and code else None
    reason = str(data.get("reason") or "connection closed")
    if code is not None and code not in reason:
        reason = f"{reason} ({code})"
    return DisconnectedEvent(classify(code), engine_code=code, reason=reason)


_CONVERTERS: dict[str, Converter] = {**converters(_same), "close": _close}
