"""The forward-only status order and the known-status memory that settles acks."""

from __future__ import annotations

import itertools

import pytest

from enginehost.core.engine import AckStatus
from enginehost.core.messages.status import AckedMessage, KnownStatus, advance

STATUSES = [s.value for s in AckStatus]


def reachable(status: str) -> set[str]:
    """Every status a row at ``status`` can reach through any sequence of reports."""
    seen, frontier = {status}, [status]
    while frontier:
        current = frontier.pop()
        for report in STATUSES:
            after = advance(current, report)
            if after not in seen:
                seen.add(after)
                frontier.append(after)
    return seen


def test_an_ack_that_leaves_a_status_leaves_every_later_status() -> None:
    # What lets KnownStatus settle acks from a lower bound of the row's status.
    for known, ack in itertools.product(STATUSES, STATUSES):
        if advance(known, ack) == known:
            for later in reachable(known):
                assert advance(later, ack) == later, (known, ack, later)


def test_status_moves_forward_only() -> None:
    assert advance("pending", "sent") == "sent"
    assert advance("read", "delivered") == "read"
    assert advance("sent", "failed") == "failed"
    assert advance("delivered", "failed") == "delivered"
    assert advance("failed", "read") == "failed"


def test_known_status_settles_only_acks_that_cannot_move_the_row() -> None:
    known = KnownStatus()
    assert known.settled("s", "m1", "sent") is None  # nothing noted: the database decides
    known.note("s", "m1", AckedMessage("r1", "sent"))
    assert known.settled("s", "m1", "sent") == AckedMessage("r1", "sent")
    assert known.settled("s", "m1", "pending") == AckedMessage("r1", "sent")
    assert known.settled("s", "m1", "delivered") is None  # may move it
    assert known.settled("s", "m1", "failed") is None
    assert known.settled("other", "m1", "sent") is None  # per session


def test_known_status_keeps_the_further_status_of_writes_finishing_out_of_order() -> None:
    known = KnownStatus()
    known.note("s", "m", AckedMessage("r", "read"))
    known.note("s", "m", AckedMessage("r", "sent"))  # an older write reported late
    assert known.settled("s", "m", "delivered") == AckedMessage("r", "read")
    known.note("s", "m", AckedMessage("r2", "sent"))  # another row now holds the id
    assert known.settled("s", "m", "delivered") is None


def test_known_status_is_bounded_and_forgets_the_oldest() -> None:
    known = KnownStatus(limit=2)
    for name in ("a", "b", "c"):
        known.note("s", name, AckedMessage(name, "read"))
    assert len(known) == 2
    assert known.settled("s", "a", "sent") is None
    assert known.settled("s", "c", "sent") is not None
    with pytest.raises(ValueError, match="limit"):
        KnownStatus(limit=0)
