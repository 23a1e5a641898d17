"""The event catalogue: what webhooks and the live stream carry, version by version.

Three parts, kept together so that the shapes, the code that makes them and the schema
published at ``GET /api/webhooks/events`` cannot drift apart:

* **models**, one per event's ``data`` plus the delivery :class:`Envelope`. They are the
  contract: the JSON schemas of the catalogue are generated from them, and tests (and
  :func:`validate`) hold every payload the host builds against them.
* **payload builders** (``*_payload``), called where an event happens. They run on hot
  paths (every message and ack), so they build plain dicts directly and never create a
  pydantic model; the models only check them, in tests.
* :func:`envelope_bytes`, the JSON of one delivery, with trimming to a size cap.

Versioning: adding an event, a data field or an enum value keeps
:data:`CATALOGUE_VERSION`; removing or renaming anything, or changing a field's type or
meaning, bumps it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from enginehost.core.engine import AckStatus, DisconnectClassification, MessageType
from enginehost.core.sessions.status import SessionStatus

# Nothing from enginehost.core.messages: its store imports this module to build events.

__all__ = [
    "ALL_EVENTS",
    "BULKY_FIELDS",
    "CATALOGUE_VERSION",
    "EVENT_TYPES",
    "TEST_EVENT",
    "TEST_MESSAGE",
    "AckData",
    "AuthenticatedData",
    "DisconnectedData",
    "Envelope",
    "EnvelopeTooSmallError",
    "InvalidPayloadError",
    "MessageData",
    "QrData",
    "ReactionData",
    "ReconnectLoopData",
    "RevokedData",
    "SessionStatusData",
    "Truncation",
    "UnknownEventError",
    "WebhookTestData",
    "ack_payload",
    "authenticated_payload",
    "catalogue",
    "catalogue_json",
    "disconnected_payload",
    "envelope_bytes",
    "json_schema",
    "message_payload",
    "qr_payload",
    "reaction_payload",
    "reconnect_loop_payload",
    "revoked_payload",
    "session_status_payload",
    "test_payload",
    "validate",
]

CATALOGUE_VERSION = 1
"""The ``version`` of every envelope; bumped only by a change that is not additive."""

ALL_EVENTS = "*"
"""The subscription that means every event of :data:`EVENT_TYPES`, present and future."""

TEST_EVENT = "webhook.test"
"""Sent by the webhook test route only: not subscribable, so not in :data:`EVENT_TYPES`."""

TEST_MESSAGE = "This is a test delivery from enginehost."
"""A ``message`` for a ``webhook.test`` delivery, for callers with nothing more to say."""

EVENT_TYPES: tuple[str, ...] = (
    "message.received",
    "message.sent",
    "message.ack",
    "message.failed",
    "message.revoked",
    "message.reaction",
    "session.status",
    "session.qr",
    "session.authenticated",
    "session.disconnected",
    "session.reconnect_loop",
)
"""The events a webhook or a stream can subscribe to (the public contract's names)."""

BULKY_FIELDS: tuple[str, ...] = ("raw", "media", "base64", "thumbnail")
"""Data fields a trimmed delivery drops first, whole: engine dumps and inline media are
large and rarely what a receiver acts on. No version-1 event has them today; the
trimming handles them so an additive field of this kind cannot make deliveries fail."""

# Never shortened by trimming: a receiver correlates and dispatches on these, and a cut
# value would silently name another message or state. They are short anyway.
_WHOLE_FIELDS = frozenset(
    {
        "id",
        "sessionId",
        "sessionName",
        "chatId",
        "messageId",
        "quotedMessageId",
        "sender",
        "direction",
        "type",
        "status",
        "previous",
        "engine",
        "classification",
        "code",
        "emoji",
        "webhookId",
    }
)

_TRUNCATED = "truncated"


# ------------------------------------------------------------------------------ errors


class UnknownEventError(ValueError):
    """An event name the catalogue does not have."""

    def __init__(self, event: str) -> None:
        known = ", ".join((*EVENT_TYPES, TEST_EVENT))
        super().__init__(f"unknown event {event!r}; the catalogue has: {known}")
        self.event = event


class InvalidPayloadError(ValueError):
    """A payload that does not match its event's schema; names every problem."""

    def __init__(self, event: str, problems: list[str]) -> None:
        super().__init__(f"invalid {event} data: " + "; ".join(problems))
        self.event = event
        self.problems = problems


class EnvelopeTooSmallError(ValueError):
    """A size cap below what even a fully trimmed delivery needs (a misconfiguration)."""


# ------------------------------------------------------------------------------ models


def _real_time(value: str) -> str:
    datetime.fromisoformat(value)  # the pattern lets through a 13th month; this does not
    return value


# A string rather than a datetime: payloads are checked as the JSON a receiver gets, and
# the one form the host writes (UTC, 'Z') is part of the contract.
UtcDateTime = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_real_time),
]
"""An ISO 8601 time in UTC ending in 'Z' (as the REST API writes times)."""


