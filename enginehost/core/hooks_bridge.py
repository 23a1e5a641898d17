"""Plugin hooks fed from the event bus: sessions' status changes and inbound messages.

The bridge is one subscriber like any other, so a slow or failing plugin hook never
holds up an engine (its queue drops the oldest events instead, and says so).
"""

from __future__ import annotations

from typing import Any

from enginehost.core.engine import EngineMessage
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.logging import get_logger
from enginehost.core.plugins import PluginHost

__all__ = ["forward_events_to_hooks"]

log = get_logger("enginehost.hooks")

_TYPES = ("session.status", "message.received")


async def forward_events_to_hooks(bus: EventBus, plugins: PluginHost) -> None:
    """Run until cancelled: call ``session_status_changed`` and ``message_received``."""
    subscription = bus.subscribe(maxsize=10_000, types=_TYPES)
    reported_drops = 0
    try:
        async for event in subscription:
            if subscription.dropped > reported_drops:
                log.warning("hooks.events_dropped", count=subscription.dropped - reported_drops)
                reported_drops = subscription.dropped
            await _forward(event, plugins)
    finally:
        subscription.close()


async def _forward(event: HostEvent, plugins: PluginHost) -> None:
    data: dict[str, Any] = dict(event.data)
    if event.type == "session.status":
        await plugins.call_hook(
            "session_status_changed",
            session_id=event.session_id,
            session_name=data.get("sessionName", ""),
            engine=data.get("engine", ""),
            old_status=data.get("previous"),
            new_status=data["status"],
            reason=data.get("reason"),
        )
    elif event.type == "message.received" and isinstance(event.subject, EngineMessage):
        await plugins.call_hook(
            "message_received",
            session_id=event.session_id,
            session_name=data.get("sessionName", ""),
            message=event.subject,
        )
