"""Sending messages: every kind of send takes one path, from the checks to the stored row.

The path of a send (:meth:`SendService.send_text` and its siblings), in order:

1. **Validate** what the caller gave: chat ids in the neutral dialect (``<digits>@c.us``,
   ``<id>@g.us``, ``<lid>@lid``, ``status@broadcast``), texts, numbers. Errors name the
   field as the API spells it (``chatId``, ``toChatId``, ...): 422.
2. **Ready.** The session must have a live engine and status ``ready``: otherwise 409
   ``session_not_ready`` with the status, or 503 ``session_reconnecting`` (with a
   ``retryAfter`` hint in seconds) while the host reconnects it (``initializing`` with
   ``reconnect_attempt > 0``).
3. **Capability.** The engine's plugin must declare the capability of the send
   (``send_text``, ``send_media``, ...): otherwise 501 ``not_supported``.
4. **Prepare**: fetch or decode media (413 ``payload_too_large`` over the cap, 422
   ``media_fetch_failed`` naming only the URL's host), render a template.
5. **Veto.** ``message_sending`` hook implementations may refuse: 403 ``send_vetoed``.
6. **Pending row**, written before the engine is called, with the ``Idempotency-Key``
   when one was given. When the session already used the key, nothing is sent again:
   the first send's result comes back (the same message), 409 ``send_in_progress`` while
   that send is still pending, or its failure again (502 ``engine_error`` with the stored
   reason, whatever the first answer's status was). A key reused for a different send
   (another chat, type, text or quote) is 422 ``idempotency_key_reused``, as the IETF
   ``Idempotency-Key`` draft recommends. Errors of steps 1-5 store nothing, so they do
   not use up the key: a retry is checked afresh.
7. **Engine call**, then the row is marked ``sent`` with the engine's id (which also
   merges the engine's echo of the send) or ``failed`` with the reason: 502
   ``engine_error`` (501 / 409 when the engine says it cannot do it / is not connected).
   The call is shielded from cancellation and bounded by ``send_timeout``: a send that
   reached the engine is always recorded, even when the caller went away.

React and delete produce no new message: no row is written, so they take steps 1-3 and 5
(the hook sees ``kind`` ``react`` / ``delete``) and call the engine. They are idempotent
by nature (setting a reaction, deleting a message), so they ignore idempotency keys.
"""

from __future__ import annotations

import base64
import binascii
import math
import mimetypes
import posixpath
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import anyio
import httpx

from enginehost.core.engine import (
    AckStatus,
    Capability,
    Engine,
    EngineClosedError,
    EngineNotRunningError,
    MediaPayload,
    MessageType,
    SendResult,
    UnsupportedOperationError,
)
from enginehost.core.errors import FieldError, ServiceError, error_summary, shortened
from enginehost.core.logging import get_logger
from enginehost.core.messages.models import (
    CHAT_ID_MAX,
    IDEMPOTENCY_KEY_MAX,
    MESSAGE_ID_MAX,
    MessageRecord,
)
from enginehost.core.messages.store import MessageNotFoundError, MessageStore
from enginehost.core.net.guard import (
    AddressPolicy,
    RefusedAddressError,
    guarded_transport,
    parse_address,
)
from enginehost.core.plugins import PluginHost
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.status import SessionStatus
from enginehost.core.templates.service import TemplateService

__all__ = [
    "CAPTION_MAX",
    "CONTACT_NAME_MAX",
    "DEFAULT_MEDIA_FETCH_TIMEOUT",
    "DEFAULT_MEDIA_MAX_BYTES",
    "DEFAULT_SEND_TIMEOUT",
    "EMOJI_MAX",
    "FILENAME_MAX",
    "MEDIA_MAX_REDIRECTS",
    "MEDIA_TYPES",
    "MIMETYPE_MAX",
    "TEXT_MAX",
    "URL_MAX",
    "EngineSendError",
    "IdempotencyKeyReusedError",
    "MediaFetchError",
    "MediaTooLargeError",
    "NotSupportedError",
    "SendError",
    "SendInProgressError",
    "SendReceipt",
    "SendService",
    "SendValidationError",
    "SendVetoedError",
    "SessionNotReadyError",
    "SessionReconnectingError",
    "check_chat_id",
]

log = get_logger("enginehost.send")

DEFAULT_MEDIA_MAX_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MEDIA_FETCH_TIMEOUT: Final = 20.0
DEFAULT_SEND_TIMEOUT: Final = 60.0
MEDIA_MAX_REDIRECTS: Final = 3
_PRIVATE_ADDRESS: Final = (
    "it is a loopback, private or link-local address "
    "(ENGINEHOST_MEDIA_FETCH_PRIVATE_NETWORKS=true allows it)"
)

