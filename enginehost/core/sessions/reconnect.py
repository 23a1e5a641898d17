"""The host's reconnect policy, engine-neutral: what to do after a disconnect, and when.

* transient → reconnect on a fresh engine object after a capped exponential backoff with
  full jitter; the attempt budget resets only once the session stayed ready for a stable
  period, so a flapping connection backs off instead of hammering the server;
* restart-now → reconnect at once;
* logged-out → wipe auth, stop (a new QR on the next start);
* terminal → stop, failed.

A loop is made visible: every ``loop_every``-th consecutive attempt is reported.
A session may override the timings in its config (``reconnect``), clamped to sane ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from enginehost.core.backoff import Backoff
from enginehost.core.errors import FieldError

__all__ = ["ReconnectPolicy", "ReconnectSettingsError"]

# (field, config key, lowest, highest) of what a session may override.
_LIMITS = (
    ("base", "baseSeconds", 0.1, 60.0),
    ("cap", "capSeconds", 1.0, 3600.0),
    ("stable_seconds", "stableSeconds", 1.0, 86400.0),
)


class ReconnectSettingsError(FieldError):
    """A session's reconnect overrides are not acceptable; ``field`` names the key."""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    base: float = 1.0
    cap: float = 60.0
    stable_seconds: float = 300.0
    loop_every: int = 5

    def delay(self, attempt: int) -> float:
        """The jittered wait before reconnect attempt ``attempt`` (1-based)."""
        return self._backoff().delay(attempt - 1)

    def ceiling(self, attempt: int) -> float:
        """The longest wait :meth:`delay` can draw before attempt ``attempt``."""
        return self._backoff().ceiling(attempt - 1)

    def _backoff(self) -> Backoff:
        return Backoff(self.base, max(self.cap, self.base))

    def for_session(self, config: Mapping[str, Any]) -> ReconnectPolicy:
        """This policy with a session's ``reconnect`` overrides applied (validated)."""
        overrides = config.get("reconnect")
        if overrides is None:
            return self
        if not isinstance(overrides, Mapping):
            raise ReconnectSettingsError("config.reconnect", "must be an object")
        unknown = set(overrides) - {key for _, key, _, _ in _LIMITS}
        if unknown:
            raise ReconnectSettingsError(
                f"config.reconnect.{sorted(unknown)[0]}",
                f"unknown setting; use {', '.join(k for _, k, _, _ in _LIMITS)}",
            )
        changes: dict[str, Any] = {}
        for field, key, low, high in _LIMITS:
            if key not in overrides:
                continue
            value = overrides[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ReconnectSettingsError(f"config.reconnect.{key}", "must be a number")
            if not low <= value <= high:
                raise ReconnectSettingsError(
                    f"config.reconnect.{key}", f"must be between {low:g} and {high:g}"
                )
            changes[field] = float(value)
        policy = replace(self, **changes)
        if policy.cap < policy.base:
            raise ReconnectSettingsError(
                "config.reconnect.capSeconds", "must not be below baseSeconds"
            )
        return policy
