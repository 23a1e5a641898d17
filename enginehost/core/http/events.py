"""``GET /api/events``: the host's events, live, as Server-Sent Events.

Why Server-Sent Events rather than a WebSocket: the stream only ever flows from the host
to the client, which is all SSE does; it is a plain HTTP response, so it passes through
ordinary HTTP proxies and can be read with ``curl -N``; browsers' ``EventSource`` and
most SSE clients reconnect by themselves; and it is authenticated exactly like every
other route (``X-API-Key`` or ``Authorization: Bearer``), with the same roles and the
same session scopes, with no second handshake or token scheme to get right.

One connection, one bus subscription, closed when the connection ends, whichever way:

* the client goes away (the server tells the response, which closes the subscription
  at once, not when the garbage collector gets to it);
* the client falls ``ENGINEHOST_EVENTS_STREAM_BUFFER`` events behind: its subscription
  overflows (``overflow="close"``), so it costs the host no more memory or time, and
  the stream ends without sending anything more, rather than going on with a hole in
  it; the client reconnects;
* the host shuts down (checked every :data:`SHUTDOWN_POLL_SECONDS`, so an open stream
  never holds the graceful shutdown up to its timeout);
* the key stops being valid (revoked, expired, deleted: checked at every heartbeat).

Event ids count the events of one connection (1, 2, ...); they do not survive a
reconnect, and ``Last-Event-ID`` is not used to replay anything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from enginehost.core.auth.roles import Role
from enginehost.core.auth.service import AuthenticationError, Principal
from enginehost.core.errors import FieldError, shortened
from enginehost.core.events import HostEvent, Subscription
from enginehost.core.http.auth import Access, presented_key, requires
from enginehost.core.http.auth import Scope as AccessScope
from enginehost.core.logging import get_logger
from enginehost.core.sessions.store import SessionNotFoundError
from enginehost.core.webhooks.catalogue import ALL_EVENTS, EVENT_TYPES

if TYPE_CHECKING:  # app.py imports this module
    from enginehost.core.http.app import AppState

__all__ = [
    "HEARTBEAT_SECONDS",
    "RETRY_MILLISECONDS",
    "SHUTDOWN_POLL_SECONDS",
    "EventStreamResponse",
    "chosen_sessions",
    "chosen_types",
    "encode_event",
    "router",
]

router = APIRouter(tags=["events"])
log = get_logger("enginehost.events.stream")

HEARTBEAT_SECONDS: float = 15.0
"""A ``: keep-alive`` comment after this many quiet seconds: proxies and load balancers
close idle connections (often after 30 to 60 s), and a client learns the host is still
there. Read at every wait, so tests may change it."""
SHUTDOWN_POLL_SECONDS: float = 0.5
"""How often an idle stream looks whether the host is shutting down. The daemon's
graceful shutdown waits for open responses (at least 1 s); this ends streams well
within it."""
RETRY_MILLISECONDS: Final = 3000
"""Sent on connect: how long an ``EventSource`` waits before reconnecting."""
MAX_SESSION_FILTERS: Final = 100
_BATCH: Final = 200
"""Events written in one chunk at most, when several are waiting (fewer, larger writes)."""

_STREAM_HEADERS: Final = {
    "Cache-Control": "no-cache",
    # nginx buffers responses by default, which would hold events back; this turns it
    # off for this response only.
    "X-Accel-Buffering": "no",
}
_KEEP_ALIVE: Final = b": keep-alive\n\n"
_EVERY_TYPE: Final = frozenset(EVENT_TYPES)
_OPENING: Final = f": connected\nretry: {RETRY_MILLISECONDS}\n\n".encode()


# ----------------------------------------------------------------------------- filters


def _split(values: Sequence[str] | None) -> list[str] | None:
    """Repeated and comma-separated values as one list (None: the parameter is absent)."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def chosen_types(values: Sequence[str] | None) -> frozenset[str]:
    """The event types asked for; every type of the catalogue when the parameter is
    absent or names ``*`` (so only catalogue events ever reach a stream, whatever else
    travels on the bus)."""
    names = _split(values)
    if names is None:
        return _EVERY_TYPE
    valid = f"valid: {ALL_EVENTS} or {', '.join(EVENT_TYPES)}"
    if not names:
        raise FieldError("query.events", f"name at least one event type; {valid}")
    unknown = list(dict.fromkeys(n for n in names if n != ALL_EVENTS and n not in _EVERY_TYPE))
    if unknown:
        shown = ", ".join(repr(shortened(name, 60)) for name in unknown[:5])
        raise FieldError("query.events", f"unknown event type {shown}; {valid}")
    return _EVERY_TYPE if ALL_EVENTS in names else frozenset(names)


