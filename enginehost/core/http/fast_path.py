"""A fast path for the API's busiest request: a well-formed ``POST .../send-text``.

FastAPI's per-request machinery (dependency solving, parameter extraction, response
validation) cost about 0.3 ms of CPU per send, a quarter of everything a send costs the
host. This middleware serves the common case itself, from the route's own parts: the
access rule the route declares, checked by the same
:func:`~enginehost.core.http.auth.authorize`; the same request model; the route's own
endpoint function and status code; the app's error rendering; and the route object in
the scope (so the audit trail records the same action).

Whatever it cannot serve exactly as the route would goes to FastAPI untouched, body
included: a request without a valid key or with a role or session the key may not
use, a body the model refuses, an ``Idempotency-Key`` header (rare, and the route's
header validation is not repeated here), any other path or method. So every refusal
still comes from the route itself. ``ENGINEHOST_HTTP_FAST_PATH=false`` turns it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enginehost.core.auth.roles import Role
from enginehost.core.http import messages
from enginehost.core.http.auth import Scope as AccessScope
from enginehost.core.http.auth import api_routes, authorize, route_rule
from enginehost.core.http.errors import error_response
from enginehost.core.http.messages import SendTextRequest
from enginehost.core.http.middleware import replaying

__all__ = ["FastSendText", "install_fast_path"]

# Checked against the route's own template when the route is first looked up.
_PATH = re.compile(r"^/api/sessions/([^/]+)/messages/send-text$")
_JSON = b"application/json"
_IDEMPOTENCY_KEY = b"idempotency-key"


class FastSendText:
    """Pure ASGI middleware; see the module docs."""

    def __init__(self, app: ASGIApp, host: FastAPI) -> None:
        self.app = app
        self.host = host
        self._route: _SendTextRoute | None = None
        self.served = 0
        """Requests answered here (for tests and curiosity)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.match(scope["path"])
        if match is None or not _plain_json(scope):
            await self.app(scope, receive, send)
            return
        received, body = await _read_body(receive)
        replay = replaying(received, receive)
        if body is None or not await self._serve(scope, match.group(1), body, replay, send):
            await self.app(scope, replay, send)

    async def _serve(
        self, scope: Scope, session_key: str, body: bytes, receive: Receive, send: Send
    ) -> bool:
        """Answer the request; False (having sent nothing) to leave it to the route."""
        try:
            payload = SendTextRequest.model_validate_json(body)
        except ValueError:  # pydantic's ValidationError included
            return False
        route = self._send_text_route()
        request = Request(scope, receive)
        try:
            access = await authorize(request, route.role, route.scope, session_key)
        except Exception:
            return False  # the route gives the same refusal, in its own words
        # From here on the request is ours: the route is what handled it, as far as
        # the audit trail and the logs are concerned.
        scope["route"] = route.route
        scope["path_params"] = {"sessionId": session_key}
        self.served += 1
        try:
            result = await messages.send_text(request, Response(), payload, access)
        except Exception as exc:
            response = await error_response(request, exc)
            if response is None:
                raise  # the 500 handler's business, as for the route
        else:
            body_out = result.model_dump(mode="json", by_alias=True)
            response = JSONResponse(body_out, status_code=route.status_code)
        await response(scope, receive, send)
        return True

    def _send_text_route(self) -> _SendTextRoute:
        if self._route is None:
            self._route = _find_send_text_route(self.host)
        return self._route


@dataclass(frozen=True, slots=True)
class _SendTextRoute:
    route: Any
    """What FastAPI's routing puts in the scope: the route as declared."""
    role: Role
    scope: AccessScope
    status_code: int


def _find_send_text_route(app: FastAPI) -> _SendTextRoute:
    for context in api_routes(app):
        route = context.original_route
        if isinstance(route, APIRoute) and route.endpoint is messages.send_text:
            rule = route_rule(context)
            if rule is None or rule.role is None or rule.scope is None:
                raise RuntimeError("the send-text route declares no access rule")
            full_path = context.path_format or ""  # router prefixes included
            if not _PATH.match(full_path):
                raise RuntimeError(f"the fast path does not match route {full_path}")
            return _SendTextRoute(route, rule.role, rule.scope, route.status_code or 200)
    raise RuntimeError("the send-text route is not installed")


def _plain_json(scope: Scope) -> bool:
    """A JSON body and no Idempotency-Key header (see the module docs)."""
    json_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json_body = value.split(b";", 1)[0].strip().lower() == _JSON
        elif name == _IDEMPOTENCY_KEY:
            return False
    return json_body


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the body, and the body (None if the client went away)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def install_fast_path(app: FastAPI) -> None:
    """Install :class:`FastSendText` just outside FastAPI's routing, when enabled."""
    if app.state.host.settings.http_fast_path:
        app.add_middleware(FastSendText, host=app)
