"""Chat ids between the host's neutral dialect and Baileys' JIDs.

The host speaks ``<phone>@c.us`` for people; Baileys speaks ``<phone>@s.whatsapp.net``
and adds a device (``<phone>:<device>@s.whatsapp.net``) to the account's own id. Groups
(``@g.us``), LIDs (``@lid``) and ``status@broadcast`` are the same in both.
"""

from __future__ import annotations

__all__ = ["to_library", "to_neutral"]

_PERSON_NEUTRAL = "@c.us"
_PERSON_LIBRARY = "@s.whatsapp.net"
_SHARED_SERVERS = ("@g.us", "@lid", "@broadcast", "@newsletter")


def to_library(chat_id: str) -> str:
    """``15551234567@c.us`` -> ``15551234567@s.whatsapp.net``; shared forms unchanged."""
    if chat_id.endswith(_PERSON_NEUTRAL):
        return chat_id[: -len(_PERSON_NEUTRAL)] + _PERSON_LIBRARY
    if chat_id.endswith(_SHARED_SERVERS):
        return chat_id
    raise ValueError(f"chat id {chat_id!r} is not in the host's dialect (<phone>@c.us, <id>@g.us)")


def to_neutral(jid: str | None) -> str:
    """A Baileys JID in the host's dialect, without device or agent suffixes."""
    if not jid:
        return ""
    user, at, server = jid.partition("@")
    if not at:
        return jid
    # "15551234567:12@s.whatsapp.net" (device 12) and "15551234567_1:12@..." (agent).
    user = user.split(":", 1)[0].split("_", 1)[0]
    if server == "s.whatsapp.net":
        return f"{user}{_PERSON_NEUTRAL}"
    return f"{user}@{server}"
