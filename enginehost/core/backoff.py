"""Capped exponential backoff with full jitter, shared by every retry loop in the host.

Full jitter (a uniform draw between zero and the capped exponential delay) spreads
retries of many clients apart, so a recovering dependency is not hit by all of them at
the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for attempt 0, 1, 2, ...: ``uniform(0, min(cap, base * 2**attempt))``."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"need 0 < base <= cap, got base={self.base} cap={self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` can draw."""
        # Bound the exponent so huge attempt counts never overflow a float.
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 62))

    def delay(
        self, attempt: int, uniform: Callable[[float, float], float] = random.uniform
    ) -> float:
        """A jittered delay in seconds for the given attempt number (0-based)."""
        return uniform(0.0, self.ceiling(attempt))
