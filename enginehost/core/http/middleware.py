"""Request-level guards: body size cap (413), content type (415), correlation ids.

Two pure ASGI middlewares, cheap on every request and never buffering a body:

* :class:`CorrelationMiddleware`, the outermost layer of the app (outside Starlette's
  own error middleware, so even a 500 carries it): every response gets ``X-Request-Id``
  (a well-formed incoming one is kept, otherwise a UUID4 is made), the id is stored in
  the request state (``request.state.request_id``) and bound to the log context, so
  every line logged while the request runs carries ``request_id``.
* :class:`RequestGuards`: a body larger than ``ENGINEHOST_MAX_REQUEST_BYTES`` is answered
  413 (at once when ``Content-Length`` says so, otherwise as soon as the streamed bytes
  pass the cap); a non-empty body on POST/PUT/PATCH that is not JSON is answered 415.
  An empty body is never checked, so routes that take no body accept any Content-Type.
"""

from __future__ import annotations

import os
import re
from collections import deque

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

from enginehost.core.http.errors import (
    ERROR_LOGGED_STATE_KEY,
    REQUEST_ID_STATE_KEY,
    error_body,
    request_state,
)

__all__ = [
    "REQUEST_ID_HEADER",
    "CorrelationMiddleware",
    "PayloadTooLargeError",
    "RequestGuards",
    "install_middleware",
    "is_json_media_type",
    "replaying",
]

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode("latin-1")
# An incoming id is kept when it is 1 to 128 visible ASCII characters (no spaces or
# control characters: it ends up in log lines and in a response header).
_WELL_FORMED_ID = re.compile(rb"[\x21-\x7e]{1,128}")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ACCEPTED_MEDIA_TYPES = "application/json (or application/*+json)"


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type value names JSON (``application/json``, ``application/*+json``,
    with or without parameters such as ``charset``)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return True
    maintype, _, subtype = media_type.partition("/")
    return maintype == "application" and subtype.endswith("+json") and len(subtype) > 5


class PayloadTooLargeError(HTTPException):
    """A streamed request body passed the cap while being read.

    A FastAPI ``HTTPException`` on purpose: FastAPI re-raises those from its body
    reading (anything else becomes a 400), so the app's error handler answers 413. The
    rest of the body is left to the server, which discards it.
    """

    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_message(limit))


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than the limit of {_describe_bytes(limit)}"


def _describe_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit} ({count} bytes)"
    return f"{count} bytes"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def new_request_id() -> str:
    """A random UUID4 in its canonical form, like ``str(uuid.uuid4())`` at half the cost
    (no :class:`uuid.UUID` object is built on the way)."""
    bits = int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# RFC 9562: version 4 in bits 76-79, variant 0b10 in bits 62-63.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


class CorrelationMiddleware:
    """``X-Request-Id`` on every response, in the request state and in the log context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, _REQUEST_ID_NAME)
        if incoming is not None and _WELL_FORMED_ID.fullmatch(incoming):
            request_id = incoming.decode("ascii")
        else:
            request_id = new_request_id()
        state = request_state(scope)
        state[REQUEST_ID_STATE_KEY] = request_id
        id_header = (_REQUEST_ID_NAME, request_id.encode("ascii"))
        response_complete = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_complete
            kind = message["type"]
            if kind == "http.response.start":
                headers = [
                    header
                    for header in message.get("headers", ())
                    if header[0].lower() != _REQUEST_ID_NAME
                ]
                headers.append(id_header)
                message = {**message, "headers": headers}
            elif kind == "http.response.body" and not message.get("more_body"):
                response_complete = True
            await send(message)

        # Bound with a token and reset after, not with structlog's ``bound_contextvars``
        # (a generator context manager, several times the cost): same effect.
        tokens = bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's error middleware answers with our 500 handler, then re-raises
            # so that a server can log the error. The handler logged it already (with
            # this request id); a complete answer needs no second, id-less traceback.
            if response_complete and state.get(ERROR_LOGGED_STATE_KEY):
                return
            raise
        finally:
            reset_contextvars(**tokens)


class RequestGuards:
    """The body size cap (413) and the JSON-only rule for request bodies (415)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(scope, receive, send, 413, _too_large_message(limit))
            return
        if scope["method"] in _BODY_METHODS:
            content_type = _header(scope, b"content-type")
            if content_type is None or not is_json_media_type(content_type.decode("latin-1")):
                if declared is None:
                    # A streamed body: look at its first bytes to tell empty from not.
                    buffered, has_body = await _peek(receive)
                    receive = replaying(buffered, receive)
                else:
                    has_body = declared > 0
                if has_body:
                    await _reject(scope, receive, send, 415, _unsupported_message(content_type))
                    return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _counting(receive, limit), tracking_send)
        except PayloadTooLargeError as exc:
            if started:
                raise
            # Raised where no exception handler runs (outside a route): answer it here.
            response = JSONResponse(
                error_body(413, exc.detail, code=exc.code),
                status_code=413,
                headers=exc.headers,
            )
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _unsupported_message(content_type: bytes | None) -> str:
    if content_type is None:
        return f"a request body needs a Content-Type: {ACCEPTED_MEDIA_TYPES}"
    shown = content_type.decode("latin-1").split(";", 1)[0].strip()[:100]
    return f"Content-Type {shown!r} is not accepted; send {ACCEPTED_MEDIA_TYPES}"


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    # The body is left unread. No "Connection: close": the server discards what is left of
    # it (uvicorn does), so a client still sending reads this answer instead of a reset.
    response = JSONResponse(error_body(status, message), status_code=status)
    await response(scope, receive, send)


async def _peek(receive: Receive) -> tuple[list[Message], bool]:
    """Receive until a non-empty body chunk or the end of the body."""
    buffered: list[Message] = []
    while True:
        message = await receive()
        buffered.append(message)
        if message["type"] != "http.request":
            return buffered, False
        if message.get("body"):
            return buffered, True
        if not message.get("more_body", False):
            return buffered, False


def replaying(buffered: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back the ``buffered`` messages, in order."""
    pending = deque(buffered)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay


def _counting(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        if received > limit:
            raise PayloadTooLargeError(limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLargeError(limit)
        return message

    return counting_receive


def install_middleware(app: FastAPI) -> None:
    """Install the request guards on ``app``.

    The guards are an ordinary middleware, so one installed later (the audit trail)
    wraps them and sees their 413 and 415 answers; the correlation layer wraps the whole
    stack, Starlette's error middleware included, so that every answer carries the id.
    """
    app.add_middleware(RequestGuards, max_body_bytes=app.state.host.settings.max_request_bytes)
    build_stack = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return CorrelationMiddleware(build_stack())

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
