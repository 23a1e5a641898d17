"""Message routes: ``/api/sessions/{sessionId}/messages``.

The contract's sends (OpenWA's shapes, camelCase JSON) and the message history. Sends
need an operator key, the history a viewer key; a key limited to other sessions gets
404, as if the session did not exist. Every send takes the path of
:mod:`enginehost.core.messages.send` (checks, hook veto, pending row, engine call).

Sends that make a message answer 201 ``{messageId, timestamp, id, status}``:
``messageId`` is the engine's id, ``timestamp`` the send time in Unix seconds (as in
OpenWA), and, as enginehost extensions, ``id`` is the stored record's id and
``status`` its delivery status. They accept an ``Idempotency-Key`` header (1-200
printable ASCII characters): a repeated key answers the first send's result, marked
with the header ``Idempotent-Replayed: true``. ``react`` and ``delete`` answer 200
``{success: true}`` (OpenWA's shape); they make no message and ignore the header.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import AwareDatetime, Field

from enginehost.core.engine import MessageType
from enginehost.core.http.auth import Access, SessionOperator, SessionViewer
from enginehost.core.http.errors import ApiError
from enginehost.core.http.models import CamelModel, RequestModel, Responses
from enginehost.core.messages.models import CHAT_ID_MAX, IDEMPOTENCY_KEY_MAX, MESSAGE_ID_MAX
from enginehost.core.messages.models import MessageRecord as StoredMessage
from enginehost.core.messages.send import (
    CAPTION_MAX,
    CONTACT_NAME_MAX,
    EMOJI_MAX,
    FILENAME_MAX,
    MIMETYPE_MAX,
    TEXT_MAX,
    URL_MAX,
    SendReceipt,
    SendService,
    SendValidationError,
    check_chat_id,
)
from enginehost.core.messages.store import HISTORY_LIMIT_MAX
from enginehost.core.templates.models import ID_MAX as TEMPLATE_ID_MAX
from enginehost.core.templates.models import NAME_MAX as TEMPLATE_NAME_MAX

__all__ = [
    "ActionResult",
    "DeleteRequest",
    "ForwardRequest",
    "MessageList",
    "MessageOut",
    "ReactRequest",
    "ReplyRequest",
    "SendContactRequest",
    "SendLocationRequest",
    "SendMediaRequest",
    "SendResult",
    "SendTemplateRequest",
    "SendTextRequest",
    "router",
    "send_service",
]

router = APIRouter(tags=["messages"])

_OFFSET_MAX = 2**31 - 1
_CURSOR_MAX = 512
_REPLAYED_HEADER = "Idempotent-Replayed"


# ------------------------------------------------------------------------------ models


_CHAT_ID_DOC = "A chat id: `<digits>@c.us`, `<id>@g.us`, `<lid>@lid` or `status@broadcast`."
_CHAT_EXAMPLE = "15551234567@c.us"


def _chat_field(description: str = _CHAT_ID_DOC) -> Any:
    return Field(max_length=CHAT_ID_MAX, description=description, examples=[_CHAT_EXAMPLE])


def _message_id_field(description: str) -> Any:
    return Field(min_length=1, max_length=MESSAGE_ID_MAX, description=description)


class SendTextRequest(RequestModel):
    """A text message."""

    chat_id: str = _chat_field()
    text: str = Field(min_length=1, max_length=TEXT_MAX, examples=["Hello from enginehost"])


class SendMediaRequest(RequestModel):
    """Media from a URL or inline base64 (exactly one of them)."""

    chat_id: str = _chat_field()
    url: str | None = Field(
        None,
        max_length=URL_MAX,
        description="An http or https URL the host fetches (at most 3 redirects).",
        examples=["https://example.com/picture.jpg"],
    )
    base64: str | None = Field(
        None, description="The media's bytes in base64 (a `data:` URL is accepted too)."
    )
    mimetype: str | None = Field(
        None,
        max_length=MIMETYPE_MAX,
        description="The media type; default: from a `data:` URL, the URL's Content-Type, "
        "the file name, or the kind of media.",
        examples=["image/jpeg"],
    )
    filename: str | None = Field(None, min_length=1, max_length=FILENAME_MAX)
    caption: str | None = Field(None, max_length=CAPTION_MAX)


class SendLocationRequest(RequestModel):
    """A location pin."""

    chat_id: str = _chat_field()
    latitude: float = Field(ge=-90, le=90, allow_inf_nan=False, examples=[52.5163])
    longitude: float = Field(ge=-180, le=180, allow_inf_nan=False, examples=[13.3777])


class SendContactRequest(RequestModel):
    """A contact card."""

    chat_id: str = _chat_field()
    contact_name: str = Field(min_length=1, max_length=CONTACT_NAME_MAX, examples=["Ada"])
    contact_number: str = Field(
        min_length=1,
        max_length=32,
        description="8 to 15 digits, country code first; `+`, spaces and dashes are ignored.",
        examples=["+1 555 123 4567"],
    )


class SendTemplateRequest(RequestModel):
    """A stored template of the session, rendered and sent as text."""

    chat_id: str = _chat_field()
    template_id: str | None = Field(None, min_length=1, max_length=TEMPLATE_ID_MAX)
    template_name: str | None = Field(None, min_length=1, max_length=TEMPLATE_NAME_MAX)
    vars: dict[str, Any] = Field(
        default_factory=dict,
        description="Values by placeholder name: text, numbers or booleans.",
        examples=[{"customer": "Ada"}],
    )


class ReplyRequest(RequestModel):
    """A text quoting an earlier message."""

    chat_id: str = _chat_field()
    quoted_message_id: str = _message_id_field("The engine's id of the message to quote.")
    text: str = Field(min_length=1, max_length=TEXT_MAX)


class ForwardRequest(RequestModel):
    """An existing message, forwarded to another chat."""

    from_chat_id: str = _chat_field("The chat the message is in.")
    to_chat_id: str = _chat_field("The chat to forward it to.")
    message_id: str = _message_id_field("The engine's id of the message.")


class ReactRequest(RequestModel):
    """A reaction; an empty `emoji` removes this account's reaction."""

    chat_id: str = _chat_field()
    message_id: str = _message_id_field("The engine's id of the message.")
    emoji: str = Field(max_length=EMOJI_MAX, examples=["👍"])


