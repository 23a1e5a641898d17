"""enginehost: a daemon that hosts WhatsApp engines as plugins.

This package re-exports the public API for plugin authors; everything else lives in
``enginehost.core`` and may change between releases.
"""

from importlib.metadata import PackageNotFoundError, version

from enginehost.core.engine import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
    Capability,
    DisconnectClassification,
    DisconnectedEvent,
    Engine,
    EngineClosedError,
    EngineConfig,
    EngineError,
    EngineEvent,
    EngineMessage,
    EngineNotReadyError,
    EngineNotRunningError,
    EnginePlugin,
    EngineState,
    ErrorEvent,
    EventSink,
    MediaPayload,
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
    UnsupportedOperationError,
    utc_now,
)
from enginehost.core.hookspecs import hookimpl
from enginehost.core.services import HostServices, MessageLookup

try:
    __version__ = version("enginehost")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AckEvent",
    "AckStatus",
    "AuthenticatedEvent",
    "Capability",
    "DisconnectClassification",
    "DisconnectedEvent",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "EngineEvent",
    "EngineMessage",
    "EngineNotReadyError",
    "EngineNotRunningError",
    "EnginePlugin",
    "EngineState",
    "ErrorEvent",
    "EventSink",
    "HostServices",
    "MediaPayload",
    "MessageEvent",
    "MessageLookup",
    "MessageType",
    "OwnMessageEvent",
    "PairingCodeEvent",
    "QrEvent",
    "ReactionEvent",
    "ReadyEvent",
    "RevokeEvent",
    "SendResult",
    "SessionInfo",
    "UnsupportedOperationError",
    "__version__",
    "hookimpl",
    "utc_now",
]
