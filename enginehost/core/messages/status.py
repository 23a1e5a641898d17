"""Message status: the forward-only order, and what the host knows of recent messages.

pending → sent → delivered → read, never back; ``failed`` is final and is taken only
from pending or sent (an ack of delivered or read proves the message arrived, so a
later failure report changes nothing).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from enginehost.core.engine import AckStatus

__all__ = ["AckedMessage", "KnownStatus", "advance"]

_RANK: Final = {
    AckStatus.PENDING: 0,
    AckStatus.SENT: 1,
    AckStatus.DELIVERED: 2,
    AckStatus.READ: 3,
}


def advance(current: str, new: str) -> str:
    """The status after ``new`` is reported for a message at ``current``: forward only
    (see the module docs)."""
    if current == AckStatus.FAILED:
        return AckStatus.FAILED.value
    if new == AckStatus.FAILED:
        return AckStatus.FAILED.value if current in (AckStatus.PENDING, AckStatus.SENT) else current
    if new not in _RANK or current not in _RANK:
        return current
    return new if _RANK[AckStatus(new)] > _RANK[AckStatus(current)] else current


@dataclass(frozen=True, slots=True)
class AckedMessage:
    """What an ack left: the message's record id and its status now."""

    id: str
    status: str


class KnownStatus:
    """For recently written messages: the record id, and a status the row has reached.

    Keyed by (session id, engine message id). What is noted here comes from committed
    writes only, and a row's status only moves forward, so the noted status is a lower
    bound of the row's: the row may have moved further since, never back. That is
    enough to settle an ack without the database when it cannot move the row: with
    :func:`advance`, an ack that leaves the noted status as it is also leaves every
    status reachable from there as it is (the order is a chain, and ``failed`` is only
    reachable before ``delivered``; a test checks every pair). Engines ack every send
    with "sent" right after the send stored that status, so a third of all acks end
    here.

    Bounded: the oldest entries are forgotten first (a forgotten message costs a
    statement, never a lost ack). Used from the event loop only, no locks.
    """

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._known: OrderedDict[tuple[str, str], AckedMessage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def note(self, session_id: str, message_id: str, acked: AckedMessage) -> None:
        """Record that the row ``acked.id`` committed at ``acked.status`` (or further)."""
        key = (session_id, message_id)
        known = self._known.get(key)
        if known is not None and known.id == acked.id:
            # Writes can finish out of order: keep the further status.
            acked = AckedMessage(acked.id, advance(known.status, acked.status))
        self._known[key] = acked
        self._known.move_to_end(key)
        if len(self._known) > self._limit:
            self._known.popitem(last=False)

    def settled(self, session_id: str, message_id: str, status: str) -> AckedMessage | None:
        """What an ack of ``status`` leaves when it cannot move the row; None when only
        the database can tell (nothing noted, or the ack may move it)."""
        known = self._known.get((session_id, message_id))
        if known is None or advance(known.status, status) != known.status:
            return None
        return known
