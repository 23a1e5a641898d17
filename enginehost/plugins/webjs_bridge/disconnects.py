"""whatsapp-web.js disconnect reasons, classified for the host's reconnect policy.

* ``LOGOUT``, ``UNPAIRED``, ``UNPAIRED_IDLE``: the phone unlinked this browser;
  logged-out, the host wipes the profile.
* ``AUTH_FAILURE`` (the library's ``auth_failure``, stored auth refused): terminal.
* ``CONFLICT`` (WhatsApp Web opened elsewhere took over): terminal, since
  reconnecting would fight the other client.
* ``TOS_BLOCK``, ``SMB_TOS_BLOCK`` (the account is blocked): terminal.
* ``INIT_FAILED``, ``INIT_TIMEOUT``, ``NAVIGATION`` and anything else (offline, hung,
  reloaded): transient.
"""

from __future__ import annotations

from enginehost import DisconnectClassification

__all__ = ["classify"]

_CLASSES = {
    "LOGOUT": DisconnectClassification.LOGGED_OUT,
    "UNPAIRED": DisconnectClassification.LOGGED_OUT,
    "UNPAIRED_IDLE": DisconnectClassification.LOGGED_OUT,
    "AUTH_FAILURE": DisconnectClassification.TERMINAL,
    "CONFLICT": DisconnectClassification.TERMINAL,
    "TOS_BLOCK": DisconnectClassification.TERMINAL,
    "SMB_TOS_BLOCK": DisconnectClassification.TERMINAL,
}


def classify(code: str | None) -> DisconnectClassification:
    """The host's classification of a whatsapp-web.js close code (``None``: none given)."""
    if code is None:
        return DisconnectClassification.TRANSIENT
    return _CLASSES.get(code.upper(), DisconnectClassification.TRANSIENT)