class DeleteRequest(RequestModel):
    """A message this account sent, to delete for everyone."""

    chat_id: str = _chat_field()
    message_id: str = _message_id_field("The engine's id of the message.")


class SendResult(CamelModel):
    """A send's outcome."""

    message_id: str = Field(description="The engine's id of the message.")
    timestamp: int = Field(description="When it was sent, in Unix seconds (as OpenWA).")
    id: str = Field(description="The id of the stored message record (enginehost extension).")
    status: str = Field(
        description="Its delivery status: sent, delivered or read (enginehost extension)."
    )


class ActionResult(CamelModel):
    """An action that made no message (OpenWA's shape): failures are error statuses."""

    success: bool = True


class MessageOut(CamelModel):
    """A stored message."""

    id: str = Field(description="The record's id (a UUID).")
    session_id: str
    chat_id: str
    message_id: str | None = Field(description="The engine's id; null while a send is pending.")
    direction: Literal["incoming", "outgoing"]
    type: str = Field(description="text, image, video, audio, document, sticker, location, ...")
    status: Literal["pending", "sent", "delivered", "read", "failed"]
    body: str | None = Field(description="The text, caption, or a summary of the message.")
    from_me: bool
    has_media: bool
    timestamp: int = Field(description="When it was sent or received, in Unix seconds.")
    created_at: datetime
    updated_at: datetime
    quoted_message_id: str | None = Field(
        None, description="The engine's id of the message it quotes (enginehost extension)."
    )
    failure_reason: str | None = Field(
        None, description="Why a failed send failed (enginehost extension)."
    )


class MessageList(CamelModel):
    """A page of messages, newest first."""

    messages: list[MessageOut]
    total: int = Field(description="How many messages match the filters, on all pages.")
    next_cursor: str | None = Field(
        None,
        description="Pass as `after` for the next page; null on the last page "
        "(enginehost extension).",
    )


# ----------------------------------------------------------------------------- helpers

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[\x20-\x7e]+$",
        description="Makes the send safe to retry: a repeated key answers the first send's "
        "result instead of sending again (1-200 printable ASCII characters).",
    ),
]


def send_service(request: Request) -> SendService:
    """The host's send service."""
    service: SendService = request.app.state.host.send
    return service


def _unix(moment: datetime) -> int:
    if moment.tzinfo is None:  # pragma: no cover - the store hands back aware times
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _result(receipt: SendReceipt, response: Response) -> SendResult:
    """The answer to a send (and its replay header, for an idempotent replay)."""
    if receipt.replayed:
        response.headers[_REPLAYED_HEADER] = "true"
    return SendResult(
        message_id=receipt.message_id,
        timestamp=_unix(receipt.timestamp),
        id=receipt.id,
        status=receipt.status,
    )


