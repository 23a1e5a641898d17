"""The event catalogue: payload builders against their schemas, the delivery envelope and
its trimming, the catalogue route, and docs/events.md against the code."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehost.core.engine import AckStatus, DisconnectClassification, EngineMessage, MessageType
from enginehost.core.http.messages import MessageOut, _message
from enginehost.core.messages.models import MessageDirection, MessageRecord
from enginehost.core.messages.store import _engine_values
from enginehost.core.sessions.status import SessionStatus
from enginehost.core.webhooks import catalogue as cat
from tests.support.api import ApiHarness, api_harness

SESSION_ID = "0b7e4c1a-9d2f-4a6b-8c3e-5f1a2b3c4d5e"
GROUP = "120363041234567890@g.us"
PERSON = "15551234567@c.us"
OWN = "15550001111@c.us"
DOCS = Path(__file__).parent.parent / "docs" / "events.md"
ENVELOPE_KEYS = [
    "event",
    "timestamp",
    "sessionId",
    "idempotencyKey",
    "deliveryId",
    "version",
    "data",
]


def engine_row(
    *, chat_id: str = PERSON, body: str | None = "hello", from_me: bool = False, **fields: Any
) -> dict[str, Any]:
    """A message row exactly as the store builds it for an engine's message."""
    message = EngineMessage(
        message_id=fields.pop("message_id", "3EB0C767D26A1B2C3D4E"),
        chat_id=chat_id,
        sender=OWN if from_me else PERSON,
        from_me=from_me,
        body=body,
        timestamp=fields.pop("timestamp", datetime(2025, 11, 26, 18, 4, 31, 412345, tzinfo=UTC)),
        **fields,
    )
    return _engine_values(SESSION_ID, message, own=from_me)


def envelope(data: dict[str, Any], **overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "event": "message.received",
        "timestamp": datetime(2025, 11, 26, 18, 4, 31, 415923, tzinfo=UTC),
        "session_id": SESSION_ID,
        "idempotency_key": "9a7d3c1e5b2f4a68b0c2d4e6f8a0b2c4",
        "delivery_id": "e5f1a2b3-c4d5-4e6f-8a9b-0c1d2e3f4a5b",
        "data": data,
        **overrides,
    }
    return cat.envelope_bytes(**arguments)


# ------------------------------------------------------------------------------ builders


def test_the_store_row_has_every_message_column() -> None:
    # The builder's input is the store's row: if a column is added, the rows here follow.
    assert set(engine_row()) == set(MessageRecord.model_fields)


def test_a_received_group_message_validates_and_says_who_wrote_it() -> None:
    row = engine_row(chat_id=GROUP, body="Is the shop open on Sunday? 🛒")
    data = cat.message_payload(row, session_name="sales", sender=PERSON)
    cat.validate("message.received", data)
    assert data["isGroup"] is True
    assert data["sender"] == PERSON
    assert data["sessionName"] == "sales"
    assert data["direction"] == "incoming" and data["status"] == "delivered"
    assert data["timestamp"] == 1764180271
    assert "raw" not in data  # a column, not part of the event


def test_a_direct_message_is_not_a_group() -> None:
    data = cat.message_payload(engine_row(chat_id=PERSON), session_name="sales", sender=None)
    cat.validate("message.received", data)
    assert data["isGroup"] is False
    assert data["sender"] is None


def test_the_message_data_is_what_the_rest_api_returns_for_the_same_row() -> None:
    row = engine_row(
        from_me=True,
        chat_id=GROUP,
        type=MessageType.IMAGE,
        has_media=True,
        quoted_message_id="BAE5F2A9C81D4E3B",
    )
    data = cat.message_payload(row, session_name="sales", sender=OWN)
    cat.validate("message.sent", data)
    rest = _message(MessageRecord(**row)).model_dump(mode="json", by_alias=True)
    extensions = {"sessionName", "sender", "isGroup"}
    assert {k: v for k, v in data.items() if k not in extensions} == rest