TEXT_MAX: Final = 65536
"""Characters of a text message (WhatsApp's own limit is about this)."""
CAPTION_MAX: Final = 1024
FILENAME_MAX: Final = 255
MIMETYPE_MAX: Final = 255
URL_MAX: Final = 2048
CONTACT_NAME_MAX: Final = 256
EMOJI_MAX: Final = 32

MEDIA_TYPES: Final = frozenset(
    {
        MessageType.IMAGE,
        MessageType.VIDEO,
        MessageType.AUDIO,
        MessageType.DOCUMENT,
        MessageType.STICKER,
    }
)

# The mimetype of media sent without one whose source says nothing either.
_DEFAULT_MIMETYPES: Final = {
    MessageType.IMAGE: "image/jpeg",
    MessageType.VIDEO: "video/mp4",
    MessageType.AUDIO: "audio/mpeg",
    MessageType.DOCUMENT: "application/octet-stream",
    MessageType.STICKER: "image/webp",
}
_GENERIC_MIMETYPE = "application/octet-stream"

_CHAT_ID = re.compile(
    r"^(?:[0-9]{5,32}@c\.us"  # a person, by phone number
    r"|[0-9]{5,32}(?:-[0-9]{5,32})?@g\.us"  # a group (old ids are <creator>-<time>)
    r"|[0-9]{5,32}@lid"  # a person, by privacy id
    r"|status@broadcast)$"
)
_CONTACT_NUMBER = re.compile(r"^[0-9]{8,15}$")
_NUMBER_PUNCTUATION = re.compile(r"[\s()+.-]")
_MIMETYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
    r"(?:\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(?:[A-Za-z0-9!#$&^_.+-]+|\"[^\"]*\"))*$"
)
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*);base64,", re.IGNORECASE)


# ------------------------------------------------------------------------------ errors


class SendError(ServiceError):
    """Base class of the errors a send answers with."""


class SendValidationError(SendError, FieldError):
    """A value given for a send is not acceptable; ``field`` is the API's name for it."""


class SessionNotReadyError(SendError):
    """The session cannot send now (no live engine, or not ``ready``)."""

    status_code = 409
    default_code = "session_not_ready"

    def __init__(self, session: str, status: str, detail: str | None = None) -> None:
        message = f"session {session!r} is not ready to send: its status is {status}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.status = status

    @property
    def extra(self) -> dict[str, Any]:
        return {"status": self.status}


class SessionReconnectingError(SendError):
    """The host is reconnecting the session; ``retry_after`` is a hint in seconds."""

    status_code = 503
    default_code = "session_reconnecting"

    def __init__(self, session: str, attempt: int, retry_after: int) -> None:
        super().__init__(
            f"session {session!r} is reconnecting (attempt {attempt}); "
            f"retry in about {retry_after} s"
        )
        self.attempt = attempt
        self.retry_after = retry_after

    @property
    def extra(self) -> dict[str, Any]:
        return {
            "status": SessionStatus.INITIALIZING.value,
            "reconnectAttempt": self.attempt,
            "retryAfter": self.retry_after,
        }

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotSupportedError(SendError):
    """The session's engine does not declare the capability a send needs."""

    status_code = 501
    default_code = "not_supported"

    def __init__(self, capability: Capability, engine: str) -> None:
        super().__init__(f"engine {engine!r} does not support {capability.value}")
        self.capability = capability
        self.engine = engine

    @property
    def extra(self) -> dict[str, Any]:
        return {"capability": self.capability.value, "engine": self.engine}


class SendVetoedError(SendError):
    """A ``message_sending`` hook implementation refused the send."""

    status_code = 403
    default_code = "send_vetoed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the send was refused: {reason}")
        self.reason = reason

    @property
    def extra(self) -> dict[str, Any]:
        return {"reason": self.reason}


class _KeyedSendError(SendError):
    """A refusal about the send first made with an idempotency key: names its record."""

    explanation: str = ""

    def __init__(self, record_id: str) -> None:
        super().__init__(self.explanation)
        self.record_id = record_id

    @property
    def extra(self) -> dict[str, Any]:
        return {"id": self.record_id}


class SendInProgressError(_KeyedSendError):
    """The send first made with this idempotency key has not completed yet."""

    status_code = 409
    default_code = "send_in_progress"
    explanation = (
        "a send with this Idempotency-Key is still in progress; retry shortly for its result"
    )


