"""Baileys' disconnect status codes, classified for the host's reconnect policy.

| code | Baileys' name | classification |
|---|---|---|
| 401 | loggedOut | logged-out: the phone unlinked this device; the host wipes auth |
| 403 | forbidden | terminal: banned or blocked; auth kept for inspection |
| 440 | connectionReplaced | terminal: another client took the account; fighting it loops |
| 515 | restartRequired | restart-now: always follows a successful pairing |
| 408, 428, 500, 503, other, none | timed out, closed, bad session, unavailable | transient |

The synthetic close that ``sock.end()`` emits (no code) never reaches the host: the
sidecar detaches its listeners before it ends a socket. A close without a code that
does arrive was the library ending by itself, which is worth a reconnect.
"""

from __future__ import annotations

from enginehost import DisconnectClassification

__all__ = ["classify"]

_CLASSES = {
    401: DisconnectClassification.LOGGED_OUT,
    403: DisconnectClassification.TERMINAL,
    440: DisconnectClassification.TERMINAL,
    515: DisconnectClassification.RESTART_NOW,
}


def classify(code: int | None) -> DisconnectClassification:
    """The host's classification of a Baileys status code (``None``: no code given)."""
    if code is None:
        return DisconnectClassification.TRANSIENT
    return _CLASSES.get(code, DisconnectClassification.TRANSIENT)
