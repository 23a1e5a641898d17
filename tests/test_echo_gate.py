"""Echoes of sends in progress: held, then claimed by their send or released."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enginehost.core.engine import EngineMessage
from enginehost.core.messages.models import MessageRecord
from enginehost.core.sessions.echoes import EchoGate, SendInProgress


def own(message_id: str) -> EngineMessage:
    return EngineMessage(
        message_id=message_id, chat_id="15551234567@c.us", sender="me@c.us", from_me=True
    )


def marked_sent(send: SendInProgress, message_id: str) -> None:
    now = datetime.now(UTC)
    send.record = MessageRecord(
        id="r-" + message_id,
        session_id=send.session_id,
        chat_id="15551234567@c.us",
        message_id=message_id,
        direction="outgoing",
        type="text",
        status="sent",
        from_me=True,
        timestamp=now,
        created_at=now,
        updated_at=now,
    )


def test_nothing_is_held_while_no_send_of_the_session_is_in_progress() -> None:
    gate = EchoGate()
    assert gate.hold("s", "alpha", own("A")) is False
    send = gate.begin("other")
    assert gate.hold("s", "alpha", own("A")) is False
    gate.end(send)
    assert gate.held == 0


def test_a_send_claims_its_own_echo_and_releases_the_rest() -> None:
    gate = EchoGate()
    send = gate.begin("s")
    assert gate.hold("s", "alpha", own("X")) is True  # typed on the phone meanwhile
    assert gate.hold("s", "alpha", own("A")) is True  # the send's echo
    assert gate.hold("s", "alpha", own("A")) is True  # re-fired
    assert gate.held == 3
    marked_sent(send, "A")
    ended = gate.end(send)
    assert ended.echo is not None and ended.echo.message_id == "A"
    assert [held.message.message_id for held in ended.released] == ["X"]
    assert ended.released[0].session_name == "alpha"
    assert gate.held == 0
    assert gate.hold("s", "alpha", own("B")) is False  # no send in progress any more


def test_an_echo_waits_for_every_send_in_progress_when_it_arrived() -> None:
    gate = EchoGate()
    first, second = gate.begin("s"), gate.begin("s")
    assert gate.hold("s", "alpha", own("B")) is True
    third = gate.begin("s")  # began after the echo: not waited for
    marked_sent(first, "A")
    assert gate.end(first).released == ()
    assert gate.held == 1
    marked_sent(second, "B")
    ended = gate.end(second)
    assert ended.echo is not None and ended.echo.message_id == "B"
    assert ended.released == ()
    assert gate.end(third) == gate.end(third)  # ending twice is harmless
    assert gate.held == 0


def test_ending_a_send_twice_does_not_end_another() -> None:
    gate = EchoGate()
    first, _still_sending = gate.begin("s"), gate.begin("s")
    gate.end(first)
    assert gate.end(first).released == ()
    # The second send is still in progress: its session's echoes are still held.
    assert gate.hold("s", "alpha", own("C")) is True
    assert gate.held == 1


def test_a_failed_send_releases_what_it_held() -> None:
    gate = EchoGate()
    send = gate.begin("s")
    gate.hold("s", "alpha", own("A"))
    ended = gate.end(send)  # no record: the send failed
    assert ended.echo is None
    assert [held.message.message_id for held in ended.released] == ["A"]


def test_past_the_cap_echoes_are_stored_at_once() -> None:
    gate = EchoGate(max_held=1)
    gate.begin("s")
    assert gate.hold("s", "alpha", own("A")) is True
    assert gate.hold("s", "alpha", own("B")) is False
    with pytest.raises(ValueError, match="max_held"):
        EchoGate(max_held=-1)


def test_only_a_send_begun_before_the_echo_claims_it() -> None:
    gate = EchoGate()
    first = gate.begin("s")
    gate.hold("s", "alpha", own("X"))  # arrived while only the first was in progress
    later = gate.begin("s")
    marked_sent(later, "X")
    ended = gate.end(later)
    assert ended.echo is None and ended.released == ()
    ended = gate.end(first)
    assert [held.message.message_id for held in ended.released] == ["X"]
    assert gate.held == 0
