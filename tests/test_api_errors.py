"""Request guards and the error model: 413, 415, malformed JSON, 405, 500, 503, request ids."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel
from starlette.types import Message, Scope

from enginehost.core.db import DatabaseBusyError, DatabaseUnavailableError
from enginehost.core.http.errors import ApiError, request_id
from enginehost.core.http.middleware import is_json_media_type, new_request_id
from enginehost.core.logging import configure_logging
from tests.support.api import ADMIN_SECRET, ApiHarness, api_harness

pytestmark = pytest.mark.anyio

LIMIT = 2048  # bytes: ENGINEHOST_MAX_REQUEST_BYTES for these tests
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class Note(BaseModel):
    text: str


def _add_test_routes(app: FastAPI) -> None:
    """Routes that exist only in these tests (no access rule: they are not the API's)."""

    @app.post("/api/_test/notes")
    async def create_note(note: Note) -> dict[str, Any]:
        return {"text": note.text, "length": len(note.text)}

    @app.post("/api/_test/ping")
    async def ping() -> dict[str, str]:  # takes no body at all
        return {"pong": "yes"}

    @app.put("/api/_test/read-only")
    async def read_only() -> None:  # like PUT /api/settings: 501 whatever the body
        raise ApiError(501, "cannot change this", code="read_only")

    @app.get("/api/_test/bug")
    async def bug() -> None:
        raise RuntimeError("secret internal detail at /srv/enginehost/main.sqlite")

    @app.get("/api/_test/db-down")
    async def db_down() -> None:
        raise DatabaseUnavailableError(
            "cannot connect to the main database postgresql://app@10.1.2.3:5432/eh "
            "(from ENGINEHOST_MAIN_DATABASE_URL): connection refused"
        )

    @app.get("/api/_test/db-busy")
    async def db_busy() -> None:
        raise DatabaseBusyError("the data database is busy: database is locked")

    @app.get("/api/_test/teapot")
    async def teapot() -> None:
        raise HTTPException(418, "short and stout", headers={"X-Tea": "earl grey"})


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path, max_request_bytes=LIMIT) as harness:
        _add_test_routes(harness.app)
        yield harness