class _Shape(BaseModel):
    """Base of the catalogue's models: camelCase by alias only, nothing unknown.

    Stricter than the API's ``CamelModel`` on purpose: these models check what the host
    sends, so a snake_case key (accepted by name there) or a stray key is an error here.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
        field_title_generator=lambda name, _: name.replace("_", " ").capitalize(),
    )


class Truncation(_Shape):
    """The marker a delivery trimmed to the webhook's size cap carries as
    ``data.truncated``."""

    fields: list[str] = Field(
        description="The data fields dropped or shortened, in the order they were trimmed. "
        "When `data` holds nothing but this marker, every field listed was dropped."
    )
    original_bytes: int = Field(ge=0, description="The size of the untrimmed delivery in bytes.")


class Envelope(_Shape):
    """One webhook delivery: an event and its data."""

    event: str = Field(
        description="The event's name.", json_schema_extra={"enum": [*EVENT_TYPES, TEST_EVENT]}
    )
    timestamp: Annotated[str, AfterValidator(_real_time)] = Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
        description="When the event happened: ISO 8601 in UTC, milliseconds, 'Z'.",
        json_schema_extra={"format": "date-time"},
    )
    session_id: str | None = Field(
        description="The session's id; null for an event of no session (webhook.test of a "
        "global webhook)."
    )
    idempotency_key: str = Field(
        description="The same for every attempt and re-drive of this event to this webhook: "
        "receivers drop repeats by it."
    )
    delivery_id: str = Field(description="This delivery's id (the same for its retries).")
    version: Literal[1] = Field(description="The catalogue version of `data`.")
    data: dict[str, Any] = Field(description="The event's data (see the event's schema).")


class MessageData(_Shape):
    """A message, as the REST API's message history returns it, plus who wrote it."""

    session_name: str
    id: str = Field(description="The stored record's id (a UUID).")
    session_id: str
    chat_id: str
    message_id: str | None = Field(description="The engine's id; null while a send is pending.")
    direction: Literal["incoming", "outgoing"]
    type: MessageType
    status: AckStatus
    body: str | None = Field(description="The text, caption, or a summary of the message.")
    from_me: bool
    has_media: bool
    timestamp: int = Field(description="When it was sent or received, in Unix seconds.")
    created_at: UtcDateTime
    updated_at: UtcDateTime
    quoted_message_id: str | None = Field(description="The engine's id of the message it quotes.")
    failure_reason: str | None = Field(description="Why a failed send failed.")
    sender: str | None = Field(
        description="The author's chat id: in a group, the member who wrote it; null when "
        "the engine did not say."
    )
    is_group: bool = Field(description="Whether the chat is a group (`chatId` ends in @g.us).")


class AckData(_Shape):
    """A delivery status update of a message this account sent."""

    session_name: str
    id: str = Field(description="The stored record's id.")
    chat_id: str
    message_id: str = Field(description="The engine's id of the message.")
    status: AckStatus = Field(description="The message's status after the update.")
    from_me: bool


class RevokedData(_Shape):
    """A message deleted for everyone."""

    session_name: str
    chat_id: str
    message_id: str = Field(description="The engine's id of the deleted message.")
    id: str | None = Field(description="Its record's id; null when the host never stored it.")
    sender: str | None = Field(description="Who deleted it; null when the engine did not say.")
    from_me: bool = Field(description="Whether this account deleted it.")


