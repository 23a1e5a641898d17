"""The webjs_bridge plugin's config blob (``ENGINEHOST_ENGINES__WEBJS__<KEY>``).

Operator values usually arrive from environment variables, so every value may be a
string: pydantic's lax mode coerces ``"3"`` to ``3``, an empty string means "unset" for
the optional keys, and ``chromium_args`` may be given as one string of arguments
separated by spaces.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from enginehost.sidecar.bridge import BridgeConfig

__all__ = ["DEFAULT_WEB_VERSION", "WebjsConfig"]

DEFAULT_WEB_VERSION = "2.3000.1017054665"
"""The WhatsApp Web version whatsapp-web.js 1.34.7 pins. WhatsApp Web updates are the
most common reason a session never becomes ready: a version is pinned, never "latest"."""


def _empty_is_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class WebjsConfig(BridgeConfig):
    """How the ``webjs`` engine runs its sidecars and browsers (plus the keys every
    bridge has: ``node_path``, ``log_level``, ``heartbeat_interval_s``,
    ``heartbeat_timeout_s``)."""

    session_data_path: Path | None = Field(
        None,
        description="Directory of the browser profiles (LocalAuth data path; one "
        "'session-<id>' profile per session); default <engine data dir>/profiles.",
    )
    executable_path: str | None = Field(
        None,
        description="The Chromium binary; unset: 'chromium' found on PATH.",
    )
    chromium_args: list[str] = Field(
        default_factory=list,
        description="Extra Chromium arguments (a list, or one string split like a shell).",
    )
    headless: bool = Field(True, description="Run Chromium without a window.")
    web_version: str = Field(
        DEFAULT_WEB_VERSION,
        pattern=r"^[0-9]+(\.[0-9]+){2,3}(-[A-Za-z0-9.-]+)?$",
        description="The pinned WhatsApp Web version.",
    )
    web_version_cache_dir: Path | None = Field(
        None,
        description="A directory of saved WhatsApp Web pages (<version>.html): the "
        "session gets exactly web_version's page from it; unset: whatever WhatsApp serves "
        "(web_version then has no effect).",
    )
    init_timeout_ms: int = Field(
        60_000,
        ge=1_000,
        le=600_000,
        description="A browser that shows neither a QR nor a ready session this long after "
        "its launch is closed and the start retried (initialize() can hang forever).",
    )
    auth_timeout_ms: int = Field(
        0, ge=0, le=600_000, description="The library's authentication timeout (0: none)."
    )
    sessions_per_sidecar: int = Field(
        10, ge=1, le=500, description="Sessions (browsers) one Node sidecar drives."
    )
    max_concurrent_connects: int = Field(
        3,
        ge=1,
        le=100,
        description="Browsers launching at once (more wait their turn): each launch costs "
        "seconds of CPU.",
    )
    _unset_when_empty = field_validator(
        "session_data_path", "executable_path", "web_version_cache_dir", mode="before"
    )(_empty_is_none)

    @field_validator("chromium_args", mode="before")
    @classmethod
    def _split_args(cls, value: Any) -> Any:
        if isinstance(value, str):
            return shlex.split(value)
        return value
