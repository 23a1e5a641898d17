"""``GET /api/events``: the live Server-Sent Events stream, over a real socket.

The app of an :func:`api_harness` is served by uvicorn in this process on 127.0.0.1,
port 0 (httpx's in-process transport returns an answer only once the app is done with
it, which a stream never is). Events are published on the harness's bus, or caused
through the API. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

from enginehost.core.engine import EngineMessage
from enginehost.core.events import HostEvent
from enginehost.core.http import events as events_route
from enginehost.core.http.app import API_PREFIX
from enginehost.core.http.auth import api_routes
from enginehost.core.webhooks.catalogue import EVENT_TYPES
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Seconds any single expected thing may take before the test fails."""


# ------------------------------------------------------------------------------ server


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the test runner keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class LiveApi:
    api: ApiHarness
    server: uvicorn.Server
    url: str
    stopped: anyio.Event
    """Set when the server's ``serve()`` has returned."""
    baseline: int = 0
    """Bus subscriptions that are not streams' (the host's own consumers)."""
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, secret: str | None = None) -> httpx.AsyncClient:
        headers = {"X-API-Key": secret} if secret is not None else {}
        client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=WAIT)
        self.clients.append(client)
        return client

    @property
    def streams(self) -> int:
        """The bus subscriptions streams hold now."""
        return self.api.state.bus.subscription_count - self.baseline

    def publish(self, kind: str, session_id: str, **data: Any) -> None:
        self.api.state.bus.publish(HostEvent(type=kind, session_id=session_id, data=data))


def _include_the_route(api: ApiHarness) -> None:
    """Mount the router as the app will, unless the app already does."""
    paths = {route.path_format for route in api_routes(api.app)}
    if f"{API_PREFIX}/events" not in paths:
        api.app.include_router(events_route.router, prefix=API_PREFIX)


@contextlib.asynccontextmanager
async def live_api(tmp_path: Path, **settings: Any) -> AsyncIterator[LiveApi]:
    async with api_harness(tmp_path, **settings) as api:
        _include_the_route(api)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        server = _QuietServer(
            uvicorn.Config(
                api.app,
                log_config=None,
                lifespan="off",
                access_log=False,
                # Long on purpose: a stream that ends on shutdown must not need it.
                timeout_graceful_shutdown=30,
            )
        )
        live = LiveApi(
            api=api,
            server=server,
            url=f"http://127.0.0.1:{port}",
            stopped=anyio.Event(),
            baseline=api.state.bus.subscription_count,
        )

        async def serve() -> None:
            try:
                await server.serve([sock])
            finally:
                live.stopped.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with anyio.fail_after(WAIT):
                    while not server.started:
                        await anyio.sleep(0.01)
                try:
                    yield live
                finally:
                    for client in live.clients:
                        await client.aclose()
                    api.state.shutting_down = True
                    server.should_exit = True
                    with anyio.move_on_after(WAIT):
                        await live.stopped.wait()
                    tg.cancel_scope.cancel()
        finally:
            sock.close()


# ------------------------------------------------------------------------------ reading


@dataclass
class Frame:
    """One frame of the stream: its fields, and its comment lines."""

    fields: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    @property
    def is_event(self) -> bool:
        return "data" in self.fields

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.fields["data"])
        return data