class ReactionData(_Shape):
    """A reaction set or removed."""

    session_name: str
    chat_id: str
    message_id: str = Field(description="The engine's id of the message reacted to.")
    id: str | None = Field(
        description="That message's record id; null when the host never stored it."
    )
    emoji: str = Field(description="The reaction; an empty string means it was removed.")
    sender: str | None = Field(description="Who reacted; null when the engine did not say.")
    from_me: bool = Field(description="Whether this account reacted.")


class SessionStatusData(_Shape):
    """A session's status change."""

    session_name: str
    engine: str = Field(description="The session's engine.")
    status: SessionStatus
    previous: SessionStatus | None = Field(description="The status before; null for a new one.")
    reason: str | None = Field(description="Why, when the host knows.")


class QrData(_Shape):
    """A QR code to scan with the phone."""

    session_name: str
    qr: str = Field(description="The raw QR payload: render it as a QR code.")


class AuthenticatedData(_Shape):
    """The phone accepted the link."""

    session_name: str


class DisconnectedData(_Shape):
    """The engine's connection ended."""

    session_name: str
    classification: DisconnectClassification
    code: str | int | None = Field(
        description="The engine's own code (a status code or state name), for operators."
    )
    reason: str = Field(description="The engine's explanation (may be empty).")


class ReconnectLoopData(_Shape):
    """A session that keeps failing to reconnect."""

    session_name: str
    attempt: int = Field(ge=1, description="The reconnect attempt about to be made (1, 2, ...).")
    reason: str = Field(description="Why the last connection ended.")


class WebhookTestData(_Shape):
    """A test delivery."""

    webhook_id: str = Field(description="The webhook being tested.")
    message: str


@dataclass(frozen=True, slots=True)
class _Event:
    model: type[_Shape]
    description: str


_EVENTS: dict[str, _Event] = {
    "message.received": _Event(
        MessageData,
        "A message someone else sent arrived. Fired once per message: an engine repeating "
        "it does not fire again.",
    ),
    "message.sent": _Event(
        MessageData,
        "A message of this account: sent through the API (once the engine took it) or "
        "composed on the phone.",
    ),
    "message.ack": _Event(
        AckData,
        "The delivery status of a message this account sent moved forward "
        "(sent, delivered, read); statuses never move back.",
    ),
    "message.failed": _Event(
        MessageData, "A send through the API failed; `failureReason` says why."
    ),
    "message.revoked": _Event(RevokedData, "A message was deleted for everyone."),
    "message.reaction": _Event(
        ReactionData, "Someone (or this account) reacted to a message, or removed a reaction."
    ),
    "session.status": _Event(SessionStatusData, "The session's status changed."),
    "session.qr": _Event(
        QrData, "A QR code to scan while pairing; a new one follows each time it rotates."
    ),
    "session.authenticated": _Event(
        AuthenticatedData,
        "The phone accepted the link (or saved credentials were accepted); `session.status` "
        "`ready` follows once the session can send.",
    ),
    "session.disconnected": _Event(
        DisconnectedData,
        "The engine's connection ended; `classification` tells what the host does next.",
    ),
    "session.reconnect_loop": _Event(
        ReconnectLoopData,
        "The session has failed to reconnect many times in a row (fired every few "
        "attempts, while it keeps trying).",
    ),
    TEST_EVENT: _Event(WebhookTestData, "Sent by the webhook test route only, to try a receiver."),
}


# ------------------------------------------------------------------------------ builders


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    # The store hands back aware times; a naive one can only mean UTC here.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """UTC with a 'Z', exactly as the REST API writes the same time."""
    return _utc(moment).isoformat()[:-6] + "Z"