def test_a_failed_send_validates_without_an_engine_id() -> None:
    now = datetime(2025, 11, 26, 18, 6, 50, 220931, tzinfo=UTC)
    row = {
        "id": "d93b0a6e-2f4c-4b1d-8e7a-5c6f1e0d2b94",
        "session_id": SESSION_ID,
        "chat_id": PERSON,
        "message_id": None,
        "direction": "outgoing",
        "type": "image",
        "status": "failed",
        "body": None,
        "from_me": True,
        "has_media": True,
        "quoted_message_id": None,
        "failure_reason": "the engine failed the send: timeout",
        "idempotency_key": "order-42",
        "timestamp": now,
        "created_at": now,
        "updated_at": now + timedelta(seconds=1),
        "raw": None,
    }
    assert set(row) == set(MessageRecord.model_fields)
    data = cat.message_payload(row, session_name="sales", sender=OWN)
    cat.validate("message.failed", data)
    assert data["messageId"] is None
    assert data["failureReason"] == "the engine failed the send: timeout"
    assert data["createdAt"] == "2025-11-26T18:06:50.220931Z"
    assert data["updatedAt"] == "2025-11-26T18:06:51.220931Z"


def test_message_times_are_written_in_utc_with_a_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 11, 26, 20, 0, 0, tzinfo=plus_two)
    row = engine_row(timestamp=local)
    row["created_at"] = local
    row["updated_at"] = datetime(2025, 11, 26, 18, 0, 1)  # naive: UTC, as inside the host
    data = cat.message_payload(row, session_name="sales", sender=None)
    assert data["createdAt"] == "2025-11-26T18:00:00Z"
    assert data["updatedAt"] == "2025-11-26T18:00:01Z"
    assert data["timestamp"] == int(local.timestamp())
    assert isinstance(data["timestamp"], int)
    cat.validate("message.received", data)


OTHER_PAYLOADS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    (
        "message.ack",
        lambda: cat.ack_payload(
            session_name="sales",
            id="a41e7c02-5b8d-4f3a-9e61-7d2c0b9f8e15",
            chat_id=GROUP,
            message_id="BAE5F2A9C81D4E3B",
            status=AckStatus.READ,
            from_me=True,
        ),
    ),
    (
        "message.revoked",
        lambda: cat.revoked_payload(
            session_name="sales",
            chat_id=GROUP,
            message_id="3EB0C767D26A1B2C3D4E",
            id=None,
            sender=PERSON,
            from_me=False,
        ),
    ),
    (
        "message.reaction",
        lambda: cat.reaction_payload(
            session_name="sales",
            chat_id=GROUP,
            message_id="BAE5F2A9C81D4E3B",
            id="a41e7c02-5b8d-4f3a-9e61-7d2c0b9f8e15",
            emoji="",
            sender=None,
            from_me=True,
        ),
    ),
    (
        "session.status",
        lambda: cat.session_status_payload(
            session_name="sales",
            engine="sandbox",
            status=SessionStatus.READY,
            previous="authenticating",
            reason=None,
        ),
    ),
    (
        "session.status",
        lambda: cat.session_status_payload(
            session_name="sales", engine="sandbox", status="created", previous=None, reason="new"
        ),
    ),
    ("session.qr", lambda: cat.qr_payload(session_name="sales", qr="2@abc,def,ghi")),
    ("session.authenticated", lambda: cat.authenticated_payload(session_name="sales")),
    (
        "session.disconnected",
        lambda: cat.disconnected_payload(
            session_name="sales",
            classification=DisconnectClassification.RESTART_NOW,
            code=515,
            reason="restart required",
        ),
    ),
    (
        "session.disconnected",
        lambda: cat.disconnected_payload(
            session_name="sales", classification="logged-out", code="UNPAIRED", reason=""
        ),
    ),
    (
        "session.reconnect_loop",
        lambda: cat.reconnect_loop_payload(session_name="sales", attempt=10, reason="timeout"),
    ),
    (
        cat.TEST_EVENT,
        lambda: cat.test_payload(webhook_id="4e2f9a1c", message=cat.TEST_MESSAGE),
    ),
]


@pytest.mark.parametrize(("event", "build"), OTHER_PAYLOADS)
def test_every_builder_matches_its_schema(event: str, build: Callable[[], dict[str, Any]]) -> None:
    data = build()
    cat.validate(event, data)
    # Plain JSON types only, never an enum member: the dict goes to the encoder as is.
    for value in data.values():
        assert type(value) in (str, int, bool, type(None)), (event, value)