@pytest.fixture
def admin(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(api.admin_secret)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The process' log lines, as JSON, during the test (the configuration is restored)."""
    root = logging.getLogger()
    saved = structlog.get_config(), list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    config, handlers, level = saved
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    return body


# ----------------------------------------------------------------------------- 413


async def test_body_over_the_cap_by_content_length_is_413_unread(admin: httpx.AsyncClient) -> None:
    big = json.dumps({"text": "x" * LIMIT}).encode()
    response = await admin.post(
        "/api/_test/notes", content=big, headers={"content-type": "application/json"}
    )
    body = _assert_error(response, 413, "payload_too_large")
    assert "2 KiB (2048 bytes)" in body["message"]
    assert "connection" not in response.headers  # the server discards the rest, no reset
    assert response.headers["x-request-id"]


async def test_content_length_is_checked_before_anything_is_read(api: ApiHarness) -> None:
    """The answer comes without one byte of the body being received."""
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/_test/notes",
        "raw_path": b"/api/_test/notes",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(10 * LIMIT).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await api.app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413


async def test_streamed_body_is_cut_past_the_cap(admin: httpx.AsyncClient) -> None:
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"text": "'
        for _ in range(100):
            chunks_sent += 1
            yield b"y" * 512
        yield b'"}'

    response = await admin.post(
        "/api/_test/notes", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # really streamed (chunked)
    body = _assert_error(response, 413, "payload_too_large")
    assert "2048 bytes" in body["message"]
    assert chunks_sent < 10  # cut as the bytes arrived, not after the whole body


async def test_streamed_body_under_the_cap_passes(admin: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": '
        yield b'"small"}'

    response = await admin.post(
        "/api/_test/notes", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json() == {"text": "small", "length": 5}


async def test_body_exactly_at_the_cap_passes(admin: httpx.AsyncClient) -> None:
    overhead = len(json.dumps({"text": ""}).encode())
    exact = json.dumps({"text": "z" * (LIMIT - overhead)}).encode()
    assert len(exact) == LIMIT
    response = await admin.post(
        "/api/_test/notes", content=exact, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200


# ----------------------------------------------------------------------------- 415


async def test_non_json_body_is_415(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/_test/notes", content=b"text=hello", headers={"content-type": "text/plain"}
    )
    body = _assert_error(response, 415, "unsupported_media_type")
    assert "'text/plain'" in body["message"]
    assert "application/json" in body["message"]

    form = await admin.post("/api/_test/notes", data={"text": "hello"})  # urlencoded form
    _assert_error(form, 415, "unsupported_media_type")

    untyped = await admin.post("/api/_test/notes", content=b'{"text": "no type"}')
    assert "content-type" not in untyped.request.headers
    untyped_body = _assert_error(untyped, 415, "unsupported_media_type")
    assert "needs a Content-Type" in untyped_body["message"]


async def test_streamed_non_json_body_is_415(admin: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b""
        yield b"plain words"

    response = await admin.post(
        "/api/_test/notes", content=chunks(), headers={"content-type": "text/plain"}
    )
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/merge-patch+json",
        "application/vnd.enginehost.note+json; charset=utf-8",
    ],
)
async def test_json_content_types_are_accepted(admin: httpx.AsyncClient, content_type: str) -> None:
    response = await admin.post(
        "/api/_test/notes", content=b'{"text": "hi"}', headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "hi"


def test_json_media_type_rule() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("application/problem+json; charset=utf-8")
    assert not is_json_media_type("application/+json")
    assert not is_json_media_type("text/json")
    assert not is_json_media_type("application/jsonx")
    assert not is_json_media_type("multipart/form-data; boundary=x")
    assert not is_json_media_type("")


async def test_an_empty_body_is_never_checked(admin: httpx.AsyncClient) -> None:
    """Routes that take no body keep working whatever the client says its type is."""
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/json"}):
        response = await admin.post("/api/_test/ping", headers=headers)
        assert response.status_code == 200, (headers, response.text)
    response = await admin.delete("/api/_test/nothing-here", headers={"content-type": "x/y"})
    assert response.status_code == 404  # no 415 for a method that is not checked


async def test_a_body_less_route_answers_its_own_status_for_a_json_body(
    admin: httpx.AsyncClient,
) -> None:
    """Like ``PUT /api/settings``: 501 whatever JSON is sent; 415 for a non-JSON body."""
    response = await admin.put("/api/_test/read-only", json={"logLevel": "debug"})
    _assert_error(response, 501, "read_only")
    not_json = await admin.put(
        "/api/_test/read-only", content=b"x", headers={"content-type": "text/plain"}
    )
    _assert_error(not_json, 415, "unsupported_media_type")


async def test_put_settings_is_still_501_for_a_json_body(admin: httpx.AsyncClient) -> None:
    for method in ("PUT", "PATCH"):
        response = await admin.request(method, "/api/settings", json={"logLevel": "debug"})
        assert response.status_code == 501, (method, response.text)
        assert response.json()["statusCode"] == 501


# ----------------------------------------------------------------------------- 400 / 405 / 422


async def test_malformed_json_is_400_with_the_position(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/_test/notes",
        content=b'{\n  "text": oops\n}',
        headers={"content-type": "application/json"},
    )
    body = _assert_error(response, 400, "malformed_json")
    assert "line 2, column 11" in body["message"]
    assert "char 12" in body["message"]

    truncated = await admin.post(
        "/api/_test/notes", content=b'{"text": "a', headers={"content-type": "application/json"}
    )
    _assert_error(truncated, 400, "malformed_json")

    not_utf8 = await admin.post(
        "/api/_test/notes",
        content=b'{"text": "\xff"}',
        headers={"content-type": "application/json"},
    )
    _assert_error(not_utf8, 400, "malformed_json")


async def test_well_formed_but_invalid_json_is_422(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/api/_test/notes", json={"text": 5})
    body = _assert_error(response, 422, "validation_failed")
    assert body["errors"][0]["path"] == "text"


async def test_405_keeps_the_allow_header(admin: httpx.AsyncClient) -> None:
    response = await admin.delete("/api/health")
    body = _assert_error(response, 405, "method_not_allowed")
    assert body["message"] == "Cannot DELETE /api/health"
    assert response.headers["allow"] == "GET"


async def test_http_exception_headers_are_kept(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/api/_test/teapot")
    body = _assert_error(response, 418, "error")
    assert body["message"] == "short and stout"
    assert response.headers["x-tea"] == "earl grey"


async def test_401_is_in_the_error_model(api: ApiHarness) -> None:
    response = await api.client().get("/api/plugins")
    _assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


# ----------------------------------------------------------------------------- 500 / 503


async def test_500_carries_the_correlation_id_in_body_header_and_log(
    admin: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await admin.get("/api/_test/bug")
    body = _assert_error(response, 500, "internal_error")
    request_id = response.headers["x-request-id"]
    assert body == {
        "statusCode": 500,
        "error": "Internal Server Error",
        "message": "internal error",
        "code": "internal_error",
        "correlationId": request_id,
    }
    assert "secret" not in response.text and "sqlite" not in response.text
    lines = [line for line in _log_lines(log_stream) if line["event"] == "http.unhandled_error"]
    assert len(lines) == 1
    assert lines[0]["request_id"] == request_id
    assert lines[0]["path"] == "/api/_test/bug"
    assert lines[0]["level"] == "error"
    assert "RuntimeError: secret internal detail" in lines[0]["exception"]
    # The traceback has no frame locals: the scope's headers (the API key) stay out of logs.
    assert ADMIN_SECRET not in log_stream.getvalue()


async def test_500_is_logged_once_without_a_second_traceback(api: ApiHarness) -> None:
    """The error is answered and logged; it does not escape the app as well."""
    transport = httpx.ASGITransport(app=api.app)  # raise_app_exceptions=True
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/_test/bug", headers={"X-API-Key": api.admin_secret})
    assert response.status_code == 500


async def test_database_unavailable_is_503_without_the_address(
    admin: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await admin.get("/api/_test/db-down", headers={"X-Request-Id": "trace-db-1"})
    body = _assert_error(response, 503, "database_unavailable")
    assert body["message"] == "the main database is unavailable; try again later"
    assert body["correlationId"] == "trace-db-1"
    assert "10.1.2.3" not in response.text and "ENGINEHOST" not in response.text
    assert "retry-after" not in response.headers
    logged = [
        line for line in _log_lines(log_stream) if line["event"] == "http.database_unavailable"
    ]
    assert logged and logged[0]["request_id"] == "trace-db-1"
    assert "10.1.2.3" in logged[0]["error"]  # the operator sees where


async def test_database_busy_is_503_with_retry_after(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/api/_test/db-busy")
    body = _assert_error(response, 503, "database_busy")
    assert body["message"] == "the data database is busy; retry the request"
    assert response.headers["retry-after"] == "1"


async def test_a_real_route_over_a_dead_database_is_503(tmp_path: Path) -> None:
    """The main database disposed and pointed at a closed PostgreSQL port."""
    from enginehost.core.db import Database, DatabaseRole
    from enginehost.core.db.urls import resolve_targets
    from enginehost.core.settings import Settings, load_settings

    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        assert (await admin.get("/api/plugins")).status_code == 200
        dead: Settings = load_settings(
            main_database_url="postgresql://app:hunter2@127.0.0.1:1/enginehost",
            db_connect_timeout=1,
        )
        target = resolve_targets(dead, tmp_path)[DatabaseRole.MAIN]
        api.databases.main.dispose()
        api.databases.main.engine = Database(target, dead).engine
        # A key not seen yet: authenticating it needs the main database.
        response = await api.client("ehk_" + "n" * 40).get("/api/plugins")
        body = _assert_error(response, 503, "database_unavailable")
        assert body["message"] == "the main database is unavailable; try again later"
        assert "127.0.0.1" not in response.text and "hunter2" not in response.text


# ----------------------------------------------------------------------------- request ids


async def test_a_request_id_is_made_when_none_is_sent(admin: httpx.AsyncClient) -> None:
    first = await admin.get("/api/health")
    second = await admin.get("/api/health")
    assert UUID4.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_well_formed_request_id_is_echoed(admin: httpx.AsyncClient) -> None:
    for sent in ("abc-123", "x" * 128, "req:42/retry=1", str(uuid.uuid4())):
        response = await admin.get("/api/health", headers={"X-Request-Id": sent})
        assert response.headers["x-request-id"] == sent
    error = await admin.get("/api/nope", headers={"X-Request-Id": "on-an-error"})
    assert error.status_code == 404
    assert error.headers["x-request-id"] == "on-an-error"
    rejected = await admin.post(
        "/api/_test/notes",
        content=b"x",
        headers={"content-type": "text/plain", "X-Request-Id": "on-a-415"},
    )
    assert rejected.headers["x-request-id"] == "on-a-415"


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", "tab\there", "ünïcode".encode(), "ctrl\x7f", ""],
)
async def test_a_malformed_request_id_is_replaced(
    admin: httpx.AsyncClient, sent: str | bytes
) -> None:
    headers: dict[str, Any] = {"X-Request-Id": sent}
    response = await admin.get("/api/health", headers=headers)
    assert response.status_code == 200
    assert UUID4.fullmatch(response.headers["x-request-id"])
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]


async def test_every_log_line_of_a_request_carries_its_id(
    api: ApiHarness, log_stream: io.StringIO
) -> None:
    from enginehost.core.logging import get_logger

    log = get_logger("tests.api_errors")

    @api.app.get("/api/_test/logs")
    async def logs() -> dict[str, str]:
        log.info("test.inside_the_route")
        return {}

    admin = api.client(api.admin_secret)
    await admin.get("/api/_test/logs", headers={"X-Request-Id": "trace-7"})
    log.info("test.outside_any_request")
    lines = {line["event"]: line for line in _log_lines(log_stream)}
    assert lines["test.inside_the_route"]["request_id"] == "trace-7"
    assert "request_id" not in lines["test.outside_any_request"]


def test_made_request_ids_are_random_canonical_uuid4s() -> None:
    made = [new_request_id() for _ in range(5000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text and UUID4.fullmatch(text)
    # Every random bit varies: none is stuck at 0 or 1 across the ids.
    ors = ands = int(made[0].replace("-", ""), 16)
    for text in made[1:]:
        value = int(text.replace("-", ""), 16)
        ors, ands = ors | value, ands & value
    fixed = (0xF << 76) | (0x3 << 62)  # the version and variant bits
    assert ors | fixed == (1 << 128) - 1 and ands & ~fixed == 0


async def test_the_log_context_is_restored_after_a_request(api: ApiHarness) -> None:
    """A request_id bound around the app (say, by an embedding host) is back afterwards."""
    tokens = structlog.contextvars.bind_contextvars(request_id="outer", other="kept")
    try:
        response = await api.client().get("/api/health", headers={"X-Request-Id": "inner"})
        assert response.headers["x-request-id"] == "inner"
        context = structlog.contextvars.get_contextvars()
        assert (context["request_id"], context["other"]) == ("outer", "kept")
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    assert "request_id" not in structlog.contextvars.get_contextvars()


async def test_the_request_id_is_in_the_request_state(api: ApiHarness) -> None:
    @api.app.get("/api/_test/state")
    async def state(request: Request) -> dict[str, Any]:
        return {"state": request.state.request_id, "helper": request_id(request)}

    response = await api.client().get("/api/_test/state", headers={"X-Request-Id": "st-1"})
    assert response.json() == {"state": "st-1", "helper": "st-1"}
