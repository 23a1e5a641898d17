"""Session statuses, and the one table that maps engine events to them.

The statuses are the contract's. A reconnect in progress is ``initializing`` with
``reconnectAttempt`` and ``lastError`` set.

| engine event | status |
|---|---|
| (start requested, or reconnecting) | ``initializing`` |
| ``QrEvent``, ``PairingCodeEvent`` | ``qr_ready`` |
| ``AuthenticatedEvent`` | ``authenticating`` |
| ``ReadyEvent`` | ``ready`` |
| ``DisconnectedEvent`` transient / restart-now | ``initializing`` (the host reconnects) |
| ``DisconnectedEvent`` logged-out | ``disconnected`` (auth wiped; a new QR on the next start) |
| ``DisconnectedEvent`` terminal | ``failed`` (no retry) |
| start failed, or no QR/ready within the init deadline | ``failed`` |
| stopped by the user (stop, force-kill) | ``disconnected`` |
| messages, acks, errors | (no change) |
"""

from __future__ import annotations

import enum

from enginehost.core.engine import (
    AuthenticatedEvent,
    DisconnectClassification,
    DisconnectedEvent,
    EngineEvent,
    PairingCodeEvent,
    QrEvent,
    ReadyEvent,
)

__all__ = ["IN_FLIGHT", "SessionStatus", "status_for"]


class SessionStatus(enum.StrEnum):
    CREATED = "created"
    INITIALIZING = "initializing"
    QR_READY = "qr_ready"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


IN_FLIGHT = frozenset(
    {
        SessionStatus.INITIALIZING,
        SessionStatus.QR_READY,
        SessionStatus.AUTHENTICATING,
        SessionStatus.READY,
    }
)
"""Statuses only a live engine can hold: after a host restart they are stale."""

_DISCONNECT_STATUS = {
    DisconnectClassification.TRANSIENT: SessionStatus.INITIALIZING,
    DisconnectClassification.RESTART_NOW: SessionStatus.INITIALIZING,
    DisconnectClassification.LOGGED_OUT: SessionStatus.DISCONNECTED,
    DisconnectClassification.TERMINAL: SessionStatus.FAILED,
}


def status_for(event: EngineEvent) -> SessionStatus | None:
    """The status an engine event moves a session to (None: the event changes none)."""
    if isinstance(event, QrEvent | PairingCodeEvent):
        return SessionStatus.QR_READY
    if isinstance(event, AuthenticatedEvent):
        return SessionStatus.AUTHENTICATING
    if isinstance(event, ReadyEvent):
        return SessionStatus.READY
    if isinstance(event, DisconnectedEvent):
        return _DISCONNECT_STATUS[event.classification]
    return None