def _iso_millis(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds")[:-6] + "Z"


def message_payload(
    row: Mapping[str, Any], *, session_name: str, sender: str | None
) -> dict[str, Any]:
    """The data of ``message.received``, ``message.sent`` and ``message.failed``.

    ``row`` is a message row as the store builds it (the ``messages`` columns by name);
    columns beyond the event's, such as ``raw``, are left out.
    """
    chat_id: str = row["chat_id"]
    created_at, updated_at = row["created_at"], row["updated_at"]
    created = _iso(created_at)
    # A new row's two times are one: format it once (this runs for every message).
    updated = created if updated_at == created_at else _iso(updated_at)
    return {
        "sessionName": session_name,
        "id": row["id"],
        "sessionId": row["session_id"],
        "chatId": chat_id,
        "messageId": row["message_id"],
        "direction": row["direction"],
        "type": row["type"],
        "status": row["status"],
        "body": row["body"],
        "fromMe": bool(row["from_me"]),
        "hasMedia": bool(row["has_media"]),
        "timestamp": int(_utc(row["timestamp"]).timestamp()),
        "createdAt": created,
        "updatedAt": updated,
        "quotedMessageId": row["quoted_message_id"],
        "failureReason": row["failure_reason"],
        "sender": sender,
        "isGroup": chat_id.endswith("@g.us"),
    }


def ack_payload(
    *,
    session_name: str,
    id: str,
    chat_id: str,
    message_id: str,
    status: AckStatus | str,
    from_me: bool = True,
) -> dict[str, Any]:
    """The data of ``message.ack`` (``id``: the record's id)."""
    return {
        "sessionName": session_name,
        "id": id,
        "chatId": chat_id,
        "messageId": message_id,
        "status": AckStatus(status).value,
        "fromMe": from_me,
    }


def revoked_payload(
    *,
    session_name: str,
    chat_id: str,
    message_id: str,
    id: str | None,
    sender: str | None,
    from_me: bool,
) -> dict[str, Any]:
    """The data of ``message.revoked`` (``id``: the record's id, None if never stored)."""
    return {
        "sessionName": session_name,
        "chatId": chat_id,
        "messageId": message_id,
        "id": id,
        "sender": sender,
        "fromMe": from_me,
    }


def reaction_payload(
    *,
    session_name: str,
    chat_id: str,
    message_id: str,
    id: str | None,
    emoji: str,
    sender: str | None,
    from_me: bool,
) -> dict[str, Any]:
    """The data of ``message.reaction``: ``message_id``/``id`` name the message reacted
    to; an empty ``emoji`` is a removed reaction."""
    return {
        "sessionName": session_name,
        "chatId": chat_id,
        "messageId": message_id,
        "id": id,
        "emoji": emoji,
        "sender": sender,
        "fromMe": from_me,
    }


def session_status_payload(
    *,
    session_name: str,
    engine: str,
    status: SessionStatus | str,
    previous: SessionStatus | str | None,
    reason: str | None,
) -> dict[str, Any]:
    """The data of ``session.status``."""
    return {
        "sessionName": session_name,
        "engine": engine,
        "status": SessionStatus(status).value,
        "previous": None if previous is None else SessionStatus(previous).value,
        "reason": reason,
    }


def qr_payload(*, session_name: str, qr: str) -> dict[str, Any]:
    """The data of ``session.qr`` (``qr``: the raw payload, not an image)."""
    return {"sessionName": session_name, "qr": qr}


def authenticated_payload(*, session_name: str) -> dict[str, Any]:
    """The data of ``session.authenticated``."""
    return {"sessionName": session_name}


def disconnected_payload(
    *,
    session_name: str,
    classification: DisconnectClassification | str,
    code: str | int | None,
    reason: str,
) -> dict[str, Any]:
    """The data of ``session.disconnected`` (``code``: the engine's own code)."""
    return {
        "sessionName": session_name,
        "classification": DisconnectClassification(classification).value,
        "code": code,
        "reason": reason,
    }


def reconnect_loop_payload(*, session_name: str, attempt: int, reason: str) -> dict[str, Any]:
    """The data of ``session.reconnect_loop``."""
    return {"sessionName": session_name, "attempt": attempt, "reason": reason}


def test_payload(*, webhook_id: str, message: str) -> dict[str, Any]:
    """The data of ``webhook.test`` (``message``: :data:`TEST_MESSAGE`, or the caller's)."""
    return {"webhookId": webhook_id, "message": message}


# Not a test function, whatever its name says (pytest collects test_* from imports).
test_payload.__test__ = False  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ envelope


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent in an event: {value!r}")


# One encoder each, built once: json.dumps with options builds a new one per call.
_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_json_default)
_VERSION_AND_DATA = f',"version":{CATALOGUE_VERSION},"data":'