async def chosen_sessions(
    state: AppState, principal: Principal, values: Sequence[str] | None
) -> frozenset[str] | None:
    """The ids of the sessions asked for by id or name, resolved now (None: all the key
    may see). One the key may not see is a 404, as on every session route."""
    keys = _split(values)
    if keys is None:
        return None
    if not keys:
        raise FieldError("query.sessionId", "name at least one session (its id or name)")
    keys = list(dict.fromkeys(keys))
    if len(keys) > MAX_SESSION_FILTERS:
        raise FieldError("query.sessionId", f"at most {MAX_SESSION_FILTERS} sessions")
    ids: set[str] = set()
    for key in keys:
        record = await state.sessions.resolve(key)
        if not principal.may_see(record.name):
            raise SessionNotFoundError(key)  # the same answer as a missing session
        ids.add(record.id)
    return frozenset(ids)


class _Visibility:
    """Which sessions' events a key may receive, by session id.

    Keys are limited by session *name* and events carry the session's id: the ids are
    looked up once each, and remembered (a session never changes its name).
    """

    def __init__(self, state: AppState, names: frozenset[str] | None) -> None:
        self._state = state
        self._names = names
        self._known: dict[str, bool] = {}

    async def load(self) -> None:
        if self._names is not None:
            for record in await self._state.sessions.list(self._names):
                self._known[record.id] = True

    async def admits(self, session_id: str) -> bool:
        if self._names is None:
            return True
        known = self._known.get(session_id)
        if known is not None:
            return known
        try:
            record = await self._state.sessions.resolve(session_id)
        except SessionNotFoundError:
            visible = False  # gone (or never was): nothing to show a limited key
        except Exception as exc:  # a database hiccup: skip this event, ask again next time
            log.warning("events.stream_lookup_failed", session_id=session_id, error=str(exc))
            return False
        else:
            visible = record.name in self._names
        self._known[session_id] = visible
        return visible


# ------------------------------------------------------------------------------ stream


# SSE ends lines at CR and LF only, but many line readers (Python's str.splitlines,
# some JavaScript tools) also break at these; inside a JSON string they can be escaped.
_LINE_BREAKERS: Final = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode_event(serial: int, event: HostEvent) -> bytes:
    """One event in the stream's framing: ``id``, ``event`` and a one-line JSON ``data``."""
    # json.dumps escapes CR, LF and every other control character inside strings, and
    # the translation the rest: the data is one line for any reader. Text stays UTF-8
    # rather than \u-escaped (half the size for most non-Latin scripts).
    data = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))
    data = data.translate(_LINE_BREAKERS)
    kind = event.type.replace("\r", " ").replace("\n", " ")
    return f"id: {serial}\nevent: {kind}\ndata: {data}\n\n".encode()