def test_every_event_has_a_builder_tested_here() -> None:
    covered = {event for event, _ in OTHER_PAYLOADS} | {
        "message.received",
        "message.sent",
        "message.failed",
    }
    assert covered == {*cat.EVENT_TYPES, cat.TEST_EVENT}


def test_builders_refuse_values_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="bogus"):
        cat.ack_payload(session_name="s", id="i", chat_id=PERSON, message_id="m", status="bogus")
    with pytest.raises(ValueError, match="fatal"):
        cat.disconnected_payload(session_name="s", classification="fatal", code=None, reason="")
    with pytest.raises(ValueError, match="asleep"):
        cat.session_status_payload(
            session_name="s", engine="e", status="ready", previous="asleep", reason=None
        )


# ------------------------------------------------------------------------------ schemas


def test_the_vocabularies_are_the_engine_contracts() -> None:
    def enum_of(event: str, field: str) -> list[str]:
        schema = cat.json_schema(event)
        reference = schema["properties"][field]
        if "$ref" in reference:
            reference = schema["$defs"][reference["$ref"].rsplit("/", 1)[1]]
        return list(reference["enum"])

    assert enum_of("session.disconnected", "classification") == [
        c.value for c in DisconnectClassification
    ]
    assert enum_of("message.ack", "status") == [s.value for s in AckStatus]
    assert enum_of("message.received", "type") == [t.value for t in MessageType]
    assert enum_of("message.received", "direction") == [d.value for d in MessageDirection]
    assert enum_of("session.status", "status") == [s.value for s in SessionStatus]


def test_message_data_has_every_field_of_the_rest_message() -> None:
    rest = {field.alias or name for name, field in MessageOut.model_fields.items()}
    assert rest - set(cat.json_schema("message.received")["required"]) == set()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"chat_id": PERSON}, "chat_id: Extra inputs are not permitted"),
        ({"timestamp": "1764180271"}, "timestamp: Input should be a valid integer"),
        ({"fromMe": 0}, "fromMe: Input should be a valid boolean"),
        ({"createdAt": "2025-11-26T18:04:31+00:00"}, "createdAt: String should match"),
        ({"createdAt": "2025-13-26T18:04:31Z"}, "createdAt: Value error"),
        ({"status": "seen"}, "status: Input should be"),
        ({"createdAt": datetime(2025, 1, 1, tzinfo=UTC)}, "not JSON"),
    ],
)
def test_validate_names_what_is_wrong(change: dict[str, Any], problem: str) -> None:
    data = cat.message_payload(engine_row(), session_name="sales", sender=None)
    data.update(change)
    with pytest.raises(cat.InvalidPayloadError, match=re.escape(problem)):
        cat.validate("message.received", data)


def test_validate_wants_every_field() -> None:
    data = cat.message_payload(engine_row(), session_name="sales", sender=None)
    del data["sender"]
    with pytest.raises(cat.InvalidPayloadError, match="sender: Field required"):
        cat.validate("message.received", data)


def test_unknown_events_are_refused() -> None:
    with pytest.raises(cat.UnknownEventError, match=r"message\.deleted"):
        cat.validate("message.deleted", {})
    with pytest.raises(cat.UnknownEventError, match=r"message\.deleted"):
        cat.json_schema("message.deleted")


def test_the_catalogue_lists_every_event_with_its_schema() -> None:
    whole = cat.catalogue()
    assert whole["version"] == cat.CATALOGUE_VERSION == 1
    assert whole["allEvents"] == "*"
    names = [entry["event"] for entry in whole["events"]]
    assert names == [*cat.EVENT_TYPES, cat.TEST_EVENT]
    for entry in whole["events"]:
        assert entry["description"]
        assert entry["dataSchema"] == cat.json_schema(entry["event"])
        assert entry["subscribable"] is (entry["event"] != cat.TEST_EVENT)
    assert list(whole["envelope"]["properties"]) == ENVELOPE_KEYS
    assert set(whole["truncation"]["required"]) == {"fields", "originalBytes"}
    assert json.loads(cat.catalogue_json()) == whole


