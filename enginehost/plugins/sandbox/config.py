"""The sandbox engine's settings: the operator's plugin config and a session's overrides.

Operator values usually arrive from environment variables
(``ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS=2``), so every value may be a string:
pydantic's lax mode coerces ``"2"`` to ``2.0``, and an empty string means "unset" for
the optional keys (an operator clearing a variable should not get a failure named ``""``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from enginehost import EngineConfig, EngineError, SessionInfo

__all__ = ["SandboxConfig", "SandboxSessionConfig"]


def _empty_is_none(value: Any) -> Any:
    # Environment variables cannot be "unset" once exported; an empty one means unset.
    if isinstance(value, str) and not value.strip():
        return None
    return value


class SandboxConfig(EngineConfig):
    """The sandbox plugin's config blob (``ENGINEHOST_ENGINES__SANDBOX__<KEY>``)."""

    auto_scan_seconds: float | None = Field(
        None,
        ge=0,
        description="Seconds after the first QR until the sandbox 'scans' it by itself; "
        "unset: wait for an explicit scan.",
    )
    auth_dir: Path | None = Field(
        None,
        description="Directory of the per-session auth files; default <engine data dir>/auth.",
    )
    own_number: str = Field(
        "15550000001",
        pattern=r"^[0-9]{8,15}$",
        description="Phone number (digits, country code first) of the account a scan links.",
    )
    push_name: str = Field("Sandbox", min_length=1, description="Display name of the account.")
    ack_delay_seconds: float = Field(
        0.05, ge=0, description="Delay before each ack step (sent, delivered, read) of a send."
    )
    remember_messages: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Messages a session remembers (sent and received, for replies, "
        "reactions and forwards, and in its sent/received lists); older ones are forgotten, "
        "so a long-running session's memory stays bounded.",
    )
    qr_rotate_seconds: float = Field(
        20, gt=0, description="Seconds a QR stays valid before a new one is emitted."
    )
    fail_enable: str | None = Field(
        None, description="When set, enable fails permanently with this message."
    )
    enable_not_ready_times: int = Field(
        0, ge=0, description="How many enable attempts report not-ready before one succeeds."
    )
    fail_start: str | None = Field(
        None, description="When set, every engine start fails with this message."
    )
    chatter_per_second: float = Field(
        0,
        ge=0,
        le=10_000,
        description="Inbound messages per second a ready session receives from simulated "
        "contacts (0: none), for load and crash tests.",
    )
    chatter_journal: Path | None = Field(
        None,
        description="A file each chatter message's id is appended to once the host has "
        "taken it (its sink returned), so a test can check that none was lost.",
    )

    _unset_when_empty = field_validator(
        "auto_scan_seconds",
        "auth_dir",
        "fail_enable",
        "fail_start",
        "chatter_journal",
        mode="before",
    )(_empty_is_none)


class SandboxSessionConfig(BaseModel):
    """What a session's own engine config (``SessionInfo.config``) may override.

    A key the session sets wins over the plugin config, including an explicit ``None``
    (``auto_scan_seconds: null`` makes that session wait for a scan even when the
    operator enabled auto-scan). Unknown keys are refused so typos surface.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_scan_seconds: float | None = Field(None, ge=0)
    fail_start: str | None = None

    _unset_when_empty = field_validator("auto_scan_seconds", "fail_start", mode="before")(
        _empty_is_none
    )

    @classmethod
    def for_session(cls, session: SessionInfo) -> SandboxSessionConfig:
        """Validate ``session.config``; a bad value is an :class:`EngineError` naming the key."""
        try:
            return cls.model_validate(dict(session.config))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise EngineError(
                f"invalid sandbox config for session {session.name!r}: {problems}"
            ) from None