class _EventStream:
    """The frames of one connection, from its own bus subscription."""

    def __init__(
        self,
        state: AppState,
        secret: str,
        types: frozenset[str],
        sessions: frozenset[str] | None,
        visibility: _Visibility,
    ) -> None:
        self._state = state
        self._secret = secret
        self._types = types
        self._sessions = sessions
        self._visibility = visibility
        self._subscription: Subscription | None = None
        self._serial = 0

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()

    async def _admits(self, event: HostEvent) -> bool:
        if self._sessions is not None:
            # Already checked against the key's scope when they were resolved.
            return event.session_id in self._sessions
        return await self._visibility.admits(event.session_id)

    async def _key_still_valid(self) -> bool:
        try:
            await self._state.keys.authenticate(self._secret)
        except AuthenticationError as exc:
            log.info("events.stream_key_rejected", reason=exc.reason)
            return False
        except Exception as exc:  # the database, not the key: keep the stream
            log.warning("events.stream_key_check_failed", error=str(exc))
        return True

    async def _chunk(self, first: HostEvent, subscription: Subscription) -> bytes:
        """``first`` and what else is already queued (up to :data:`_BATCH`), encoded."""
        frames: list[bytes] = []
        event: HostEvent | None = first
        while event is not None:
            if await self._admits(event):
                self._serial += 1
                frames.append(encode_event(self._serial, event))
            if len(frames) >= _BATCH:
                break
            event = subscription.get_nowait()
        return b"".join(frames)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        # Subscribed here, when the response starts, not when the route returns: a
        # response that is never sent leaves nothing behind.
        subscription = self._state.bus.subscribe(
            maxsize=self._state.settings.events_stream_buffer,
            types=self._types,
            overflow="close",
        )
        self._subscription = subscription
        try:
            # Anything published from now on reaches this client: say so at once.
            yield _OPENING
            quiet_until = anyio.current_time() + HEARTBEAT_SECONDS
            # The key is checked again on a clock of its own: a busy stream, which never
            # needs a heartbeat, must lose its events as soon as its key is revoked.
            check_key_at = quiet_until
            while not self._state.shutting_down:
                now = anyio.current_time()
                if now >= check_key_at:
                    if not await self._key_still_valid():
                        return
                    check_key_at = now + HEARTBEAT_SECONDS
                if now >= quiet_until:
                    yield _KEEP_ALIVE
                    quiet_until = anyio.current_time() + HEARTBEAT_SECONDS
                    continue
                event: HostEvent | None = None
                with anyio.move_on_after(min(SHUTDOWN_POLL_SECONDS, quiet_until - now)):
                    try:
                        event = await subscription.get()
                    except anyio.EndOfStream:
                        break  # it overflowed (or was closed)
                if event is None:
                    continue
                chunk = await self._chunk(event, subscription)
                if chunk:
                    yield chunk
                    quiet_until = anyio.current_time() + HEARTBEAT_SECONDS
            if subscription.overflowed:
                log.warning(
                    "events.stream_overflow",
                    buffer=self._state.settings.events_stream_buffer,
                    delivered=self._serial,
                    dropped=subscription.dropped,
                )
        finally:
            subscription.close()


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that closes its stream when it ends, however.

    Not FastAPI's own ``EventSourceResponse``: as a route's response class that one
    makes FastAPI frame the route's yields itself (with its own keep-alive), where this
    route needs its framing, heartbeat and shutdown checks in one loop.
    """

    media_type = "text/event-stream"

    def __init__(self, stream: _EventStream) -> None:
        self._frames = stream.frames()
        super().__init__(self._frames, headers=_STREAM_HEADERS)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client that left while a frame was being sent leaves the generator
            # suspended at a ``yield``: close it now (it unsubscribes), shielded so a
            # cancelled request still cleans up.
            with anyio.CancelScope(shield=True):
                self._stream.close()
                await self._frames.aclose()


# ------------------------------------------------------------------------------- route

_SESSION_FILTER_DOC = (
    "Only events of these sessions: ids or names, repeated (`sessionId=a&sessionId=b`) or "
    "comma-separated. Names are resolved when the stream opens. A session the key may not "
    "see is a 404. Without it: every session the key may see."
)
_EVENTS_DOC = (
    "Only these event types, repeated or comma-separated, or `*` for all (the default): "
    + ", ".join(f"`{name}`" for name in EVENT_TYPES)
    + "."
)
_EXAMPLE = (
    ": connected\nretry: 3000\n\n"
    "id: 1\nevent: session.status\n"
    'data: {"event":"session.status","timestamp":"2026-01-01T12:00:00.000Z",'
    '"sessionId":"5f0c...","data":{"sessionName":"support-bot","status":"ready",'
    '"previous":"authenticating"}}\n\n'
    ": keep-alive\n\n"
)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: one frame per event (`id`, "
        "`event`, `data` holding one line of JSON `{event, timestamp, sessionId, data}`), "
        f"and a `: keep-alive` comment after {HEARTBEAT_SECONDS:g} quiet seconds.",
        "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EXAMPLE}},
    },
    404: {"description": "A session in `sessionId` does not exist (or is not visible)"},
    422: {"description": "An unknown event type (the message lists the valid ones)"},
}


@router.get(
    "/events",
    summary="Stream events live (Server-Sent Events)",
    response_class=EventStreamResponse,
    status_code=200,  # FastAPI reads the default from the class's __init__ otherwise
    responses=_RESPONSES,
)
async def stream_events(
    request: Request,
    access: Annotated[Access, requires(Role.VIEWER, AccessScope.ANY)],
    session_id: Annotated[
        list[str] | None, Query(alias="sessionId", description=_SESSION_FILTER_DOC)
    ] = None,
    events: Annotated[list[str] | None, Query(description=_EVENTS_DOC)] = None,
) -> EventStreamResponse:
    """The host's events as they happen, as Server-Sent Events, until the client
    disconnects (see `docs/events-stream.md`; the events' `data` is described in
    `docs/events.md` and `GET /api/webhooks/events`).

    A key limited to sessions receives only its sessions' events. A client that falls
    `ENGINEHOST_EVENTS_STREAM_BUFFER` events behind is disconnected (the stream ends);
    reconnect. The stream also ends when the host shuts down or the key is revoked.
    Event ids count the events of one connection and are not resumable.
    """
    state: AppState = request.app.state.host
    types = chosen_types(events)
    principal = access.principal
    sessions = await chosen_sessions(state, principal, session_id)
    visibility = _Visibility(state, principal.sessions if sessions is None else None)
    await visibility.load()
    secret = presented_key(request)
    assert secret is not None, "the access rule let a request without a key through"
    return EventStreamResponse(_EventStream(state, secret, types, sessions, visibility))
