"""When a failed webhook delivery is tried again, and when it is not.

* Which answers are worth retrying (:func:`is_retryable_status`): a 2xx is delivered;
  5xx and the "try later" statuses 408, 425 and 429 are retried; every other 4xx and
  every redirect is a permanent problem with the registration (a wrong URL, a missing
  credential, a receiver that moved): retrying it would only repeat the failure until
  the attempts run out, so it is dead-lettered at once for an admin to fix.
* How long to wait (:class:`RetryPolicy`): capped exponential backoff with *equal*
  jitter, so delays spread apart yet never drop below half their nominal value and the
  schedule an operator configured stays recognisable in the logs. A receiver's own
  ``Retry-After`` (parsed by :func:`parse_retry_after`) lengthens the wait, up to
  :data:`RETRY_AFTER_MAX`.
"""

from __future__ import annotations

import math
import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from enginehost.core.backoff import Backoff

__all__ = [
    "RETRYABLE_CLIENT_STATUSES",
    "RETRY_AFTER_MAX",
    "RetryPolicy",
    "is_retryable_status",
    "is_success_status",
    "parse_retry_after",
]

RETRY_AFTER_MAX = 3600.0
"""The longest wait (s) a receiver's ``Retry-After`` can impose: an hour. Past it a
misbehaving or hostile receiver would park deliveries indefinitely; the operator's own
``cap`` still applies to the computed backoff even when it is longer."""

RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})
"""4xx statuses that mean "not now" rather than "never": Request Timeout, Too Early,
Too Many Requests."""

# Delta-seconds (RFC 9110 allows only digits; a sign or a fraction is tolerated, a
# negative value meaning "now").
_DELTA_SECONDS = re.compile(r"[+-]?[0-9]{1,20}(\.[0-9]{1,9})?")


def is_success_status(status: int) -> bool:
    """Whether the receiver took the delivery (any 2xx)."""
    return 200 <= status < 300


def is_retryable_status(status: int) -> bool:
    """Whether a failed attempt that got ``status`` should be tried again.

    A 2xx is not a failure, so it is not retried. Redirects are never followed (a
    webhook must name its receiver, and following one could lead the host to an
    address the guard was meant to keep it from) and count as permanent failures.
    """
    return status in RETRYABLE_CLIENT_STATUSES or 500 <= status < 600


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a delivery gets and how long to wait between them.

    ``attempt`` numbers are 1-based: ``delay(1)`` is the wait after the first attempt
    failed. Its nominal value is ``min(cap, base * 2**(attempt - 1))``; equal jitter
    draws the actual delay uniformly from ``[nominal / 2, nominal]``. Full jitter (as in
    :class:`enginehost.core.backoff.Backoff`) could retry a failing receiver almost
    immediately; equal jitter keeps half the backoff while still spreading retries of
    many deliveries that failed together.
    """

    max_attempts: int = 10
    base: float = 5.0
    cap: float = 300.0
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        # Backoff checks 0 < base <= cap and bounds the exponent against overflow.
        object.__setattr__(self, "_backoff", Backoff(base=self.base, cap=self.cap))

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay after attempt ``attempt`` (1-based)."""
        return self._backoff.ceiling(max(attempt, 1) - 1)

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        random: Callable[[], float] = _random.random,
    ) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed.

        ``random`` returns a float in ``[0, 1)``. ``retry_after``, the receiver's own
        request, is honoured when longer than the computed delay, but never beyond
        :data:`RETRY_AFTER_MAX`.
        """
        nominal = self.nominal(attempt)
        computed = nominal / 2 + (nominal / 2) * random()
        # NaN compares false with everything, so it would slip through min/max; an
        # infinite request is clamped like any other long one.
        if retry_after is None or math.isnan(retry_after):
            return computed
        asked = min(max(retry_after, 0.0), RETRY_AFTER_MAX)
        return max(computed, asked)

    def exhausted(self, attempts_made: int) -> bool:
        """Whether ``attempts_made`` attempts use up the delivery's allowance."""
        return attempts_made >= self.max_attempts


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP-date.

    A date in the past or a negative number gives 0; a value that is neither form gives
    None (ignored, as if absent); a longer wait than :data:`RETRY_AFTER_MAX` is read as
    that maximum, so callers never see an unbounded or infinite number.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(max(float(text), 0.0), RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    seconds = (when - reference).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)