def test_the_catalogue_hands_out_copies() -> None:
    cat.catalogue()["events"].clear()
    cat.json_schema("session.qr")["properties"].clear()
    assert len(cat.catalogue()["events"]) == len(cat.EVENT_TYPES) + 1
    assert "qr" in cat.json_schema("session.qr")["properties"]


# ------------------------------------------------------------------------------ envelope


def test_the_envelope_is_compact_utf8_json_in_the_documented_order() -> None:
    data = cat.message_payload(
        engine_row(chat_id=GROUP, body='Grüße 😀 "quoted"\n'), session_name="sales", sender=PERSON
    )
    body = envelope(data)
    text = body.decode("utf-8")
    parsed = json.loads(text)
    assert list(parsed) == ENVELOPE_KEYS
    assert parsed["version"] == 1
    assert parsed["data"] == data
    assert parsed["timestamp"] == "2025-11-26T18:04:31.415Z"
    # Compact, and non-ASCII written as itself rather than \u escapes.
    assert body == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    assert "😀".encode() in body
    cat.Envelope.model_validate_json(body, strict=True)
    cat.validate(parsed["event"], parsed["data"])


def test_the_envelope_timestamp_is_utc_milliseconds() -> None:
    local = datetime(2025, 11, 26, 20, 0, 0, 123999, tzinfo=timezone(timedelta(hours=2)))
    parsed = json.loads(envelope({}, timestamp=local, session_id=None, event="webhook.test"))
    assert parsed["timestamp"] == "2025-11-26T18:00:00.123Z"
    assert parsed["sessionId"] is None


def test_a_lone_surrogate_is_escaped_never_invalid_utf8() -> None:
    data = cat.qr_payload(session_name="sales", qr="broken \ud83d pair")
    body = envelope(data, event="session.qr")
    assert json.loads(body.decode("utf-8"))["data"]["qr"] == "broken \ud83d pair"


def test_a_value_json_cannot_carry_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="bytes"):
        envelope({"body": b"raw bytes"})


# ------------------------------------------------------------------------------ trimming


def big_message(body: str) -> dict[str, Any]:
    return cat.message_payload(engine_row(body=body), session_name="sales", sender=PERSON)


def test_a_delivery_that_fits_is_untouched() -> None:
    data = big_message("hello " * 100)
    full = envelope(data)
    assert envelope(data, max_bytes=len(full)) == full
    assert envelope(data, max_bytes=10 * len(full)) == full
    assert b"truncated" not in full


@pytest.mark.parametrize(
    "unit",
    ["a", "é", "€", "😀", "\n", '"', "\x01", "e\u0301"],
    ids=["ascii", "2-byte", "3-byte", "4-byte", "escape", "quote", "control", "combining"],
)
def test_trimming_fits_the_cap_marks_it_and_cuts_between_characters(unit: str) -> None:
    original_body = unit * 3000 + "end"
    data = big_message(original_body)
    full = envelope(data)
    # Down to where a few characters of the body are left (below that: the bare marker).
    lowest = len(full) - len(json.dumps(original_body, ensure_ascii=False).encode()) + 120
    for cap in range(len(full) - 1, lowest, -379):
        body = envelope(data, max_bytes=cap)
        assert len(body) <= cap
        parsed = json.loads(body.decode("utf-8"))  # strict UTF-8: no split character
        trimmed = parsed["data"]
        assert trimmed["truncated"] == {"fields": ["body"], "originalBytes": len(full)}
        assert original_body.startswith(trimmed["body"])
        assert len(trimmed["body"]) < len(original_body)
        # As much as fits is kept: one more character would not have fitted.
        assert len(body) + len(json.dumps(unit, ensure_ascii=False).encode()) - 2 > cap
        assert {k: v for k, v in trimmed.items() if k not in ("body", "truncated")} == {
            k: v for k, v in data.items() if k != "body"
        }
        cat.validate("message.received", trimmed)


def test_bulky_fields_go_first_and_whole() -> None:
    data = {**big_message("short body"), "raw": {"payload": "x" * 5000}}
    full = envelope(data)
    body = envelope(data, max_bytes=2000)
    assert len(body) <= 2000
    trimmed = json.loads(body)["data"]
    assert "raw" not in trimmed
    assert trimmed["body"] == "short body"
    assert trimmed["truncated"] == {"fields": ["raw"], "originalBytes": len(full)}