def _message(record: StoredMessage) -> MessageOut:
    return MessageOut.model_validate(
        {
            "id": record.id,
            "session_id": record.session_id,
            "chat_id": record.chat_id,
            "message_id": record.message_id,
            "direction": record.direction,
            "type": record.type,
            "status": record.status,
            "body": record.body,
            "from_me": record.from_me,
            "has_media": record.has_media,
            "timestamp": _unix(record.timestamp),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "quoted_message_id": record.quoted_message_id,
            "failure_reason": record.failure_reason,
        }
    )


_SEND_ERRORS: Responses = {
    403: {"description": "A plugin vetoed the send (`send_vetoed`, with its `reason`)"},
    404: {"description": "No such session (or not visible to the key), or no such template"},
    409: {
        "description": "The session is not ready (`session_not_ready`, with its `status`), or "
        "a send with this Idempotency-Key is still in progress (`send_in_progress`)"
    },
    422: {
        "description": "A field is invalid (`errors` names each one), the media could not be "
        "fetched (`media_fetch_failed`, naming the host), or the Idempotency-Key was used for "
        "another send (`idempotency_key_reused`)"
    },
    501: {"description": "The session's engine cannot do this (`not_supported`)"},
    502: {"description": "The engine failed the send (`engine_error`, with its `reason`)"},
    503: {
        "description": "The session is reconnecting (`session_reconnecting`, with "
        "`retryAfter` seconds and a `Retry-After` header)"
    },
}
_MEDIA_ERRORS: Responses = {
    **_SEND_ERRORS,
    413: {"description": "The media is larger than the host accepts (`payload_too_large`)"},
}


# ------------------------------------------------------------------------------ sends


