"""Signatures that let a webhook receiver check a delivery came from this host.

Two schemes are sent side by side when a webhook has a secret:

* ``X-OpenWA-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes. It is
  what OpenWA-compatible receivers already verify, so it is kept byte for byte.
* ``X-Enginehost-Signature: sha256=<hex>`` with ``X-Enginehost-Timestamp: <unix s>``:
  HMAC-SHA256 of ``"<timestamp>." + body``. Binding the time into the signature lets a
  receiver refuse a captured delivery replayed later, which the first scheme cannot.

Verification compares in constant time and treats anything malformed as a mismatch:
a receiver's answer to a forged request must not depend on how it was forged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

__all__ = [
    "DEFAULT_TOLERANCE",
    "OPENWA_SIGNATURE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "openwa_signature",
    "timestamped_signature",
    "verify_openwa",
    "verify_timestamped",
]

OPENWA_SIGNATURE_HEADER = "X-OpenWA-Signature"
SIGNATURE_HEADER = "X-Enginehost-Signature"
TIMESTAMP_HEADER = "X-Enginehost-Timestamp"

DEFAULT_TOLERANCE = 300
"""Seconds a timestamped signature stays acceptable either side of the receiver's clock:
long enough for a slow delivery and ordinary clock skew, short enough that a replay
needs a fresh capture."""

_PREFIX = "sha256="
# The prefix plus exactly 64 hex digits; anything else cannot be one of ours.
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
# Plain decimal seconds, ASCII only (str.isdigit would also take other scripts' digits).
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def openwa_signature(secret: str, body: bytes) -> str:
    """The ``X-OpenWA-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return _PREFIX + _hex_hmac(secret, body)


def timestamped_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Enginehost-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of
    ``f"{timestamp}."`` followed by ``body``."""
    return _PREFIX + _hex_hmac(secret, f"{timestamp}.".encode("ascii") + body)


def _matches(expected: str, header: str | None) -> bool:
    if header is None:
        return False
    found = _SIGNATURE.fullmatch(header.strip())
    if found is None:
        return False
    # Both sides are ASCII here, which compare_digest requires of str arguments.
    return hmac.compare_digest(expected, _PREFIX + found.group(1).lower())


def verify_openwa(secret: str, body: bytes, signature_header: str | None) -> bool:
    """Whether ``signature_header`` is the OpenWA signature of ``body`` under ``secret``."""
    return _matches(openwa_signature(secret, body), signature_header)


def verify_timestamped(
    secret: str,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether the timestamped signature is valid and its timestamp is within
    ``tolerance`` seconds of ``now`` (the current time by default), past or future."""
    if timestamp_header is None:
        return False
    text = timestamp_header.strip()
    if _TIMESTAMP.fullmatch(text) is None:
        return False
    current = time.time() if now is None else now
    if abs(current - int(text)) > tolerance:
        return False
    # Checked over the digits as received: a re-spelled timestamp ("0123" for "123")
    # signs different bytes, so it cannot borrow another delivery's signature.
    expected = _PREFIX + _hex_hmac(secret, text.encode("ascii") + b"." + body)
    return _matches(expected, signature_header)