class Reader:
    """Frames of an open stream, each read within a time bound."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def frame(self, within: float = WAIT) -> Frame | None:
        """The next frame; None when the stream ended."""
        frame = Frame()
        with anyio.fail_after(within):
            async for line in self._lines:
                if line == "":
                    if frame.fields or frame.comments:
                        return frame
                    continue
                if line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                assert name not in frame.fields, f"field {name} twice in a frame"
                frame.fields[name] = value.removeprefix(" ")
        assert not frame.fields and not frame.comments, f"unterminated frame {frame}"
        return None

    async def event(self, within: float = WAIT) -> Frame:
        """The next event frame (comments are skipped); fails if the stream ends."""
        with anyio.fail_after(within):
            while True:
                frame = await self.frame()
                assert frame is not None, "the stream ended"
                if frame.is_event:
                    return frame

    async def end(self, within: float = WAIT) -> list[Frame]:
        """Every frame until the stream ends (which it must ``within`` seconds)."""
        frames: list[Frame] = []
        with anyio.fail_after(within):
            while (frame := await self.frame()) is not None:
                frames.append(frame)
        return frames


@contextlib.asynccontextmanager
async def stream(client: httpx.AsyncClient, **params: Any) -> AsyncIterator[Reader]:
    """An open stream whose opening frame has been read: what is published from now on
    reaches it."""
    async with client.stream("GET", "/api/events", params=params) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        reader = Reader(response)
        opening = await reader.frame()
        assert opening is not None and "retry" in opening.fields
        yield reader


async def wait_until(condition: Any, within: float = WAIT) -> None:
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.02)


# ------------------------------------------------------------------------------- tests


async def test_events_arrive_framed_with_increasing_ids(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha = await live.api.session("alpha")
        async with stream(live.client(live.api.admin_secret)) as reader:
            headers = reader.response.headers
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            live.publish("session.status", alpha.id, sessionName="alpha", status="ready")
            message = EngineMessage(
                message_id="M1",
                chat_id="15551234567@c.us",
                sender="15551234567@c.us",
                from_me=False,
                body="line one\nline two\u2028line three \U0001f600",
            )
            live.publish("message.received", alpha.id, message=message, messageId="M1")
            first, second = await reader.event(), await reader.event()
        assert first.fields["id"] == "1" and second.fields["id"] == "2"
        assert first.fields["event"] == "session.status"
        body = first.json()
        assert set(body) == {"event", "timestamp", "sessionId", "data"}
        assert body["event"] == "session.status" and body["sessionId"] == alpha.id
        assert body["data"] == {"sessionName": "alpha", "status": "ready"}
        # UTC, milliseconds, "Z": as in a webhook delivery's envelope.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
        assert datetime.fromisoformat(body["timestamp"]).utcoffset() == timedelta(0)
        # A dataclass in the data is sent as JSON; its newline did not split the frame.
        sent = second.json()["data"]["message"]
        assert sent["messageId"] == "M1" and sent["fromMe"] is False
        assert sent["body"] == "line one\nline two\u2028line three \U0001f600"


async def test_events_caused_through_the_api_arrive(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        admin = live.client(live.api.admin_secret)
        async with stream(admin, events="session.status") as reader:
            created = await admin.post(
                "/api/sessions", json={"name": "bot", "engine": "sandbox", "start": True}
            )
            assert created.status_code == 201, created.text
            event = (await reader.event()).json()
        assert event["sessionId"] == created.json()["id"]
        assert event["data"]["sessionName"] == "bot"
        assert event["data"]["status"] == "initializing"


async def test_filter_by_session_id_or_name_repeated_or_comma_separated(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha, beta, gamma = [await live.api.session(n) for n in ("alpha", "beta", "gamma")]
        admin = live.client(live.api.admin_secret)
        for params in (
            {"sessionId": ["alpha", gamma.id]},
            {"sessionId": f"alpha, {gamma.id}"},
        ):
            async with stream(admin, **params) as reader:
                # The unwanted first: had the filter let them through, they would be read
                # before the wanted ones.
                live.publish("session.status", beta.id)
                live.publish("session.status", alpha.id)
                live.publish("session.status", beta.id)
                live.publish("session.status", gamma.id)
                received = [(await reader.event()).json()["sessionId"] for _ in range(2)]
            assert received == [alpha.id, gamma.id], params


async def test_filter_by_event_type(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha = await live.api.session("alpha")
        admin = live.client(live.api.admin_secret)
        async with stream(admin, events="session.qr,message.ack") as reader:
            live.publish("session.status", alpha.id)
            live.publish("message.received", alpha.id)
            live.publish("message.ack", alpha.id)
            live.publish("session.status", alpha.id)
            live.publish("session.qr", alpha.id)
            received = [(await reader.event()).fields["event"] for _ in range(2)]
        assert received == ["message.ack", "session.qr"]
        for everything in ({}, {"events": "*"}):
            async with stream(admin, **everything) as reader:
                # Only the catalogue's events, whatever else travels on the bus.
                live.publish("internal.not-in-the-catalogue", alpha.id)
                live.publish("session.authenticated", alpha.id)
                assert (await reader.event()).fields["event"] == "session.authenticated"


async def test_an_unknown_event_type_is_422_listing_the_valid_ones(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        admin = live.client(live.api.admin_secret)
        response = await admin.get("/api/events", params={"events": "session.status,nope"})
        body = assert_error(response, 422, "validation_failed")
        assert body["errors"][0]["path"] == "query.events"
        assert "'nope'" in body["errors"][0]["message"]
        for name in EVENT_TYPES:
            assert name in body["errors"][0]["message"]
        assert live.streams == 0


async def test_access_no_key_401_viewer_allowed_unknown_session_404(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha = await live.api.session("alpha")
        assert_error(await live.client().get("/api/events"), 401, "unauthorized")
        assert_error(
            await live.client("ehk_not-a-key-0123456789abcdefghijklmnop").get("/api/events"),
            401,
            "unauthorized",
        )
        for role in ("operator", "admin"):
            async with stream(live.client(await live.api.key(role))):
                pass
        viewer = live.client(await live.api.key("viewer"))
        assert_error(
            await viewer.get("/api/events", params={"sessionId": "nope"}),
            404,
            "session_not_found",
        )
        async with stream(viewer) as reader:
            live.publish("session.status", alpha.id)
            assert (await reader.event()).json()["sessionId"] == alpha.id
        await wait_until(lambda: live.streams == 0)


async def test_a_session_limited_key_gets_only_its_sessions(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha, beta = await live.api.session("alpha"), await live.api.session("beta")
        limited = live.client(await live.api.key("viewer", sessions=["alpha", "later"]))
        # Asking for another session is answered as if it did not exist.
        for other in ("beta", beta.id):
            response = await limited.get("/api/events", params={"sessionId": other})
            assert_error(response, 404, "session_not_found")
        async with stream(limited) as reader:
            live.publish("session.status", beta.id)
            live.publish("session.status", alpha.id)
            assert (await reader.event()).json()["sessionId"] == alpha.id
            # A session of its scope made after the stream opened is looked up.
            later = await live.api.session("later")
            live.publish("session.status", beta.id)
            live.publish("session.status", later.id)
            assert (await reader.event()).json()["sessionId"] == later.id
        async with stream(limited, sessionId="alpha") as reader:
            live.publish("session.status", later.id)
            live.publish("session.status", alpha.id)
            assert (await reader.event()).json()["sessionId"] == alpha.id


async def test_a_client_that_falls_behind_is_disconnected(tmp_path: Path) -> None:
    async with live_api(tmp_path, events_stream_buffer=10) as live:
        alpha = await live.api.session("alpha")
        with capture_logs() as logs:
            async with stream(live.client(live.api.admin_secret)) as reader:
                # publish() never waits, so all of these reach the buffer before the
                # stream can send a single one: 10 fit, the 11th overflows it.
                for index in range(25):
                    live.publish("message.ack", alpha.id, index=index)
                rest = await reader.end()
        assert [frame for frame in rest if frame.is_event] == []
        await wait_until(lambda: live.streams == 0)
        overflows = [line for line in logs if line["event"] == "events.stream_overflow"]
        assert len(overflows) == 1, logs
        assert overflows[0]["log_level"] == "warning"
        assert overflows[0]["buffer"] == 10 and overflows[0]["dropped"] == 11


async def test_a_client_going_away_leaves_no_subscription(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        alpha = await live.api.session("alpha")
        admin = live.client(live.api.admin_secret)
        async with stream(admin) as reader:
            assert live.streams == 1
            live.publish("session.status", alpha.id)
            await reader.event()
        await wait_until(lambda: live.streams == 0)
        # And one that leaves without ever reading what was sent to it.
        async with stream(admin):
            for _ in range(5):
                live.publish("session.status", alpha.id)
            assert live.streams == 1
        await wait_until(lambda: live.streams == 0)


async def test_a_heartbeat_comment_arrives_when_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_route, "HEARTBEAT_SECONDS", 0.2)
    async with live_api(tmp_path) as live, stream(live.client(live.api.admin_secret)) as reader:
        frame = await reader.frame(within=2.0)
        assert frame is not None and frame.comments == ["keep-alive"] and not frame.fields


async def test_a_revoked_key_loses_its_stream_at_the_next_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_route, "HEARTBEAT_SECONDS", 0.2)
    async with live_api(tmp_path) as live:
        key, secret = await live.api.state.keys.create(name="watcher", role="viewer")
        async with stream(live.client(secret)) as reader:
            await live.api.state.keys.revoke(key.id)
            await reader.end()
        await wait_until(lambda: live.streams == 0)


async def test_a_revoked_key_loses_even_a_busy_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that always has events never needs a heartbeat: its key is checked on a
    clock of its own all the same."""
    monkeypatch.setattr(events_route, "HEARTBEAT_SECONDS", 0.3)
    async with live_api(tmp_path) as live:
        key, secret = await live.api.state.keys.create(name="busy", role="viewer")
        async with stream(live.client(secret)) as reader, anyio.create_task_group() as tg:

            async def chatter() -> None:
                for index in range(400):  # bounded: 20 s at most
                    live.publish("session.status", "s1", status="ready", n=index)
                    await anyio.sleep(0.05)

            tg.start_soon(chatter)
            await live.api.state.keys.revoke(key.id)
            await reader.end()
            tg.cancel_scope.cancel()
        await wait_until(lambda: live.streams == 0)


async def test_streams_end_when_the_host_shuts_down(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        async with stream(live.client(live.api.admin_secret)) as reader:
            # What the daemon does on SIGTERM: the flag first, then the server stops.
            live.api.state.shutting_down = True
            live.server.should_exit = True
            # Both well inside the server's graceful timeout (30 s here): the stream
            # ended by itself, the server did not have to give up waiting for it.
            await reader.end()
            with anyio.fail_after(WAIT):
                await live.stopped.wait()
            assert not live.server.force_exit
        assert live.streams == 0


async def test_the_route_is_documented_as_an_event_stream(tmp_path: Path) -> None:
    async with live_api(tmp_path) as live:
        spec = (await live.client().get("/api/openapi.json")).json()
        operation = spec["paths"]["/api/events"]["get"]
        assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
        parameters = {parameter["name"] for parameter in operation["parameters"]}
        assert parameters == {"sessionId", "events"}
        assert operation["description"].startswith("Requires an API key with role `viewer`")
