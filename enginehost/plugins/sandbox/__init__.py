"""The built-in ``sandbox`` engine: WhatsApp simulated in-process, for bots and tests.

The sandbox needs no phone, no network and no browser. To the host it looks like any
engine: it shows a QR, links, reports ready, echoes and acks sends, receives messages
and disconnects, and keeps each session's auth in a JSON file so a restart skips the QR.
Use it to develop a bot, or to test the host and plugins end to end.

Select it for a session with ``engine: "sandbox"`` and configure it like any engine
(``ENGINEHOST_ENGINES__SANDBOX__<KEY>``, see :class:`SandboxConfig`); for example
``ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS=1`` links every new session one second
after its first QR. A session may override ``auto_scan_seconds`` and ``fail_start`` in
its own engine config.

**Driving it.** Where a real engine waits for the phone or for other people, the
sandbox waits for you. Find a session's running engine with
``plugin.engine_for(session_id)`` and call its control methods::

    engine = plugin.engine_for(session_id)
    await engine.scan()                                   # the phone scans the QR
    await engine.receive_text("15551234567@c.us", "hi")   # someone writes to the bot
    await engine.compose_on_phone("15551234567@c.us", "typed on the phone")
    await engine.drop(DisconnectClassification.TRANSIENT) # the connection breaks
    engine.sent                                           # what the bot sent, in order

Pairing codes work too: ``request_pairing_code(number)`` then
``enter_pairing_code(code)``. To exercise failure paths, set ``fail_enable``,
``enable_not_ready_times`` or ``fail_start`` in the config, or call
``plugin.fail_next_start(reason)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enginehost import EnginePlugin, hookimpl
from enginehost.plugins.sandbox.config import SandboxConfig
from enginehost.plugins.sandbox.engine import SandboxEngine
from enginehost.plugins.sandbox.plugin import SandboxPlugin

__all__ = ["SandboxConfig", "SandboxEngine", "SandboxPlugin"]


@hookimpl
def register_engines(register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
    """Register the sandbox engine with the host."""
    register(SandboxPlugin)