class IdempotencyKeyReusedError(_KeyedSendError):
    """The idempotency key was used for a different send of the session."""

    status_code = 422
    default_code = "idempotency_key_reused"
    explanation = (
        "this Idempotency-Key was already used for a different send (another chat, type, "
        "text or quote); use a new key for a new message"
    )


class EngineSendError(SendError):
    """The engine failed the send; ``reason`` says why (the row is ``failed``)."""

    status_code = 502
    default_code = "engine_error"

    def __init__(self, reason: str, record_id: str | None = None) -> None:
        super().__init__(f"the engine could not send: {reason}")
        self.reason = reason
        self.record_id = record_id

    @property
    def extra(self) -> dict[str, Any]:
        details: dict[str, Any] = {"reason": self.reason}
        if self.record_id is not None:
            details["id"] = self.record_id
        return details


class MediaFetchError(SendError):
    """Media could not be fetched from its URL; only the host is named (URLs hold tokens)."""

    status_code = 422
    default_code = "media_fetch_failed"

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"cannot fetch the media from {host}: {problem}")
        self.host = host
        self.problem = problem

    @property
    def extra(self) -> dict[str, Any]:
        return {"host": self.host}


class MediaTooLargeError(SendError):
    status_code = 413
    default_code = "payload_too_large"

    def __init__(self, limit: int, where: str) -> None:
        super().__init__(f"the media {where} is larger than the limit of {limit} bytes")
        self.limit = limit

    @property
    def extra(self) -> dict[str, Any]:
        return {"maxBytes": self.limit}


# -------------------------------------------------------------------------- validation


def check_chat_id(field: str, value: object) -> str:
    """``value`` if it is a chat id in the neutral dialect, else :class:`SendValidationError`."""
    if not isinstance(value, str):
        raise SendValidationError(field, f"must be a string, got {type(value).__name__}")
    if len(value) <= CHAT_ID_MAX and _CHAT_ID.match(value):
        return value
    hint = ""
    if value.endswith("@s.whatsapp.net"):
        hint = " (that is the Baileys dialect; write '<digits>@c.us')"
    elif value.startswith("+") or "@" not in value:
        hint = " (a phone number is written '<digits>@c.us', without '+')"
    raise SendValidationError(
        field,
        "must be a chat id: '<digits>@c.us', '<id>@g.us', '<lid>@lid' or 'status@broadcast'" + hint,
    )


def _text(field: str, value: object, maximum: int, *, allow_blank: bool = False) -> str:
    if not isinstance(value, str):
        raise SendValidationError(field, f"must be a string, got {type(value).__name__}")
    if not allow_blank and not value.strip():
        raise SendValidationError(field, "must not be empty or only whitespace")
    if len(value) > maximum:
        raise SendValidationError(field, f"must be at most {maximum} characters, got {len(value)}")
    if "\x00" in value:
        raise SendValidationError(field, "must not contain NUL characters")
    return value


def _optional_text(field: str, value: object, maximum: int) -> str | None:
    return None if value is None else _text(field, value, maximum)


def _message_id(field: str, value: object) -> str:
    value = _text(field, value, MESSAGE_ID_MAX)
    if value != value.strip():
        raise SendValidationError(field, "must not start or end with whitespace")
    return value


def _coordinate(field: str, value: object, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SendValidationError(field, "must be a number")
    number = float(value)
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise SendValidationError(field, f"must be between {-limit:g} and {limit:g}")
    return number


def _contact_number(value: object) -> str:
    text = _text("contactNumber", value, 32)
    digits = _NUMBER_PUNCTUATION.sub("", text)
    if not _CONTACT_NUMBER.match(digits):
        raise SendValidationError(
            "contactNumber", "must be a phone number: 8 to 15 digits, country code first"
        )
    return digits


def _mimetype(field: str, value: object) -> str | None:
    if value is None:
        return None
    text = _text(field, value, MIMETYPE_MAX).strip()
    if not _MIMETYPE.match(text):
        raise SendValidationError(field, "must be a media type such as 'image/png'")
    return text


def _idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX
        or not all(" " <= c <= "~" for c in value)
    ):
        raise SendValidationError(
            "Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"
        )
    return value


def _bare_mimetype(header: str | None) -> str | None:
    """A Content-Type header's media type without parameters, or None when unusable."""
    if not header:
        return None
    bare = header.split(";", 1)[0].strip().lower()
    if not bare or bare == _GENERIC_MIMETYPE or not _MIMETYPE.match(bare):
        return None
    return bare