@router.post(
    "/sessions/{sessionId}/messages/send-text",
    summary="Send a text message",
    status_code=201,
    response_model=SendResult,
    responses=_SEND_ERRORS,
)
async def send_text(
    request: Request,
    response: Response,
    payload: SendTextRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    """Send `text` to `chatId`."""
    receipt = await send_service(request).send_text(
        access.require_session(),
        chat_id=payload.chat_id,
        text=payload.text,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


async def _send_media(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: Access,
    idempotency_key: str | None,
    media_type: MessageType,
) -> SendResult:
    receipt = await send_service(request).send_media(
        access.require_session(),
        type=media_type,
        chat_id=payload.chat_id,
        url=payload.url,
        base64=payload.base64,
        mimetype=payload.mimetype,
        filename=payload.filename,
        caption=payload.caption,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


_MEDIA_DOC = (
    "Give exactly one of `url` (http or https, fetched by the host: at most 3 redirects, "
    "size-capped, with a timeout) and `base64`."
)


@router.post(
    "/sessions/{sessionId}/messages/send-image",
    summary="Send an image",
    status_code=201,
    response_model=SendResult,
    responses=_MEDIA_ERRORS,
    description=_MEDIA_DOC + " Default mimetype: `image/jpeg`.",
)
async def send_image(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    return await _send_media(request, response, payload, access, idempotency_key, MessageType.IMAGE)


@router.post(
    "/sessions/{sessionId}/messages/send-video",
    summary="Send a video",
    status_code=201,
    response_model=SendResult,
    responses=_MEDIA_ERRORS,
    description=_MEDIA_DOC + " Default mimetype: `video/mp4`.",
)
async def send_video(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    return await _send_media(request, response, payload, access, idempotency_key, MessageType.VIDEO)


@router.post(
    "/sessions/{sessionId}/messages/send-audio",
    summary="Send audio",
    status_code=201,
    response_model=SendResult,
    responses=_MEDIA_ERRORS,
    description=_MEDIA_DOC + " Default mimetype: `audio/mpeg`.",
)
async def send_audio(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    return await _send_media(request, response, payload, access, idempotency_key, MessageType.AUDIO)


@router.post(
    "/sessions/{sessionId}/messages/send-document",
    summary="Send a document",
    status_code=201,
    response_model=SendResult,
    responses=_MEDIA_ERRORS,
    description=_MEDIA_DOC
    + " Default mimetype: from the file name, else `application/octet-stream`; default "
    "file name for a URL: its last path segment.",
)
async def send_document(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    return await _send_media(
        request, response, payload, access, idempotency_key, MessageType.DOCUMENT
    )


@router.post(
    "/sessions/{sessionId}/messages/send-sticker",
    summary="Send a sticker",
    status_code=201,
    response_model=SendResult,
    responses=_MEDIA_ERRORS,
    description=_MEDIA_DOC + " Default mimetype: `image/webp`.",
)
async def send_sticker(
    request: Request,
    response: Response,
    payload: SendMediaRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    return await _send_media(
        request, response, payload, access, idempotency_key, MessageType.STICKER
    )


@router.post(
    "/sessions/{sessionId}/messages/send-location",
    summary="Send a location",
    status_code=201,
    response_model=SendResult,
    responses=_SEND_ERRORS,
)
async def send_location(
    request: Request,
    response: Response,
    payload: SendLocationRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    receipt = await send_service(request).send_location(
        access.require_session(),
        chat_id=payload.chat_id,
        latitude=payload.latitude,
        longitude=payload.longitude,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


@router.post(
    "/sessions/{sessionId}/messages/send-contact",
    summary="Send a contact card",
    status_code=201,
    response_model=SendResult,
    responses=_SEND_ERRORS,
)
async def send_contact(
    request: Request,
    response: Response,
    payload: SendContactRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    receipt = await send_service(request).send_contact(
        access.require_session(),
        chat_id=payload.chat_id,
        contact_name=payload.contact_name,
        contact_number=payload.contact_number,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


@router.post(
    "/sessions/{sessionId}/messages/send-template",
    summary="Send a rendered template",
    status_code=201,
    response_model=SendResult,
    responses={
        **_SEND_ERRORS,
        422: {
            "description": "A field is invalid, not exactly one of templateId and templateName "
            "is given, or a variable is missing (`missing_variables`) or invalid "
            "(`invalid_variable`), or the text is over the render cap (`too_large`)"
        },
    },
)
async def send_template(
    request: Request,
    response: Response,
    payload: SendTemplateRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    """Render the session's template (by `templateId` or `templateName`, exactly one) with
    `vars` and send the text, as `send-text` would (an engine needs `send_text`)."""
    receipt = await send_service(request).send_template(
        access.require_session(),
        chat_id=payload.chat_id,
        template_id=payload.template_id,
        template_name=payload.template_name,
        variables=payload.vars,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


@router.post(
    "/sessions/{sessionId}/messages/reply",
    summary="Reply to a message",
    status_code=201,
    response_model=SendResult,
    responses=_SEND_ERRORS,
)
async def reply(
    request: Request,
    response: Response,
    payload: ReplyRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    """Send `text` to `chatId`, quoting the message `quotedMessageId` (an engine id)."""
    receipt = await send_service(request).reply(
        access.require_session(),
        chat_id=payload.chat_id,
        quoted_message_id=payload.quoted_message_id,
        text=payload.text,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


@router.post(
    "/sessions/{sessionId}/messages/forward",
    summary="Forward a message",
    status_code=201,
    response_model=SendResult,
    responses=_SEND_ERRORS,
)
async def forward(
    request: Request,
    response: Response,
    payload: ForwardRequest,
    access: SessionOperator,
    idempotency_key: IdempotencyKey = None,
) -> SendResult:
    """Forward the message `messageId` of `fromChatId` to `toChatId`."""
    receipt = await send_service(request).forward(
        access.require_session(),
        from_chat_id=payload.from_chat_id,
        to_chat_id=payload.to_chat_id,
        message_id=payload.message_id,
        idempotency_key=idempotency_key,
    )
    return _result(receipt, response)


@router.post(
    "/sessions/{sessionId}/messages/react",
    summary="React to a message",
    response_model=ActionResult,
    responses=_SEND_ERRORS,
)
async def react(request: Request, payload: ReactRequest, access: SessionOperator) -> ActionResult:
    """Set this account's reaction to a message; an empty `emoji` removes it.

    No message is stored and `Idempotency-Key` is ignored: repeating it is harmless.
    """
    await send_service(request).react(
        access.require_session(),
        chat_id=payload.chat_id,
        message_id=payload.message_id,
        emoji=payload.emoji,
    )
    return ActionResult()


@router.post(
    "/sessions/{sessionId}/messages/delete",
    summary="Delete a message for everyone",
    response_model=ActionResult,
    responses=_SEND_ERRORS,
)
async def delete_message(
    request: Request, payload: DeleteRequest, access: SessionOperator
) -> ActionResult:
    """Delete (revoke) a message this account sent.

    No message is stored and `Idempotency-Key` is ignored: repeating it is harmless.
    """
    await send_service(request).delete(
        access.require_session(), chat_id=payload.chat_id, message_id=payload.message_id
    )
    return ActionResult()


# ----------------------------------------------------------------------------- history


def _sender_filter(
    session_phone: str | None, sender: str | None, chat_id: str | None
) -> tuple[str | None, bool | None] | None:
    """``(chat_id, from_me)`` for the store from the ``from`` filter; None: nothing matches."""
    if sender is None:
        return chat_id, None
    value = sender.strip()
    if value.lower() == "me" or (session_phone and value == f"{session_phone}@c.us"):
        return chat_id, True
    try:
        check_chat_id("query.from", value)
    except SendValidationError as exc:
        raise SendValidationError(
            "query.from", f"{exc.problem}, or 'me' (for a time bound use `since`)"
        ) from None
    if value.endswith("@g.us") or value == "status@broadcast":
        raise SendValidationError(
            "query.from",
            "must name a sender: a person ('<digits>@c.us', '<lid>@lid') or 'me'; "
            "a group or broadcast never sends",
        )
    if chat_id is not None and chat_id != value:
        if chat_id.endswith("@g.us") or chat_id == "status@broadcast":
            raise ApiError(
                422,
                "from: the host does not record who wrote a group or broadcast message, so "
                "`from` can filter a direct chat or 'me' only",
                code="unsupported_filter",
                extra={"errors": [{"path": "query.from", "message": "unsupported with chatId"}]},
            )
        return None  # a person writes to this account only in their own direct chat
    return value, False


@router.get(
    "/sessions/{sessionId}/messages",
    summary="List a session's messages",
    response_model=MessageList,
    responses={
        404: {"description": "No such session (or not visible to the key)"},
        422: {"description": "A filter is invalid, or the cursor is malformed (`invalid_cursor`)"},
    },
)
async def list_messages(
    request: Request,
    access: SessionViewer,
    chat_id: Annotated[
        str | None, Query(alias="chatId", max_length=CHAT_ID_MAX, description=_CHAT_ID_DOC)
    ] = None,
    sender: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=CHAT_ID_MAX,
            description="Messages from this sender: `me` (or the account's own id) for the "
            "account's messages, a person's id for what they wrote in their direct chat.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=_OFFSET_MAX)] = 0,
    direction: Annotated[Literal["incoming", "outgoing"] | None, Query()] = None,
    status: Annotated[
        Literal["pending", "sent", "delivered", "read", "failed"] | None, Query()
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(
            description="Messages at or after this time: ISO 8601 with an offset, or Unix "
            "time (seconds, or milliseconds)."
        ),
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Messages before this time (as `since`).")
    ] = None,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=_CURSOR_MAX,
            description="The `nextCursor` of the previous page: continues right after it.",
        ),
    ] = None,
) -> MessageList:
    """The session's messages, newest first (by message time), with the number matching.

    The contract's filters are `chatId`, `from`, `limit` (1-500, default 50) and
    `offset`. `from` is a **sender** filter, as in OpenWA: `from=me` (or the account's
    own `<phone>@c.us`) gives the messages this account sent; a person's id
    (`<digits>@c.us`, `<lid>@lid`) gives the messages that person wrote in their direct
    chat. The host does not record who wrote a message in a group, so `from=<person>`
    with a group `chatId` is 422 `unsupported_filter`, and a person's group messages are
    not matched; a group id as `from` is 422. For a time bound use `since`.

    enginehost extensions: `direction`, `status`, `since` (inclusive), `until`
    (exclusive), and keyset paging with `after`: pass the previous page's `nextCursor`
    to continue after its last message, unaffected by messages arriving meanwhile
    (`offset` then skips from there).
    """
    session = access.require_session()
    if chat_id is not None:
        check_chat_id("query.chatId", chat_id)
    selection = _sender_filter(session.phone, sender, chat_id)
    if selection is None:
        return MessageList(messages=[], total=0, next_cursor=None)
    selected_chat, from_me = selection
    store = send_service(request).messages
    rows, total, cursor = await store.history(
        session.id,
        chat_id=selected_chat,
        direction=direction,
        status=status,
        since=since,
        until=until,
        from_me=from_me,
        limit=limit,
        offset=offset,
        after=after,
    )
    return MessageList(messages=[_message(row) for row in rows], total=total, next_cursor=cursor)