_Dump = Callable[[Any], bytes]


def _dump_text(value: Any) -> bytes:
    return _TEXT.encode(value).encode()


def _dump_ascii(value: Any) -> bytes:
    return _ASCII.encode(value).encode()


def _head(
    encode: Callable[[Any], str],
    event: str,
    timestamp: datetime,
    session_id: str | None,
    idempotency_key: str,
    delivery_id: str,
) -> str:
    """The envelope up to ``"data":``: concatenated rather than encoded as one dict, so
    the key order is fixed and a trimmed delivery re-encodes its data only."""
    return (
        '{"event":'
        + encode(event)
        + ',"timestamp":"'
        + _iso_millis(timestamp)
        + '","sessionId":'
        + ("null" if session_id is None else encode(session_id))
        + ',"idempotencyKey":'
        + encode(idempotency_key)
        + ',"deliveryId":'
        + encode(delivery_id)
        + _VERSION_AND_DATA
    )


def envelope_bytes(
    *,
    event: str,
    timestamp: datetime,
    session_id: str | None,
    idempotency_key: str,
    delivery_id: str,
    data: Mapping[str, Any],
    max_bytes: int | None = None,
) -> bytes:
    """The delivery's JSON: compact, UTF-8, keys in the envelope's order.

    With ``max_bytes``, a larger delivery is trimmed to fit (see :func:`_trimmed` and
    the catalogue's ``truncated`` marker); one that fits is returned as is. Raises
    :class:`EnvelopeTooSmallError` when even the trimmed form cannot fit.

    Text a strict UTF-8 encoder refuses (a lone surrogate an engine let through) is
    written as JSON escapes instead: still the same string, and never invalid UTF-8.
    """
    try:
        encode, dump = _TEXT.encode, _dump_text
        head = _head(encode, event, timestamp, session_id, idempotency_key, delivery_id)
        result = (head + encode(data) + "}").encode()
    except UnicodeEncodeError:
        encode, dump = _ASCII.encode, _dump_ascii
        head = _head(encode, event, timestamp, session_id, idempotency_key, delivery_id)
        result = (head + encode(data) + "}").encode()
    if max_bytes is None or len(result) <= max_bytes:
        return result
    head_bytes = head.encode()
    trimmed = _trimmed(data, max_bytes - len(head_bytes) - 1, len(result), dump)
    if trimmed is None:
        raise EnvelopeTooSmallError(
            f"max_bytes={max_bytes} cannot hold a {event} delivery even with every data "
            f"field dropped (its envelope alone takes {len(head_bytes) + 1} bytes)"
        )
    return head_bytes + trimmed + b"}"


# ------------------------------------------------------------------------------ trimming


def _trimmed(data: Mapping[str, Any], budget: int, original: int, dump: _Dump) -> bytes | None:
    """``data`` as JSON in at most ``budget`` bytes, marked with what was cut; None when
    even the marker alone is too big.

    In order, until it fits: drop bulky fields whole (:data:`BULKY_FIELDS`, then any
    other nested value, largest first); shorten ``body``, then the other free-text
    strings, longest first (never the ids and names of :data:`_WHOLE_FIELDS`); last, drop
    every field and keep the marker only. Strings are cut between characters, so the
    result is always valid UTF-8; nothing is appended to a cut string: the marker names it.
    """
    work = {key: value for key, value in data.items() if key != _TRUNCATED}
    fields: list[str] = []
    marker = {"fields": fields, "originalBytes": original}

    def size() -> int:
        return len(dump({**work, _TRUNCATED: marker}))

    def excess() -> int:
        return size() - budget

    nested = sorted(
        (k for k, v in work.items() if k not in BULKY_FIELDS and isinstance(v, dict | list)),
        key=lambda k: -len(dump(work[k])),
    )
    for key in [*(k for k in BULKY_FIELDS if k in work), *nested]:
        if excess() <= 0:
            break
        del work[key]
        fields.append(key)

    texts = sorted(
        (k for k, v in work.items() if isinstance(v, str) and k not in _WHOLE_FIELDS),
        key=lambda k: (k != "body", -len(dump(work[k]))),
    )
    for key in texts:
        if excess() <= 0:
            break
        fields.append(key)
        work[key] = _shorten(work[key], excess(), dump)

    if excess() <= 0:
        return dump({**work, _TRUNCATED: marker})
    bare = {_TRUNCATED: {"fields": [k for k in data if k != _TRUNCATED], "originalBytes": original}}
    result = dump(bare)
    return result if len(result) <= budget else None


