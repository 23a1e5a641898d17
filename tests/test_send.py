"""Sending messages through the API: every kind, the checks, idempotency, media, history.

The sandbox engine plays the phone. Every test runs on both backends of the data
database (PostgreSQL when ENGINEHOST_TEST_POSTGRES_URL is set). Media URLs are served
by a tiny HTTP server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx
import pytest

from enginehost import Capability, EngineError, hookimpl
from enginehost.core.messages.send import SendService
from enginehost.core.messages.store import MessageStore
from enginehost.core.sessions.models import SessionRecord
from enginehost.plugins.sandbox.engine import SandboxEngine
from enginehost.plugins.sandbox.plugin import SandboxPlugin
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

T = TypeVar("T")

CHAT = "15551234567@c.us"
OTHER = "15557654321@c.us"
GROUP = "120363025246125486@g.us"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a5b1b5a70000000049454e44ae426082"
)
SEND_FIELDS = {"messageId", "timestamp", "id", "status"}
MESSAGE_FIELDS = {
    "id",
    "sessionId",
    "chatId",
    "messageId",
    "direction",
    "type",
    "status",
    "body",
    "fromMe",
    "hasMedia",
    "timestamp",
    "createdAt",
    "updatedAt",
    "quotedMessageId",
    "failureReason",
}


# ---------------------------------------------------------------------------- harness


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiHarness]:
    # The media server of these tests listens on loopback, which sends may not fetch
    # from by default (see test_media_from_a_private_address_is_refused_by_default).
    async with api_harness(
        tmp_path, database_url=database_url, media_fetch_private_networks=True
    ) as harness:
        yield harness


@pytest.fixture
def admin(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(api.admin_secret)


@pytest.fixture
async def operator(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(await api.key("operator"))


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float = 5.0) -> T:
    """The first truthy result of ``probe``, polled for at most ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            value = await probe()
            if value:
                return value
            await anyio.sleep(0.02)


def sandbox(api: ApiHarness) -> SandboxPlugin:
    instance = api.state.plugins.engines["sandbox"].instance
    assert isinstance(instance, SandboxPlugin)
    return instance


async def start(api: ApiHarness, name: str) -> tuple[SessionRecord, SandboxEngine]:
    """Create and start a sandbox session; returns it waiting for a scan."""
    session = await api.session(name)
    await api.state.manager.start(name)

    async def scannable() -> SandboxEngine | None:
        engine = sandbox(api).live_engines.get(session.id)
        return engine if engine is not None and engine.waiting_for_scan else None

    return session, await eventually(scannable)


async def ready(api: ApiHarness, name: str = "alpha") -> tuple[SessionRecord, SandboxEngine]:
    """A sandbox session, started, linked and ``ready``."""
    session, engine = await start(api, name)
    await engine.scan()

    async def is_ready() -> SessionRecord | None:
        record = await api.state.sessions.resolve(session.id)
        return record if record.status == "ready" else None

    return await eventually(is_ready), engine


def url(session: SessionRecord | str, action: str = "") -> str:
    key = session if isinstance(session, str) else session.id
    return f"/api/sessions/{key}/messages" + (f"/{action}" if action else "")


def paths(body: dict[str, Any]) -> list[str]:
    return [error["path"] for error in body.get("errors", [])]


async def history(client: httpx.AsyncClient, session: SessionRecord, **query: Any) -> Any:
    response = await client.get(url(session), params=query)
    assert response.status_code == 200, response.text
    return response.json()


def small_limits(api: ApiHarness, **options: Any) -> SendService:
    """Replace the routes' send service with one of small limits."""
    assert api.databases is not None
    service = SendService(
        api.state.manager,
        api.state.plugins,
        MessageStore(api.databases.data, bus=api.state.bus),
        api.state.templates,
        **{"allow_private_networks": True, **options},
    )
    api.state.send = service
    return service


# ------------------------------------------------------------------------- media server


