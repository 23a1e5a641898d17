"""The baileys_bridge plugin's config blob (``ENGINEHOST_ENGINES__BAILEYS__<KEY>``).

Operator values usually arrive from environment variables, so every value may be a
string: pydantic's lax mode coerces ``"50"`` to ``50``, and an empty string means
"unset" for the optional keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from enginehost.sidecar.bridge import BridgeConfig

__all__ = ["BaileysConfig"]


def _empty_is_none(value: Any) -> Any:
    # An exported environment variable cannot be unset by emptying it: empty means unset.
    if isinstance(value, str) and not value.strip():
        return None
    return value


class BaileysConfig(BridgeConfig):
    """How the ``baileys`` engine runs its sidecars and sockets (plus the keys every
    bridge has: ``node_path``, ``sessions_per_sidecar``, ``max_concurrent_connects``,
    ``log_level``, ``heartbeat_interval_s``, ``heartbeat_timeout_s``)."""

    max_concurrent_connects: int = Field(
        25,
        ge=1,
        le=1_000,
        description="Sessions connecting at once per host (more wait their turn): "
        "measured here, 500 simultaneous connects each took past the library's 20 s "
        "connect timeout, while batches of 25 log 500 sessions in within seconds.",
    )

    auth_dir: Path | None = Field(
        None,
        description="Directory of the per-session auth state (one folder per session id); "
        "default <engine data dir>/auth.",
    )
    websocket_url: str | None = Field(
        None,
        pattern=r"^wss?://\S+$",
        description="WhatsApp's WebSocket URL; unset: the library's default. "
        "Tests point it at a loopback server.",
    )
    browser_name: str = Field(
        "enginehost",
        min_length=1,
        max_length=64,
        description="The client name the phone shows in its list of linked devices.",
    )
    connect_timeout_ms: int = Field(
        20_000, ge=1_000, le=600_000, description="The library's own connect timeout."
    )
    connect_watchdog_ms: int = Field(
        45_000,
        ge=500,
        le=600_000,
        description="A socket that shows neither a QR nor an open connection this long "
        "after it was created is torn down as a transient failure (an HTTP 401/403 on "
        "the WebSocket upgrade otherwise leaves the library connecting forever).",
    )
    app_state_timeout_ms: int = Field(
        60_000,
        ge=100,
        le=3_600_000,
        description="How long a logged-in session may hold incoming events while it "
        "waits for the phone's app-state key; then they are released and the session "
        "reports it (the library would otherwise buffer them without bound).",
    )
    mark_online_on_connect: bool = Field(
        False, description="Show the account as online while connected."
    )
    sync_full_history: bool = Field(
        False, description="Ask the phone for the full message history at pairing."
    )
    _unset_when_empty = field_validator("auth_dir", "websocket_url", mode="before")(_empty_is_none)