def _shorten(text: str, by: int, dump: _Dump) -> str:
    """The longest prefix of ``text`` whose JSON is at least ``by`` bytes shorter.

    Sizes are of the JSON form (escapes included), so the saving is exact whatever the
    text holds; a binary search over character counts, as escapes and multi-byte
    characters make byte and character counts differ.
    """
    target = len(dump(text)) - by
    if target <= 2:  # not even one character fits between the quotes
        return ""
    low, high = 0, len(text)  # text[:low] fits; text[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if len(dump(text[:middle])) <= target:
            low = middle
        else:
            high = middle
    return text[:low]


# ------------------------------------------------------------------------------ schemas


def _event(event: str) -> _Event:
    try:
        return _EVENTS[event]
    except KeyError:
        raise UnknownEventError(event) from None


@functools.cache
def _data_schema(event: str) -> dict[str, Any]:
    return _event(event).model.model_json_schema(by_alias=True)


def json_schema(event: str) -> dict[str, Any]:
    """The JSON schema of ``event``'s data (a copy: callers may change it)."""
    return copy.deepcopy(_data_schema(event))


@functools.cache
def _catalogue() -> dict[str, Any]:
    return {
        "version": CATALOGUE_VERSION,
        "allEvents": ALL_EVENTS,
        "envelope": Envelope.model_json_schema(by_alias=True),
        "truncation": Truncation.model_json_schema(by_alias=True),
        "events": [
            {
                "event": name,
                "description": entry.description,
                "subscribable": name != TEST_EVENT,
                "dataSchema": _data_schema(name),
            }
            for name, entry in _EVENTS.items()
        ],
    }


def catalogue() -> dict[str, Any]:
    """The whole catalogue: its version, the envelope's schema, the truncation marker's,
    and every event with its description and data schema (a copy)."""
    return copy.deepcopy(_catalogue())


@functools.cache
def catalogue_json() -> bytes:
    """:func:`catalogue` as JSON, encoded once (it only changes with the code)."""
    return _dump_text(_catalogue())


def validate(event: str, data: Mapping[str, Any]) -> None:
    """Check ``data`` against ``event``'s schema as a receiver would see it (as JSON).

    A trimmed payload is checked too: its ``truncated`` marker against :class:`Truncation`
    and the rest against the event, unless every field was dropped. Raises
    :class:`UnknownEventError` or :class:`InvalidPayloadError`.
    """
    model = _event(event).model
    payload = dict(data)
    marker = payload.pop(_TRUNCATED, None)
    checks: list[tuple[type[_Shape], Any, str]] = []
    if marker is not None:
        checks.append((Truncation, marker, f"{_TRUNCATED}."))
    if marker is None or payload:
        checks.append((model, payload, ""))
    for shape, value, prefix in checks:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidPayloadError(event, [f"not JSON: {exc}"]) from None
        try:
            shape.model_validate_json(text, strict=True)
        except ValidationError as exc:
            raise InvalidPayloadError(event, _problems(exc, prefix)) from None


def _problems(error: ValidationError, prefix: str) -> list[str]:
    return [
        f"{prefix}{'.'.join(str(part) for part in problem['loc']) or '(data)'}: {problem['msg']}"
        for problem in error.errors()
    ]