def test_other_free_text_is_shortened_after_the_body_but_ids_never() -> None:
    data = cat.disconnected_payload(
        session_name="s" * 300, classification="terminal", code="x" * 300, reason="r" * 3000
    )
    full = envelope(data, event="session.disconnected")
    body = envelope(data, event="session.disconnected", max_bytes=len(full) - 1000)
    trimmed = json.loads(body)["data"]
    assert trimmed["truncated"]["fields"] == ["reason"]
    assert trimmed["sessionName"] == "s" * 300
    assert trimmed["code"] == "x" * 300
    cat.validate("session.disconnected", trimmed)


def test_when_nothing_else_fits_only_the_marker_is_left() -> None:
    data = cat.disconnected_payload(
        session_name="s" * 2000, classification="terminal", code=None, reason="gone"
    )
    full = envelope(data, event="session.disconnected")
    body = envelope(data, event="session.disconnected", max_bytes=1000)
    assert len(body) <= 1000
    parsed = json.loads(body)
    assert list(parsed) == ENVELOPE_KEYS
    assert parsed["data"] == {
        "truncated": {
            "fields": ["sessionName", "classification", "code", "reason"],
            "originalBytes": len(full),
        }
    }
    cat.validate("session.disconnected", parsed["data"])


def test_a_cap_below_the_envelope_itself_is_an_error() -> None:
    with pytest.raises(cat.EnvelopeTooSmallError, match="max_bytes=100"):
        envelope(big_message("x" * 1000), max_bytes=100)


# ------------------------------------------------------------------------------ route


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path) as harness:
        yield harness


@pytest.mark.anyio
async def test_any_key_reads_the_catalogue(api: ApiHarness) -> None:
    scoped = api.client(await api.key("viewer", sessions=["alpha"]))
    response = await scoped.get("/api/webhooks/events")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == cat.catalogue()
    assert {entry["event"] for entry in body["events"]} == {*cat.EVENT_TYPES, cat.TEST_EVENT}


@pytest.mark.anyio
async def test_the_catalogue_needs_a_key(api: ApiHarness) -> None:
    anonymous: httpx.AsyncClient = api.client()
    response = await anonymous.get("/api/webhooks/events")
    assert response.status_code == 401


# ------------------------------------------------------------------------------ docs

DOCS_TEXT = DOCS.read_text(encoding="utf-8")
EXAMPLES = re.findall(r"<!-- example: ([\w.]+) -->\s*```json\n(.*?)```", DOCS_TEXT, re.DOTALL)


def test_every_event_is_documented_with_an_example() -> None:
    headings = set(re.findall(r"^#+ .*$", DOCS_TEXT, re.MULTILINE))
    examples = {name for name, _ in EXAMPLES}
    for event in (*cat.EVENT_TYPES, cat.TEST_EVENT):
        assert any(f"`{event}`" in heading for heading in headings), f"{event}: no section"
        assert event in examples, f"{event}: no example"
    assert "envelope" in examples
    assert "`truncated`" in DOCS_TEXT


def test_the_docs_examples_are_tagged_with_known_names() -> None:
    untagged = len(re.findall(r"```json", DOCS_TEXT)) - len(EXAMPLES)
    assert untagged == 0, "a JSON block in docs/events.md has no example tag"
    known = {*cat.EVENT_TYPES, cat.TEST_EVENT, "envelope"}
    assert {name for name, _ in EXAMPLES} <= known


@pytest.mark.parametrize(
    ("name", "block"), EXAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXAMPLES)]
)
def test_every_docs_example_validates(name: str, block: str) -> None:
    if name == "envelope":
        parsed = cat.Envelope.model_validate_json(block, strict=True)
        cat.validate(parsed.event, parsed.data)
        assert list(json.loads(block)) == ENVELOPE_KEYS
    else:
        cat.validate(name, json.loads(block))


def test_the_docs_state_the_current_version() -> None:
    assert f"currently **{cat.CATALOGUE_VERSION}**" in DOCS_TEXT


def test_the_envelope_version_follows_the_catalogue() -> None:
    annotation = cat.Envelope.model_fields["version"].annotation
    assert typing.get_args(annotation) == (cat.CATALOGUE_VERSION,)