def _guess_mimetype(name: str | None) -> str | None:
    if not name:
        return None
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What a send answers: our record id, the engine's message id, its time and status.

    ``replayed`` is True when an idempotency key brought back an earlier send's result.
    """

    id: str
    message_id: str
    timestamp: datetime
    status: str
    replayed: bool = False

    @classmethod
    def of(cls, record: MessageRecord, *, replayed: bool = False) -> SendReceipt:
        """The receipt of a sent row (one with the engine's message id)."""
        if record.message_id is None:
            raise ValueError(f"message {record.id!r} has no engine id yet")
        return cls(record.id, record.message_id, record.timestamp, record.status, replayed)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A prepared send: what the pending row stores and what the hook is shown."""

    chat_id: str
    type: MessageType
    body: str | None
    text: str | None = None
    media: MediaPayload | None = None
    quoted_message_id: str | None = None


_Prepare = Callable[[], Awaitable[_Outgoing]]
_Call = Callable[[Engine, _Outgoing], Awaitable[SendResult]]


# ------------------------------------------------------------------------------ service


class SendService:
    """Sends through a session's live engine and records every send (see the module doc).

    Each method takes the session's :class:`SessionRecord` as just resolved by the
    caller (the API resolves it for every request), and raises :class:`SendError`
    subclasses (or the template and message store's :class:`ServiceError` s) for
    everything that is the caller's or the engine's doing.
    """

    def __init__(
        self,
        manager: SessionManager,
        plugins: PluginHost,
        messages: MessageStore,
        templates: TemplateService | None = None,
        *,
        media_max_bytes: int = DEFAULT_MEDIA_MAX_BYTES,
        media_fetch_timeout: float = DEFAULT_MEDIA_FETCH_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        allow_private_networks: bool = False,
    ) -> None:
        if media_max_bytes < 1:
            raise ValueError("media_max_bytes must be positive")
        if media_fetch_timeout <= 0 or send_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._manager = manager
        self._plugins = plugins
        self._messages = messages
        self._templates = templates
        self.media_max_bytes = media_max_bytes
        self.media_fetch_timeout = media_fetch_timeout
        self.send_timeout = send_timeout
        self.allow_private_networks = allow_private_networks

    @property
    def messages(self) -> MessageStore:
        """The message store sends are recorded in (history reads go through it)."""
        return self._messages

    # -------------------------------------------------------------------- the kinds

    async def send_text(
        self,
        session: SessionRecord,
        *,
        chat_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Send a text message."""
        chat_id = check_chat_id("chatId", chat_id)
        text = _text("text", text, TEXT_MAX)

        async def prepare() -> _Outgoing:
            return _Outgoing(chat_id=chat_id, type=MessageType.TEXT, body=text, text=text)

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            return await engine.send_text(chat_id, text)

        return await self._send(session, Capability.SEND_TEXT, prepare, call, idempotency_key)

    async def reply(
        self,
        session: SessionRecord,
        *,
        chat_id: str,
        quoted_message_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Send a text quoting the message ``quoted_message_id`` (an engine message id)."""
        chat_id = check_chat_id("chatId", chat_id)
        quoted = _message_id("quotedMessageId", quoted_message_id)
        text = _text("text", text, TEXT_MAX)

        async def prepare() -> _Outgoing:
            return _Outgoing(
                chat_id=chat_id,
                type=MessageType.TEXT,
                body=text,
                text=text,
                quoted_message_id=quoted,
            )

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            return await engine.send_text(chat_id, text, quoted_message_id=quoted)

        return await self._send(session, Capability.REPLY, prepare, call, idempotency_key)

    async def send_template(
        self,
        session: SessionRecord,
        *,
        chat_id: str,
        template_id: str | None = None,
        template_name: str | None = None,
        variables: Mapping[str, object] | None = None,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Render a template of the session (exactly one of id and name) and send it as text.

        Template errors are the template service's own (404 ``template_not_found``, 422
        ``missing_variables`` / ``invalid_variable`` / ``too_large``).
        """
        chat_id = check_chat_id("chatId", chat_id)
        if (template_id is None) == (template_name is None):
            given = "both" if template_id is not None else "neither"
            raise SendValidationError(
                "templateId", f"give exactly one of templateId and templateName ({given} given)"
            )
        templates = self._templates
        if templates is None:
            raise SendError(
                "templates are not available on this host", "unavailable", status_code=503
            )

        async def prepare() -> _Outgoing:
            text = await templates.render(
                session.id, template_id=template_id, name=template_name, variables=variables or {}
            )
            return _Outgoing(chat_id=chat_id, type=MessageType.TEXT, body=text, text=text)

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            assert out.text is not None
            return await engine.send_text(chat_id, out.text)

        return await self._send(session, Capability.SEND_TEXT, prepare, call, idempotency_key)

    async def send_media(
        self,
        session: SessionRecord,
        *,
        type: MessageType,
        chat_id: str,
        url: str | None = None,
        base64: str | None = None,
        mimetype: str | None = None,
        filename: str | None = None,
        caption: str | None = None,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Send an image, video, audio, document or sticker from ``url`` or ``base64``.

        Exactly one of them. The mimetype is, first found: ``mimetype``, the type of a
        ``data:`` URL given as ``base64``, the URL answer's ``Content-Type``, a guess from
        the file name, the type's default (``image/jpeg``, ``video/mp4``, ``audio/mpeg``,
        ``application/octet-stream``, ``image/webp``). A document fetched from a URL
        without a ``filename`` is named after the URL's last path segment.
        """
        try:
            media_type = MessageType(type)
        except ValueError:
            media_type = MessageType.UNKNOWN
        if media_type not in MEDIA_TYPES:
            allowed = ", ".join(sorted(t.value for t in MEDIA_TYPES))
            raise SendValidationError("type", f"must be one of {allowed}")
        chat_id = check_chat_id("chatId", chat_id)
        if (url is None) == (base64 is None):
            given = "both" if url is not None else "neither"
            raise SendValidationError("url", f"give exactly one of url and base64 ({given} given)")
        if url is not None:
            url = _text("url", url, URL_MAX).strip()
            _http_url(url)
        if base64 is not None and not isinstance(base64, str):
            raise SendValidationError("base64", "must be a string")
        declared = _mimetype("mimetype", mimetype)
        name = _optional_text("filename", filename, FILENAME_MAX)
        if name is not None and ("/" in name or "\\" in name):
            raise SendValidationError("filename", "must be a file name, not a path")
        caption = (
            None if caption is None else _text("caption", caption, CAPTION_MAX, allow_blank=True)
        )
        caption = caption or None

        async def prepare() -> _Outgoing:
            if base64 is not None:
                data, from_data_url = self._decode(base64)
                found = declared or from_data_url
                source_name = None
            else:
                assert url is not None
                data, content_type = await self._fetch(url)
                found = declared or _bare_mimetype(content_type)
                source_name = _url_file_name(url)
            media_name = name
            if media_name is None and media_type is MessageType.DOCUMENT:
                media_name = source_name
            chosen = (
                found
                or _guess_mimetype(media_name or source_name)
                or _DEFAULT_MIMETYPES[media_type]
            )
            media = MediaPayload(
                type=media_type, data=data, mimetype=chosen, filename=media_name, caption=caption
            )
            return _Outgoing(
                chat_id=chat_id, type=media_type, body=caption, text=caption, media=media
            )

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            assert out.media is not None
            return await engine.send_media(chat_id, out.media)

        return await self._send(session, Capability.SEND_MEDIA, prepare, call, idempotency_key)

    async def send_location(
        self,
        session: SessionRecord,
        *,
        chat_id: str,
        latitude: float,
        longitude: float,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Send a location pin; the row's body is ``"<latitude>,<longitude>"``."""
        chat_id = check_chat_id("chatId", chat_id)
        lat = _coordinate("latitude", latitude, 90)
        lng = _coordinate("longitude", longitude, 180)

        async def prepare() -> _Outgoing:
            return _Outgoing(chat_id=chat_id, type=MessageType.LOCATION, body=f"{lat},{lng}")

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            return await engine.send_location(chat_id, lat, lng)

        return await self._send(session, Capability.SEND_LOCATION, prepare, call, idempotency_key)

    async def send_contact(
        self,
        session: SessionRecord,
        *,
        chat_id: str,
        contact_name: str,
        contact_number: str,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Send a contact card. The number may hold ``+``, spaces, dashes, dots, brackets;
        the engine gets the digits. The row's body is ``"<name> (+<digits>)"``."""
        chat_id = check_chat_id("chatId", chat_id)
        name = _text("contactName", contact_name, CONTACT_NAME_MAX).strip()
        number = _contact_number(contact_number)

        async def prepare() -> _Outgoing:
            return _Outgoing(
                chat_id=chat_id, type=MessageType.CONTACT, body=f"{name} (+{number})", text=name
            )

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            return await engine.send_contact(chat_id, name, number)

        return await self._send(session, Capability.SEND_CONTACT, prepare, call, idempotency_key)

    async def forward(
        self,
        session: SessionRecord,
        *,
        from_chat_id: str,
        to_chat_id: str,
        message_id: str,
        idempotency_key: str | None = None,
    ) -> SendReceipt:
        """Forward the message ``message_id`` of ``from_chat_id`` to ``to_chat_id``.

        The new row takes the type, body and media flag of the original when the host
        stored it (``unknown`` type otherwise).
        """
        source = check_chat_id("fromChatId", from_chat_id)
        target = check_chat_id("toChatId", to_chat_id)
        original_id = _message_id("messageId", message_id)

        async def prepare() -> _Outgoing:
            try:
                original = await self._messages.by_message_id(session.id, original_id)
            except MessageNotFoundError:
                return _Outgoing(chat_id=target, type=MessageType.UNKNOWN, body=None)
            try:
                kind = MessageType(original.type)
            except ValueError:
                kind = MessageType.UNKNOWN
            return _Outgoing(chat_id=target, type=kind, body=original.body, text=original.body)

        async def call(engine: Engine, out: _Outgoing) -> SendResult:
            return await engine.forward(source, target, original_id)

        return await self._send(session, Capability.FORWARD, prepare, call, idempotency_key)

    async def react(
        self, session: SessionRecord, *, chat_id: str, message_id: str, emoji: str
    ) -> None:
        """React to a message with ``emoji``; an empty ``emoji`` removes the reaction.

        No message row is written (a reaction is no new message) and no idempotency key
        is taken: reacting twice with the same emoji leaves the same state.
        """
        chat_id = check_chat_id("chatId", chat_id)
        target = _message_id("messageId", message_id)
        emoji = _text("emoji", emoji, EMOJI_MAX, allow_blank=True).strip()
        await self._act(
            session,
            Capability.REACT,
            chat_id,
            emoji or None,
            lambda engine: engine.react(chat_id, target, emoji),
        )

    async def delete(self, session: SessionRecord, *, chat_id: str, message_id: str) -> None:
        """Delete (revoke for everyone) a message this account sent.

        No message row is written and no idempotency key is taken: deleting a deleted
        message changes nothing more (the engine may report that as an error).
        """
        chat_id = check_chat_id("chatId", chat_id)
        target = _message_id("messageId", message_id)
        await self._act(
            session,
            Capability.DELETE,
            chat_id,
            None,
            lambda engine: engine.delete_message(chat_id, target),
        )

    # ----------------------------------------------------------------- the one path

    async def _send(
        self,
        session: SessionRecord,
        capability: Capability,
        prepare: _Prepare,
        call: _Call,
        idempotency_key: str | None,
    ) -> SendReceipt:
        key = _idempotency_key(idempotency_key)
        engine = self._ready_engine(session)
        self._require(engine, capability)
        out = await prepare()
        await self._check_veto(session, capability, out.chat_id, out.text, out.media)
        # Shielded from the pending row on: once it is written the send completes (the
        # engine is asked and the outcome recorded) even if the caller goes away, so no
        # row is left pending; bounded by the send timeout.
        with anyio.CancelScope(shield=True):
            record, created = await self._messages.create_pending(
                session.id,
                chat_id=out.chat_id,
                type=out.type,
                body=out.body,
                has_media=out.media is not None,
                quoted_message_id=out.quoted_message_id,
                idempotency_key=key,
            )
            if not created:
                return _replay(record, out)
            receipt = await self._deliver(session, capability, engine, record.id, out, call)
        return receipt

    def _ready_engine(self, session: SessionRecord) -> Engine:
        status = session.status
        if status == SessionStatus.INITIALIZING and session.reconnect_attempt > 0:
            raise SessionReconnectingError(
                session.name, session.reconnect_attempt, self._retry_after(session)
            )
        engine = self._manager.engine(session.id)
        if engine is None:
            detail = None if status != SessionStatus.READY else "it has no running engine"
            raise SessionNotReadyError(session.name, status, detail)
        if status != SessionStatus.READY:
            raise SessionNotReadyError(session.name, status)
        return engine

    def _retry_after(self, session: SessionRecord) -> int:
        """The longest the current reconnect wait can last (full jitter), in seconds."""
        live = self._manager.live(session.id)
        if live is None:
            return 1
        return max(1, math.ceil(live.policy.ceiling(session.reconnect_attempt)))

    def _require(self, engine: Engine, capability: Capability) -> None:
        record = self._plugins.engines.get(engine.engine_name)
        capabilities = record.cls.capabilities if record is not None else frozenset()
        if capability not in capabilities:
            raise NotSupportedError(capability, engine.engine_name)

    async def _check_veto(
        self,
        session: SessionRecord,
        capability: Capability,
        chat_id: str,
        text: str | None,
        media: MediaPayload | None,
    ) -> None:
        reason = await self._plugins.check_send(
            session_id=session.id,
            session_name=session.name,
            chat_id=chat_id,
            kind=capability.value,
            text=text,
            media=media,
        )
        if reason is not None:
            log.info(
                "send.vetoed",
                session_id=session.id,
                kind=capability.value,
                reason=shortened(reason),
            )
            raise SendVetoedError(shortened(reason, 1000))

    async def _deliver(
        self,
        session: SessionRecord,
        capability: Capability,
        engine: Engine,
        record_id: str,
        out: _Outgoing,
        call: _Call,
    ) -> SendReceipt:
        # Run shielded (see _send).
        async with self._manager.sending(session) as in_progress:
            record = await self._ask_and_record(session, capability, engine, record_id, out, call)
            in_progress.record = record
        return SendReceipt.of(record)

    async def _ask_and_record(
        self,
        session: SessionRecord,
        capability: Capability,
        engine: Engine,
        record_id: str,
        out: _Outgoing,
        call: _Call,
    ) -> MessageRecord:
        """Ask the engine, then mark the row sent (its record) or failed (raised)."""
        result, failure = await self._ask_engine(session, lambda: call(engine, out), record_id)
        if failure is None:
            problem = _bad_result(result)
            if problem is not None:
                failure = EngineSendError(problem, record_id)
        if failure is not None:
            reason = getattr(failure, "reason", None) or failure.message
            await self._messages.mark_failed(record_id, reason)
            log.warning(
                "send.failed",
                session_id=session.id,
                kind=capability.value,
                id=record_id,
                reason=shortened(reason),
            )
            raise failure
        assert isinstance(result, SendResult)
        try:
            record = await self._messages.mark_sent(
                record_id, message_id=result.message_id, timestamp=result.timestamp
            )
        except Exception as exc:
            # The message went out; only our bookkeeping failed. The row stays pending
            # (failed at the next boot) and the log keeps the engine's id.
            log.error(
                "send.record_failed",
                session_id=session.id,
                id=record_id,
                message_id=result.message_id,
                error=str(exc),
            )
            raise
        return record

    async def _ask_engine(
        self,
        session: SessionRecord,
        call: Callable[[], Awaitable[object]],
        record_id: str | None,
    ) -> tuple[object, SendError | None]:
        """Call the engine within the send timeout: its result, or the error to answer
        with (naming the message ``record_id`` when there is one)."""
        with anyio.move_on_after(self.send_timeout):
            try:
                return await call(), None
            except UnsupportedOperationError as exc:
                return None, NotSupportedError(exc.capability, exc.engine)
            except (EngineNotRunningError, EngineClosedError) as exc:
                detail = f"the engine says: {error_summary(exc)}"
                return None, SessionNotReadyError(session.name, session.status, detail)
            except Exception as exc:
                return None, EngineSendError(error_summary(exc), record_id)
        timeout = f"the engine did not answer within {self.send_timeout:g} s"
        return None, EngineSendError(timeout, record_id)

    async def _act(
        self,
        session: SessionRecord,
        capability: Capability,
        chat_id: str,
        text: str | None,
        action: Callable[[Engine], Awaitable[None]],
    ) -> None:
        """Carry out an action that writes no row (react, delete): the same checks as a
        send (a ready engine with the capability, the veto hook), then the engine call."""
        engine = self._ready_engine(session)
        self._require(engine, capability)
        await self._check_veto(session, capability, chat_id, text, None)
        _, failure = await self._ask_engine(session, lambda: action(engine), None)
        if failure is not None:
            log.warning(
                "send.action_failed",
                session_id=session.id,
                kind=capability.value,
                reason=shortened(failure.message),
            )
            raise failure

    # ----------------------------------------------------------------------- media

    def _decode(self, value: str) -> tuple[bytes, str | None]:
        """The bytes of base64 ``value`` (a ``data:`` URL too) and the URL's media type."""
        text = value.strip()
        declared: str | None = None
        match = _DATA_URL.match(text)
        if match is not None:
            declared = _bare_mimetype(match.group(1)) if match.group(1) else None
            text = text[match.end() :]
        compact = "".join(text.split())
        if not compact:
            raise SendValidationError("base64", "is empty")
        # Refused before decoding: a huge payload is not decoded just to be thrown away.
        if (len(compact) // 4) * 3 - 2 > self.media_max_bytes:
            raise MediaTooLargeError(self.media_max_bytes, "given as base64")
        altchars = b"-_" if ("-" in compact or "_" in compact) else None
        core = compact.rstrip("=")
        pad = len(compact) - len(core)
        if len(core) % 4 == 1 or (pad and (len(core) + pad) % 4 != 0):
            raise SendValidationError("base64", "is not valid base64")
        padded = core + "=" * (-len(core) % 4)  # missing padding is forgiven
        try:
            data = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raise SendValidationError("base64", "is not valid base64") from None
        if not data:
            raise SendValidationError("base64", "decodes to no bytes")
        if len(data) > self.media_max_bytes:
            raise MediaTooLargeError(self.media_max_bytes, "given as base64")
        return data, declared

    async def _refuse_private_addresses(self, request: httpx.Request) -> None:
        """Refuse a URL whose host resolves to a non-public address (unless allowed).

        A key that may send must not be able to make the host fetch from its own
        loopback or internal network. This early check gives the clear error; the
        guarded transport (:mod:`enginehost.core.net.guard`) enforces the same rule at
        connection time, so a name that re-resolves elsewhere after it cannot get in.
        """
        if self.allow_private_networks:
            return
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise MediaFetchError(host, "its name does not resolve") from None
        policy = AddressPolicy()
        for info in infos:
            if policy.refusal(host, parse_address(str(info[4][0]))) is not None:
                raise MediaFetchError(host, _PRIVATE_ADDRESS)

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        """The body and Content-Type of GET ``url`` (at most 3 redirects, size-capped)."""
        host = urlsplit(url).hostname or "?"
        limit = self.media_max_bytes
        try:
            with anyio.fail_after(self.media_fetch_timeout):
                async with (
                    httpx.AsyncClient(
                        transport=guarded_transport(
                            AddressPolicy(allow_private=self.allow_private_networks)
                        ),
                        follow_redirects=True,
                        max_redirects=MEDIA_MAX_REDIRECTS,
                        timeout=self.media_fetch_timeout,
                        # Checked for every request, redirects included.
                        event_hooks={"request": [self._refuse_private_addresses]},
                    ) as client,
                    client.stream("GET", url, headers={"Accept": "*/*"}) as response,
                ):
                    if not 200 <= response.status_code < 300:
                        raise MediaFetchError(host, f"it answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise MediaTooLargeError(limit, f"at {host}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > limit:
                            raise MediaTooLargeError(limit, f"at {host}")
                    content_type = response.headers.get("content-type")
        except (MediaFetchError, MediaTooLargeError):
            raise
        except TimeoutError:
            raise MediaFetchError(
                host, f"no complete answer within {self.media_fetch_timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise MediaFetchError(host, _fetch_problem(exc)) from None
        if not body:
            raise MediaFetchError(host, "the answer was empty")
        return bytes(body), content_type


# ----------------------------------------------------------------------------- helpers


def _http_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError:
        raise SendValidationError("url", "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise SendValidationError("url", "must be an http or https URL")


def _url_file_name(url: str) -> str | None:
    name = posixpath.basename(unquote(urlsplit(url).path))
    if not name or "\x00" in name or "\\" in name or len(name) > FILENAME_MAX:
        return None
    return name


def _fetch_problem(exc: httpx.HTTPError) -> str:
    # Never the exception's text: httpx puts the full URL (and its query) in some.
    if isinstance(exc, httpx.TooManyRedirects):
        return f"more than {MEDIA_MAX_REDIRECTS} redirects"
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    if isinstance(exc, httpx.ConnectError):
        if isinstance(exc.__cause__, RefusedAddressError):
            return _PRIVATE_ADDRESS
        return "cannot connect"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "it redirected to a URL that is not http or https"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return "its answer was malformed"
    return f"the request failed ({type(exc).__name__})"


def _bad_result(result: object) -> str | None:
    """Why an engine's send result cannot be recorded, or None when it can."""
    if not isinstance(result, SendResult):
        return f"the engine returned {type(result).__name__}, not a SendResult"
    message_id = result.message_id
    if (
        not isinstance(message_id, str)
        or not message_id
        or len(message_id) > MESSAGE_ID_MAX
        or "\x00" in message_id
    ):
        return "the engine returned an unusable message id"
    if not isinstance(result.timestamp, datetime) or result.timestamp.tzinfo is None:
        return "the engine returned a timestamp without a timezone"
    return None


def _replay(record: MessageRecord, out: _Outgoing) -> SendReceipt:
    """The answer to a send whose idempotency key the session already used."""
    same = (
        record.chat_id == out.chat_id
        and record.type == out.type.value
        and record.body == out.body
        and record.quoted_message_id == out.quoted_message_id
    )
    if not same:
        raise IdempotencyKeyReusedError(record.id)
    if record.status == AckStatus.FAILED:
        raise EngineSendError(record.failure_reason or "failed", record.id)
    if record.status == AckStatus.PENDING or record.message_id is None:
        raise SendInProgressError(record.id)
    return SendReceipt.of(record, replayed=True)