class _MediaHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/image.png":
            self._answer(200, PNG, "image/png")
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/image.png" if left <= 1 else f"/redirect/{left - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/files/report.pdf":
            self._answer(200, b"%PDF-1.4 fake", "application/octet-stream")
        elif path == "/big":
            self._answer(200, b"x" * 4096, "image/png")
        elif path == "/big-unannounced":
            # HTTP/1.0 without Content-Length: the body runs until the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"x" * 4096)
        elif path == "/slow":
            time.sleep(2)
            self._answer(200, PNG, "image/png")
        else:
            self._answer(404, b"not here", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def media_server() -> Iterator[str]:
    """The base URL of a media server on loopback (only)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MediaHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ text


async def test_send_text_is_stored_sent_then_read(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    response = await operator.post(url(session, "send-text"), json={"chatId": CHAT, "text": "hi"})
    assert response.status_code == 201, response.text
    sent = response.json()
    assert set(sent) == SEND_FIELDS
    assert isinstance(sent["timestamp"], int)
    assert abs(sent["timestamp"] - time.time()) < 60
    assert sent["status"] in ("sent", "delivered", "read")
    assert "Idempotent-Replayed" not in response.headers
    assert [(m.chat_id, m.body) for m in engine.sent] == [(CHAT, "hi")]
    assert sent["messageId"] == engine.sent[0].message_id

    async def read() -> dict[str, Any] | None:
        page = await history(operator, session)
        return page if page["messages"] and page["messages"][0]["status"] == "read" else None

    page = await eventually(read)
    assert page["total"] == 1  # the engine's echo merged into the send's row
    (record,) = page["messages"]
    assert set(record) == MESSAGE_FIELDS
    assert record["id"] == sent["id"]
    assert record["messageId"] == sent["messageId"]
    assert (record["chatId"], record["body"], record["type"]) == (CHAT, "hi", "text")
    assert (record["direction"], record["fromMe"], record["hasMedia"]) == ("outgoing", True, False)
    assert record["sessionId"] == session.id
    assert record["timestamp"] == sent["timestamp"]
    assert datetime.fromisoformat(record["createdAt"]).utcoffset() is not None


async def test_session_name_works_in_the_path(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    _, engine = await ready(api)
    response = await operator.post(url("alpha", "send-text"), json={"chatId": CHAT, "text": "x"})
    assert response.status_code == 201, response.text
    assert len(engine.sent) == 1


# ----------------------------------------------------------------------- idempotency


async def test_an_idempotency_key_returns_the_first_result(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    headers = {"Idempotency-Key": "order-42"}
    payload = {"chatId": CHAT, "text": "your order shipped"}
    first = await operator.post(url(session, "send-text"), json=payload, headers=headers)
    second = await operator.post(url(session, "send-text"), json=payload, headers=headers)
    assert first.status_code == second.status_code == 201, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["messageId"] == first.json()["messageId"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(engine.sent) == 1
    assert (await history(operator, session))["total"] == 1

    # The same key for another message is refused, not silently answered.
    other = await operator.post(
        url(session, "send-text"), json={**payload, "text": "something else"}, headers=headers
    )
    assert_error(other, 422, "idempotency_key_reused")
    # Keys are per session... and a fresh key sends again.
    again = await operator.post(
        url(session, "send-text"), json=payload, headers={"Idempotency-Key": "order-43"}
    )
    assert again.status_code == 201
    assert len(engine.sent) == 2


async def test_a_malformed_idempotency_key_is_422(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    for key in (b"", b"k" * 201, "caf\u00e9".encode(), b"tab\tkey"):
        response = await operator.post(
            url(session, "send-text"),
            json={"chatId": CHAT, "text": "x"},
            headers={b"Idempotency-Key": key},
        )
        body = assert_error(response, 422, "validation_failed")
        assert paths(body) == ["header.Idempotency-Key"], key
    assert engine.sent == []


async def test_a_key_whose_send_is_pending_is_409(
    api: ApiHarness, operator: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, engine = await ready(api)
    entered, release = anyio.Event(), anyio.Event()
    original = engine.send_text

    async def slow_send_text(chat_id: str, text: str, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await original(chat_id, text, **kwargs)

    monkeypatch.setattr(engine, "send_text", slow_send_text)
    headers = {"Idempotency-Key": "slow-1"}
    payload = {"chatId": CHAT, "text": "slow"}
    answers: list[httpx.Response] = []

    async def first() -> None:
        answers.append(
            await operator.post(url(session, "send-text"), json=payload, headers=headers)
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first)
        await entered.wait()
        busy = await operator.post(url(session, "send-text"), json=payload, headers=headers)
        body = assert_error(busy, 409, "send_in_progress")
        pending = (await history(operator, session, status="pending"))["messages"]
        assert [m["id"] for m in pending] == [body["id"]]  # the row exists before the engine call
        release.set()
    assert answers[0].status_code == 201
    replay = await operator.post(url(session, "send-text"), json=payload, headers=headers)
    assert replay.json()["id"] == answers[0].json()["id"] == body["id"]
    assert len(engine.sent) == 1


# ------------------------------------------------------------------- readiness checks


async def test_a_session_that_is_not_ready_is_409_with_its_status(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    created = await api.session("idle")
    response = await operator.post(url(created, "send-text"), json={"chatId": CHAT, "text": "x"})
    body = assert_error(response, 409, "session_not_ready")
    assert body["status"] == "created"
    assert "created" in body["message"]

    waiting, engine = await start(api, "waiting")
    response = await operator.post(url(waiting, "send-text"), json={"chatId": CHAT, "text": "x"})
    assert assert_error(response, 409, "session_not_ready")["status"] == "qr_ready"
    assert engine.sent == []
    assert (await history(operator, waiting))["total"] == 0  # nothing stored


async def test_a_reconnecting_session_is_503_with_a_retry_hint(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    await api.state.sessions.update(session.id, status="initializing", reconnect_attempt=1)
    response = await operator.post(url(session, "send-text"), json={"chatId": CHAT, "text": "x"})
    body = assert_error(response, 503, "session_reconnecting")
    assert body["status"] == "initializing"
    assert body["reconnectAttempt"] == 1
    assert isinstance(body["retryAfter"], int) and body["retryAfter"] >= 1
    assert response.headers["Retry-After"] == str(body["retryAfter"])
    assert engine.sent == []


async def test_a_capability_the_engine_lacks_is_501(
    api: ApiHarness, operator: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, engine = await ready(api)
    monkeypatch.setattr(
        SandboxPlugin, "capabilities", frozenset(Capability) - {Capability.SEND_LOCATION}
    )
    response = await operator.post(
        url(session, "send-location"), json={"chatId": CHAT, "latitude": 1, "longitude": 2}
    )
    body = assert_error(response, 501, "not_supported")
    assert (body["capability"], body["engine"]) == ("send_location", "sandbox")
    assert "send_location" in body["message"] and "sandbox" in body["message"]
    assert engine.sent == []
    assert (await history(operator, session))["total"] == 0


async def test_a_message_sending_hook_can_veto(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    seen: list[tuple[str, str, str | None]] = []

    class Gate:
        @hookimpl
        def message_sending(self, chat_id: str, kind: str, text: str | None) -> str | None:
            seen.append((chat_id, kind, text))
            return "no sales pitches" if text and "buy" in text else None

    api.state.plugins.pm.register(Gate(), name="gate")
    vetoed = await operator.post(
        url(session, "send-text"), json={"chatId": CHAT, "text": "buy now"}
    )
    body = assert_error(vetoed, 403, "send_vetoed")
    assert "no sales pitches" in body["reason"]
    assert "no sales pitches" in body["message"]
    assert engine.sent == []
    assert (await history(operator, session))["total"] == 0  # nothing stored

    allowed = await operator.post(url(session, "send-text"), json={"chatId": CHAT, "text": "hi"})
    assert allowed.status_code == 201
    assert seen == [(CHAT, "send_text", "buy now"), (CHAT, "send_text", "hi")]


async def test_an_engine_failure_is_502_and_the_row_failed(
    api: ApiHarness, operator: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, engine = await ready(api)
    calls = 0

    async def broken_send_text(chat_id: str, text: str, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise EngineError("the socket closed mid-send")

    monkeypatch.setattr(engine, "send_text", broken_send_text)
    headers = {"Idempotency-Key": "doomed"}
    payload = {"chatId": CHAT, "text": "x"}
    response = await operator.post(url(session, "send-text"), json=payload, headers=headers)
    body = assert_error(response, 502, "engine_error")
    assert body["reason"] == "the socket closed mid-send"
    (row,) = (await history(operator, session))["messages"]
    assert (row["id"], row["status"]) == (body["id"], "failed")
    assert row["failureReason"] == "the socket closed mid-send"
    assert row["messageId"] is None

    # The key replays the failure; the engine is not asked again.
    again = await operator.post(url(session, "send-text"), json=payload, headers=headers)
    assert assert_error(again, 502, "engine_error")["reason"] == "the socket closed mid-send"
    assert calls == 1


# ----------------------------------------------------------------------------- media


async def test_media_from_base64(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, engine = await ready(api)
    encoded = base64.b64encode(PNG).decode()
    response = await operator.post(
        url(session, "send-image"), json={"chatId": CHAT, "base64": encoded, "caption": "look"}
    )
    assert response.status_code == 201, response.text
    message = engine.sent[-1]
    assert (message.type.value, message.body, message.has_media) == ("image", "look", True)
    assert message.raw == {"mimetype": "image/jpeg", "filename": None, "size": len(PNG)}

    data_url = "data:image/png;base64," + encoded
    await operator.post(url(session, "send-image"), json={"chatId": CHAT, "base64": data_url})
    assert engine.sent[-1].raw["mimetype"] == "image/png"

    expected = {
        "send-video": ("video", "video/mp4"),
        "send-audio": ("audio", "audio/mpeg"),
        "send-document": ("document", "application/octet-stream"),
        "send-sticker": ("sticker", "image/webp"),
    }
    for route, (kind, mimetype) in expected.items():
        response = await operator.post(
            url(session, route), json={"chatId": CHAT, "base64": encoded}
        )
        assert response.status_code == 201, (route, response.text)
        assert (engine.sent[-1].type.value, engine.sent[-1].raw["mimetype"]) == (kind, mimetype)

    response = await operator.post(
        url(session, "send-audio"),
        json={"chatId": CHAT, "base64": encoded, "mimetype": "audio/ogg; codecs=opus"},
    )
    assert engine.sent[-1].raw["mimetype"] == "audio/ogg; codecs=opus"
    response = await operator.post(
        url(session, "send-document"),
        json={"chatId": CHAT, "base64": encoded, "filename": "notes.txt"},
    )
    assert engine.sent[-1].raw == {
        "mimetype": "text/plain",
        "filename": "notes.txt",
        "size": len(PNG),
    }

    rows = (await history(operator, session, limit=1))["messages"]
    assert (rows[0]["type"], rows[0]["hasMedia"]) == ("document", True)


async def test_media_from_a_url(
    api: ApiHarness, operator: httpx.AsyncClient, media_server: str
) -> None:
    session, engine = await ready(api)
    response = await operator.post(
        url(session, "send-image"), json={"chatId": CHAT, "url": f"{media_server}/image.png"}
    )
    assert response.status_code == 201, response.text
    assert engine.sent[-1].raw == {"mimetype": "image/png", "filename": None, "size": len(PNG)}

    three = await operator.post(
        url(session, "send-image"), json={"chatId": CHAT, "url": f"{media_server}/redirect/3"}
    )
    assert three.status_code == 201, three.text

    document = await operator.post(
        url(session, "send-document"),
        json={"chatId": CHAT, "url": f"{media_server}/files/report.pdf"},
    )
    assert document.status_code == 201, document.text
    assert engine.sent[-1].raw["mimetype"] == "application/pdf"
    assert engine.sent[-1].raw["filename"] == "report.pdf"
    assert len(engine.sent) == 3


async def test_media_from_a_private_address_is_refused_by_default(
    api: ApiHarness, operator: httpx.AsyncClient, media_server: str
) -> None:
    session, engine = await ready(api)
    small_limits(api, allow_private_networks=False)  # the production default
    for target in (f"{media_server}/image.png", "http://localhost:9/x.png"):
        response = await operator.post(
            url(session, "send-image"), json={"chatId": CHAT, "url": target}
        )
        assert response.status_code == 422, response.text
        assert "loopback, private or link-local" in response.json()["message"]
    assert engine.sent == []


async def test_media_fetch_failures_name_the_host_only(
    api: ApiHarness, operator: httpx.AsyncClient, media_server: str
) -> None:
    session, engine = await ready(api)
    secret_url = f"{media_server}/missing-file?token=s3cr3t"
    for target, problem in (
        (secret_url, "HTTP 404"),
        (f"{media_server}/redirect/4", "more than 3 redirects"),
        ("http://127.0.0.1:1/closed", "cannot connect"),
    ):
        response = await operator.post(
            url(session, "send-image"), json={"chatId": CHAT, "url": target}
        )
        body = assert_error(response, 422, "media_fetch_failed")
        assert body["host"] == "127.0.0.1"
        assert problem in body["message"]
        assert "s3cr3t" not in response.text and "missing-file" not in response.text
    assert engine.sent == []
    assert (await history(operator, session))["total"] == 0


async def test_media_size_and_time_limits(
    api: ApiHarness, operator: httpx.AsyncClient, media_server: str
) -> None:
    session, engine = await ready(api)
    small_limits(api, media_max_bytes=1024, media_fetch_timeout=0.5)
    encoded = base64.b64encode(b"x" * 2048).decode()
    response = await operator.post(
        url(session, "send-image"), json={"chatId": CHAT, "base64": encoded}
    )
    assert assert_error(response, 413, "payload_too_large")["maxBytes"] == 1024
    for path in ("/big", "/big-unannounced"):
        response = await operator.post(
            url(session, "send-image"), json={"chatId": CHAT, "url": media_server + path}
        )
        assert_error(response, 413, "payload_too_large")
    started = time.monotonic()
    response = await operator.post(
        url(session, "send-image"), json={"chatId": CHAT, "url": f"{media_server}/slow"}
    )
    assert_error(response, 422, "media_fetch_failed")
    assert time.monotonic() - started < 1.9
    small = base64.b64encode(b"y" * 1024).decode()
    fits = await operator.post(url(session, "send-image"), json={"chatId": CHAT, "base64": small})
    assert fits.status_code == 201, fits.text
    assert len(engine.sent) == 1


async def test_media_input_is_validated(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, engine = await ready(api)
    encoded = base64.b64encode(PNG).decode()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"base64": "not base64 at all!"}, "base64"),
        ({"base64": "QUJD="}, "base64"),
        ({"base64": encoded, "url": "http://127.0.0.1/x.png"}, "url"),
        ({}, "url"),
        ({"url": "ftp://example.com/x.png"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"base64": encoded, "mimetype": "not a type"}, "mimetype"),
        ({"base64": encoded, "filename": "../../etc/passwd"}, "filename"),
        ({"base64": encoded, "colour": "red"}, "colour"),
    ]
    for fields, field in cases:
        response = await operator.post(url(session, "send-image"), json={"chatId": CHAT, **fields})
        assert response.status_code == 422, fields
        body = assert_error(response, 422, "validation_failed")
        assert paths(body) == [field], (fields, body)
    assert engine.sent == []


# ------------------------------------------------------------------------- chat ids


async def test_chat_ids_are_checked_at_the_edge(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    for chat_id, hint in (
        ("15551234567@s.whatsapp.net", "Baileys"),
        ("+15551234567", "without '+'"),
        ("hello", ""),
        ("15551234567@c.us ", ""),
    ):
        response = await operator.post(
            url(session, "send-text"), json={"chatId": chat_id, "text": "x"}
        )
        body = assert_error(response, 422, "validation_failed")
        assert paths(body) == ["chatId"]
        assert hint in body["message"]
    response = await operator.post(
        url(session, "forward"),
        json={"fromChatId": CHAT, "toChatId": "nobody", "messageId": "ABC"},
    )
    assert paths(assert_error(response, 422, "validation_failed")) == ["toChatId"]
    for good in (GROUP, "123456789012345@lid", "status@broadcast"):
        response = await operator.post(
            url(session, "send-text"), json={"chatId": good, "text": "x"}
        )
        assert response.status_code != 422, (good, response.text)
    assert len(engine.sent) == 1  # the sandbox itself sends to c.us and g.us chats only


# ---------------------------------------------------------------------- other kinds


async def test_location_and_contact(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, engine = await ready(api)
    response = await operator.post(
        url(session, "send-location"),
        json={"chatId": CHAT, "latitude": 52.5163, "longitude": 13.3777},
    )
    assert response.status_code == 201, response.text
    assert engine.sent[-1].type.value == "location"
    assert engine.sent[-1].raw["latitude"] == 52.5163
    bad = await operator.post(
        url(session, "send-location"), json={"chatId": CHAT, "latitude": 91, "longitude": 0}
    )
    assert paths(assert_error(bad, 422, "validation_failed")) == ["latitude"]

    response = await operator.post(
        url(session, "send-contact"),
        json={"chatId": CHAT, "contactName": "Ada", "contactNumber": "+1 555-123-4567"},
    )
    assert response.status_code == 201, response.text
    assert engine.sent[-1].raw == {"name": "Ada", "number": "15551234567"}
    bad = await operator.post(
        url(session, "send-contact"),
        json={"chatId": CHAT, "contactName": "Ada", "contactNumber": "12"},
    )
    assert paths(assert_error(bad, 422, "validation_failed")) == ["contactNumber"]
    rows = (await history(operator, session))["messages"]
    assert [(r["type"], r["body"]) for r in rows] == [
        ("contact", "Ada (+15551234567)"),
        ("location", "52.5163,13.3777"),
    ]


async def test_reply_forward_react_and_delete(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, engine = await ready(api)
    incoming = await engine.receive_text(CHAT, "can you send the invoice?")

    reply = await operator.post(
        url(session, "reply"),
        json={"chatId": CHAT, "quotedMessageId": incoming.message_id, "text": "sure"},
    )
    assert reply.status_code == 201, reply.text
    assert engine.sent[-1].quoted_message_id == incoming.message_id
    rows = (await history(operator, session, **{"from": "me"}))["messages"]
    assert rows[0]["quotedMessageId"] == incoming.message_id

    forwarded = await operator.post(
        url(session, "forward"),
        json={"fromChatId": CHAT, "toChatId": OTHER, "messageId": incoming.message_id},
    )
    assert forwarded.status_code == 201, forwarded.text
    assert (engine.sent[-1].chat_id, engine.sent[-1].body) == (OTHER, "can you send the invoice?")
    (row,) = (await history(operator, session, chatId=OTHER))["messages"]
    assert (row["type"], row["body"], row["id"]) == (
        "text",
        "can you send the invoice?",
        forwarded.json()["id"],
    )

    react = await operator.post(
        url(session, "react"),
        json={"chatId": CHAT, "messageId": incoming.message_id, "emoji": "👍"},
        headers={"Idempotency-Key": "ignored"},
    )
    assert (react.status_code, react.json()) == (200, {"success": True})
    assert engine.reactions == {incoming.message_id: "👍"}
    unreact = await operator.post(
        url(session, "react"), json={"chatId": CHAT, "messageId": incoming.message_id, "emoji": ""}
    )
    assert unreact.status_code == 200
    assert engine.reactions == {}

    reply_id = reply.json()["messageId"]
    deleted = await operator.post(
        url(session, "delete"), json={"chatId": CHAT, "messageId": reply_id}
    )
    assert (deleted.status_code, deleted.json()) == (200, {"success": True})
    assert engine.deleted == {reply_id}
    unknown = await operator.post(
        url(session, "delete"), json={"chatId": CHAT, "messageId": "NOSUCHID"}
    )
    assert "NOSUCHID" in assert_error(unknown, 502, "engine_error")["reason"]
    # React and delete make no message rows.
    assert (await history(operator, session))["total"] == 3


async def test_send_template(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, engine = await ready(api)
    assert api.state.templates is not None
    template = await api.state.templates.create(
        session.id, name="shipped", body="Hi {{ name }}, order {{ order }} shipped."
    )
    by_name = await operator.post(
        url(session, "send-template"),
        json={"chatId": CHAT, "templateName": "shipped", "vars": {"name": "Ada", "order": 42}},
    )
    assert by_name.status_code == 201, by_name.text
    assert engine.sent[-1].body == "Hi Ada, order 42 shipped."
    by_id = await operator.post(
        url(session, "send-template"),
        json={"chatId": CHAT, "templateId": template.id, "vars": {"name": "Bo", "order": 7}},
    )
    assert by_id.status_code == 201, by_id.text
    assert engine.sent[-1].body == "Hi Bo, order 7 shipped."

    missing = await operator.post(
        url(session, "send-template"),
        json={"chatId": CHAT, "templateName": "shipped", "vars": {"name": "Ada"}},
    )
    assert assert_error(missing, 422, "missing_variables")["missing"] == ["order"]
    both = await operator.post(
        url(session, "send-template"),
        json={"chatId": CHAT, "templateName": "shipped", "templateId": template.id},
    )
    assert paths(assert_error(both, 422, "validation_failed")) == ["templateId"]
    unknown = await operator.post(
        url(session, "send-template"), json={"chatId": CHAT, "templateName": "nope"}
    )
    assert_error(unknown, 404, "template_not_found")
    assert len(engine.sent) == 2


# --------------------------------------------------------------------------- history


async def test_history_filters_totals_and_cursor_paging(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    for text in ("one", "two", "three"):
        response = await operator.post(
            url(session, "send-text"), json={"chatId": CHAT, "text": text}
        )
        assert response.status_code == 201
    for text in ("four", "five"):
        await operator.post(url(session, "send-text"), json={"chatId": OTHER, "text": text})
    await engine.receive_text(CHAT, "in-1")
    await engine.receive_text(CHAT, "in-2")
    viewer = api.client(await api.key("viewer"))

    everything = await history(viewer, session)
    assert everything["total"] == 7
    assert everything["nextCursor"] is None
    assert everything["messages"][0]["body"] == "in-2"  # newest first
    assert (await history(viewer, session, chatId=CHAT))["total"] == 5
    assert (await history(viewer, session, direction="incoming"))["total"] == 2
    mine = await history(viewer, session, **{"from": "me"})
    assert mine["total"] == 5 and all(m["fromMe"] for m in mine["messages"])
    own_id = f"{(await api.state.sessions.resolve(session.id)).phone}@c.us"
    assert (await history(viewer, session, **{"from": own_id}))["total"] == 5
    theirs = await history(viewer, session, **{"from": CHAT})
    assert [m["body"] for m in theirs["messages"]] == ["in-2", "in-1"]
    assert (await history(viewer, session, **{"from": CHAT, "chatId": OTHER}))["total"] == 0
    assert (await history(viewer, session, status="failed"))["total"] == 0
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await history(viewer, session, since=future))["total"] == 0
    assert (await history(viewer, session, until=future))["total"] == 7
    assert (await history(viewer, session, since=int(time.time() * 1000) - 60_000))["total"] == 7

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            query["after"] = cursor
        page = await history(viewer, session, **query)
        assert page["total"] == (7 if pages == 0 else 8)  # "late" counts, on no page
        seen.extend(m["id"] for m in page["messages"])
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
        # A message arriving mid-walk does not shift the pages after the cursor.
        if pages == 1:
            await engine.receive_text(CHAT, "late")
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert [m["id"] for m in everything["messages"]] == seen
    offset = await history(viewer, session, limit=2, offset=6)
    assert [m["body"] for m in offset["messages"]] == ["two", "one"]


async def test_history_refuses_bad_filters(api: ApiHarness, operator: httpx.AsyncClient) -> None:
    session, _ = await ready(api)
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"from": GROUP}, 422, "validation_failed", "query.from"),
        ({"from": "2024-01-01T00:00:00Z"}, 422, "validation_failed", "query.from"),
        ({"from": CHAT, "chatId": GROUP}, 422, "unsupported_filter", "query.from"),
        ({"chatId": "nope"}, 422, "validation_failed", "query.chatId"),
        ({"limit": 0}, 422, "validation_failed", "query.limit"),
        ({"limit": 501}, 422, "validation_failed", "query.limit"),
        ({"offset": -1}, 422, "validation_failed", "query.offset"),
        ({"direction": "sideways"}, 422, "validation_failed", "query.direction"),
        ({"since": "2024-01-01T00:00:00"}, 422, "validation_failed", "query.since"),
        ({"after": "not-a-cursor"}, 422, "invalid_cursor", ""),
    ]
    for query, status, code, path in cases:
        response = await operator.get(url(session), params=query)
        body = assert_error(response, status, code)
        if path:
            assert paths(body) == [path], (query, body)
    hint = await operator.get(url(session), params={"from": "2024-01-01T00:00:00Z"})
    assert "since" in hint.json()["message"]


# ---------------------------------------------------------------------------- access


async def test_roles_and_session_scopes(api: ApiHarness) -> None:
    alpha, engine = await ready(api, "alpha")
    beta = await api.session("beta")
    payload = {"chatId": CHAT, "text": "x"}
    limited = api.client(await api.key("operator", sessions=["beta"]))
    response = await limited.post(url(alpha, "send-text"), json=payload)
    assert_error(response, 404, "session_not_found")
    response = await limited.get(url(alpha))
    assert_error(response, 404, "session_not_found")
    own = await limited.post(url(beta, "send-text"), json=payload)
    assert_error(own, 409, "session_not_ready")  # its own session: seen, just not started

    viewer = api.client(await api.key("viewer"))
    response = await viewer.post(url(alpha, "send-text"), json=payload)
    assert_error(response, 403, "forbidden_role")
    for action in ("react", "delete"):
        response = await viewer.post(url(alpha, action), json={})
        assert_error(response, 403, "forbidden_role")
    assert (await viewer.get(url(alpha))).status_code == 200
    assert_error(await api.client().get(url(alpha)), 401, "unauthorized")
    assert engine.sent == []


# ------------------------------------------------------------------------------ echoes


async def test_a_send_publishes_message_sent_once_under_its_own_row(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, _ = await ready(api)
    events = api.state.bus.subscribe(maxsize=100, types=("message.sent",))
    try:
        body = {"chatId": CHAT, "text": "x"}
        response = await operator.post(url(session, "send-text"), json=body)
        assert response.status_code == 201, response.text
        sent = response.json()
        with anyio.fail_after(5):
            event = await events.get()
        # The engine echoed the send while it was in progress: the echo is the send's
        # row, not a row of its own that a merge deletes later.
        assert (event.data["id"], event.data["messageId"]) == (sent["id"], sent["messageId"])
        assert event.data["body"] == "x" and event.data["fromMe"] is True
        with anyio.move_on_after(0.3):
            extra = await events.get()
            pytest.fail(f"a second message.sent: {extra}")
    finally:
        events.close()
    assert (await history(operator, session))["total"] == 1


async def test_a_message_typed_on_the_phone_during_a_send_is_stored_after_it(
    api: ApiHarness, operator: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, engine = await ready(api)
    events = api.state.bus.subscribe(maxsize=100, types=("message.sent",))
    typed: list[Any] = []
    go_on = anyio.Event()
    real_send = engine._send

    async def slow_send(message: Any) -> Any:
        result = await real_send(message)  # the echo is reported here
        typed.append(await engine.compose_on_phone(OTHER, "typed meanwhile"))
        await go_on.wait()
        return result

    monkeypatch.setattr(engine, "_send", slow_send)
    try:
        async with anyio.create_task_group() as tasks:
            responses: list[httpx.Response] = []

            async def post() -> None:
                body = {"chatId": CHAT, "text": "from the API"}
                responses.append(await operator.post(url(session, "send-text"), json=body))

            async def typed_yet() -> list[Any]:
                return typed

            tasks.start_soon(post)
            try:
                await eventually(typed_yet)
                # Held while the send is with the engine: only the pending row exists.
                page = await history(operator, session)
                assert [m["status"] for m in page["messages"]] == ["pending"]
            finally:
                go_on.set()  # a failure above must not leave the send waiting
        (response,) = responses
        assert response.status_code == 201, response.text
        sent = response.json()
        with anyio.fail_after(5):
            first, second = await events.get(), await events.get()
        assert [e.data["messageId"] for e in (first, second)] == [
            sent["messageId"],
            typed[0].message_id,
        ]
        assert first.data["id"] == sent["id"]
        page = await history(operator, session)
        assert page["total"] == 2
        by_id = {m["messageId"]: m for m in page["messages"]}
        assert by_id[typed[0].message_id]["body"] == "typed meanwhile"
        assert by_id[sent["messageId"]]["id"] == sent["id"]
    finally:
        events.close()


async def test_a_send_whose_caller_goes_away_still_completes(
    api: ApiHarness, operator: httpx.AsyncClient
) -> None:
    session, engine = await ready(api)
    caller = anyio.CancelScope()
    finished: list[bool] = []

    async def send() -> None:
        with caller:
            await api.state.send.send_text(session, chat_id=CHAT, text="going away")
            finished.append(True)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send)
        await anyio.lowlevel.checkpoint()  # the send is now writing its pending row
        caller.cancel()
    # Cancelled only once the send was over: the engine was asked and the row is
    # sent, never left pending.
    assert finished == [True]
    assert [m.body for m in engine.sent] == ["going away"]
    page = await history(operator, session)
    (row,) = page["messages"]
    assert row["status"] in ("sent", "delivered", "read")
    assert row["messageId"] == engine.sent[0].message_id
