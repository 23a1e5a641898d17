"""Webhook routes: CRUD per session and global, write-only secrets, validation and the
registration-time address guard, roles and scopes, the index, and the routes that call
the delivery dispatcher (a fake one here; end-to-end deliveries are tested elsewhere).

Every test using the ``api`` fixture runs on both backends of the data database
(PostgreSQL when ENGINEHOST_TEST_POSTGRES_URL is set).
"""

from __future__ import annotations

import json
import socket
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from openapi_spec_validator import validate
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from enginehost.core.net.guard import AddressPolicy
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.store import SessionNotFoundError
from enginehost.core.webhooks.delivery import AttemptOutcome
from enginehost.core.webhooks.matching import WebhookIndex
from enginehost.core.webhooks.models import URL_MAX, DeadLetterRecord, WebhookRecord
from enginehost.core.webhooks.registry import (
    WebhookCreate,
    WebhookRegistry,
    WebhookUpdate,
    WebhookValidationError,
)
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

WEBHOOK_FIELDS = {
    "id",
    "sessionId",
    "url",
    "events",
    "filters",
    "active",
    "retryCount",
    "retryPolicy",
    "hasSecret",
    "headerNames",
    "createdAt",
    "updatedAt",
}
SECRET = "s3cret-never-shown-0123456789"
HEADER_VALUE = "Bearer header-value-never-shown"
LOOPBACK_ALLOWED = "127.0.0.0/8,localhost"
URL = "http://127.0.0.1:9/hook"


# ------------------------------------------------------------------------ the test app


@dataclass
class FakeDeliveries:
    """Stands in for the delivery dispatcher: records calls, answers what it is told."""

    outcome: AttemptOutcome = field(
        default_factory=lambda: AttemptOutcome(
            delivered=True,
            status=204,
            error=None,
            retryable=False,
            retry_after=None,
            duration=0.0123,
            response_excerpt="ok",
        )
    )
    letters: list[DeadLetterRecord] = field(default_factory=list)
    redriven: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def send_test(self, webhook: WebhookRecord) -> AttemptOutcome:
        self.calls.append(("send_test", webhook))
        return self.outcome

    async def dead_letters(
        self, *, webhook_id: str | None, session_id: str | None, limit: int, offset: int
    ) -> tuple[list[DeadLetterRecord], int]:
        self.calls.append(("dead_letters", (webhook_id, session_id, limit, offset)))
        return self.letters[offset : offset + limit], len(self.letters)

    async def redrive(self, *, ids: list[str] | None, webhook_id: str | None) -> int:
        self.calls.append(("redrive", (ids, webhook_id)))
        return self.redriven


def with_webhooks(api: ApiHarness, deliveries: Any = None) -> WebhookRegistry:
    """The host's webhook registry; ``deliveries`` (a fake) stands in for the dispatcher
    in the routes when given."""
    if deliveries is not None:
        api.state.deliveries = deliveries
    registry = api.state.webhooks
    assert registry is not None
    return registry


@pytest.fixture
def deliveries() -> FakeDeliveries:
    return FakeDeliveries()


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str, deliveries: FakeDeliveries
) -> AsyncIterator[ApiHarness]:
    async with api_harness(
        tmp_path, database_url=database_url, webhook_allowed_hosts=LOOPBACK_ALLOWED
    ) as harness:
        with_webhooks(harness, deliveries)
        yield harness


@pytest.fixture
def registry(api: ApiHarness) -> WebhookRegistry:
    return with_webhooks(api)


@pytest.fixture
async def alpha(api: ApiHarness) -> SessionRecord:
    return await api.session("alpha")


@pytest.fixture
async def beta(api: ApiHarness) -> SessionRecord:
    return await api.session("beta")


@pytest.fixture
def admin(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(api.admin_secret)


def hooks_url(session: str | None, *rest: str) -> str:
    base = "/api/webhooks" if session is None else f"/api/sessions/{session}/webhooks"
    return "/".join([base, *rest])


async def create(client: httpx.AsyncClient, session: str | None, **fields: Any) -> dict[str, Any]:
    payload = {"url": URL, "events": ["message.received"], **fields}
    response = await client.post(hooks_url(session), json=payload)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def stored(api: ApiHarness, webhook_id: str) -> WebhookRecord | None:
    with Session(api.databases.data.engine) as session:
        return session.get(WebhookRecord, webhook_id)


# ------------------------------------------------------------------------------ CRUD


async def test_crud_per_session(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    created = await create(
        admin,
        "alpha",
        events=["message.received", "session.status", "message.received"],
        secret=SECRET,
        headers={"Authorization": HEADER_VALUE, "x-trace": "1"},
        filters={"chatIds": ["123@c.us"], "fromMe": False},
        retryCount=3,
        retryPolicy={"baseSeconds": 2, "capSeconds": 60},
    )
    assert set(created) == WEBHOOK_FIELDS
    assert created["sessionId"] == alpha.id  # stored under the id, named by the name
    assert created["url"] == URL
    assert created["events"] == ["message.received", "session.status"]  # repeats dropped
    assert created["filters"] == {
        "chatIds": ["123@c.us"],
        "direction": None,
        "fromMe": False,
        "messageTypes": None,
        "isGroup": None,
    }
    assert created["active"] is True
    assert (created["retryCount"], created["retryPolicy"]) == (
        3,
        {"baseSeconds": 2.0, "capSeconds": 60.0},
    )
    assert created["hasSecret"] is True
    assert created["headerNames"] == ["Authorization", "x-trace"]
    assert created["createdAt"] == created["updatedAt"]
    assert datetime.fromisoformat(created["createdAt"]).utcoffset() is not None

    assert (await admin.get(hooks_url(alpha.id))).json() == [created]
    fetched = await admin.get(hooks_url("alpha", created["id"]))
    assert fetched.status_code == 200
    assert fetched.json() == created

    updated = await admin.put(
        hooks_url(alpha.id, created["id"]),
        json={"events": ["*"], "active": False, "retryPolicy": None, "filters": None},
    )
    assert updated.status_code == 200, updated.text
    changed = updated.json()
    assert (changed["events"], changed["active"], changed["retryPolicy"]) == (["*"], False, None)
    assert set(changed["filters"].values()) == {None}
    # Untouched fields stay.
    assert (changed["url"], changed["retryCount"], changed["hasSecret"]) == (URL, 3, True)
    assert changed["headerNames"] == ["Authorization", "x-trace"]
    assert changed["createdAt"] == created["createdAt"]
    assert changed["updatedAt"] >= created["updatedAt"]

    deleted = await admin.delete(hooks_url("alpha", created["id"]))
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert stored(api, created["id"]) is None
    assert (await admin.get(hooks_url("alpha"))).json() == []
    assert_error(await admin.get(hooks_url("alpha", created["id"])), 404, "webhook_not_found")
    assert_error(await admin.delete(hooks_url("alpha", created["id"])), 404, "webhook_not_found")


async def test_global_webhooks(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    own = await create(admin, "alpha")
    everywhere = await create(admin, None, events=["*"])
    assert everywhere["sessionId"] is None

    listed = (await admin.get("/api/webhooks")).json()
    assert [w["id"] for w in listed] == [own["id"], everywhere["id"]]
    # A session's list has its own webhooks only.
    assert [w["id"] for w in (await admin.get(hooks_url("alpha"))).json()] == [own["id"]]

    # /webhooks/{id} reaches both kinds; a session path never reaches a global one.
    assert (await admin.get(hooks_url(None, everywhere["id"]))).json() == everywhere
    assert (await admin.get(hooks_url(None, own["id"]))).json() == own
    assert_error(await admin.get(hooks_url("alpha", everywhere["id"])), 404, "webhook_not_found")

    changed = await admin.put(hooks_url(None, everywhere["id"]), json={"url": URL + "2"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["url"] == URL + "2"
    moved = await admin.put(hooks_url(None, own["id"]), json={"active": False})
    assert moved.json()["active"] is False
    assert moved.json()["sessionId"] == alpha.id  # the owner never changes

    assert (await admin.delete(hooks_url(None, everywhere["id"]))).status_code == 204
    assert stored(api, everywhere["id"]) is None
    assert_error(await admin.delete(hooks_url(None, everywhere["id"])), 404, "webhook_not_found")
    assert [w["id"] for w in (await admin.get("/api/webhooks")).json()] == [own["id"]]


async def test_secret_and_headers_are_write_only(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, registry: WebhookRegistry
) -> None:
    created = await create(admin, "alpha", secret=SECRET, headers={"Authorization": HEADER_VALUE})
    webhook_id = created["id"]
    answers: list[httpx.Response] = [
        await admin.get(hooks_url("alpha")),
        await admin.get(hooks_url("alpha", webhook_id)),
        await admin.get("/api/webhooks"),
        await admin.get(hooks_url(None, webhook_id)),
        await admin.put(hooks_url("alpha", webhook_id), json={"active": False}),
        await admin.put(hooks_url(None, webhook_id), json={"active": True}),
        await admin.post(hooks_url("alpha", webhook_id, "test")),
        # Errors with the secret and header values in the request body.
        await admin.post(
            hooks_url("alpha"),
            json={"url": "ftp://x", "events": ["*"], "secret": SECRET, "headers": {"A": "b"}},
        ),
        await admin.post(
            hooks_url("alpha"),
            json={"url": URL, "events": ["*"], "headers": {"Host": HEADER_VALUE}},
        ),
        await admin.post(
            hooks_url("alpha"),
            json={"url": URL, "events": ["*"], "headers": {"A": HEADER_VALUE + "\n"}},
        ),
        await admin.put(hooks_url("alpha", webhook_id), json={"secret": SECRET[:10]}),
        await admin.put(hooks_url("alpha", webhook_id), json={"secret": SECRET, "nope": 1}),
    ]
    answers.append(await admin.get("/api/audit"))
    for response in answers:
        assert response.status_code < 500, response.text
        assert SECRET not in response.text and SECRET[:10] not in response.text
        assert HEADER_VALUE not in response.text and "header-value" not in response.text
    first = answers[1].json()
    assert first["hasSecret"] is True and first["headerNames"] == ["Authorization"]
    assert "secret" not in first and "headers" not in first

    # The values are kept for deliveries.
    record = await registry.get(webhook_id, alpha.id)
    assert (record.secret, record.headers) == (SECRET, {"Authorization": HEADER_VALUE})


async def test_update_keeps_removes_or_replaces_the_secret_and_headers(
    admin: httpx.AsyncClient, alpha: SessionRecord, registry: WebhookRegistry
) -> None:
    created = await create(admin, "alpha", secret=SECRET, headers={"A": "1"})
    path = hooks_url("alpha", created["id"])

    async def after(change: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
        response = await admin.put(path, json=change)
        assert response.status_code == 200, response.text
        record = await registry.get(created["id"], alpha.id)
        body = response.json()
        assert body["hasSecret"] is (record.secret is not None)
        assert body["headerNames"] == sorted(record.headers)
        return record.secret, record.headers

    assert await after({"url": URL + "?v=2"}) == (SECRET, {"A": "1"})  # absent: kept
    assert await after({"secret": "another-secret-0123456789"}) == (
        "another-secret-0123456789",
        {"A": "1"},
    )
    assert await after({"headers": {"B": "2", "C": "3"}}) == (
        "another-secret-0123456789",
        {"B": "2", "C": "3"},
    )
    assert await after({"secret": None, "headers": None}) == (None, {})  # null: removed


async def test_update_needs_a_field_and_refuses_nulls(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    created = await create(admin, "alpha")
    path = hooks_url("alpha", created["id"])
    assert_error(await admin.put(path, json={}), 422, "nothing_to_update")
    for name in ("url", "events", "active"):
        body = assert_error(await admin.put(path, json={name: None}), 422, "validation_failed")
        assert body["errors"] == [{"path": name, "message": "must not be null"}]
    assert (await admin.get(path)).json() == created


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"url": "ftp://example.com/x"}, "url", "http:// or https://"),
        ({"url": "example.com/hook"}, "url", "http:// or https://"),
        ({"url": "http:///hook"}, "url", "must name a host"),
        ({"url": "http://[::1/hook"}, "url", "not a valid URL"),
        ({"url": "http://127.0.0.1:99999/"}, "url", "not a valid URL"),
        ({"url": "http://user:pw@127.0.0.1/"}, "url", "put credentials in `headers`"),
        ({"url": "http://token@127.0.0.1/"}, "url", "user name or password"),
        ({"url": "http://127.0.0.1/a b"}, "url", "spaces or control characters"),
        ({"url": "http://127.0.0.1/" + "a" * URL_MAX}, "url", f"at most {URL_MAX}"),
        ({"events": []}, "events", "at least 1"),
        ({"events": ["message.recieved"]}, "events", "unknown event 'message.recieved'"),
        ({"events": ["*", "message.sent"]}, "events", "give it alone"),
        ({"events": "message.sent"}, "events", "valid list"),
        ({"secret": "too-short"}, "secret", "at least 16"),
        ({"secret": "x" * 513}, "secret", "at most 512"),
        ({"secret": "sixteen-chars-or-more\x00"}, "secret", "NUL"),
        ({"headers": {"X Foo": "1"}}, "headers", "'X Foo' is not a header name"),
        ({"headers": {"content-type": "text/plain"}}, "headers", "set by the host"),
        ({"headers": {"User-Agent": "x"}}, "headers", "set by the host"),
        ({"headers": {"X-OpenWA-Custom": "x"}}, "headers", "X-OpenWA-*"),
        ({"headers": {"x-enginehost-id": "x"}}, "headers", "set by the host"),
        ({"headers": {"A": "1", "a": "2"}}, "headers", "given twice"),
        ({"headers": {"A": "line\r\nInjected: yes"}}, "headers", "printable ASCII"),
        ({"headers": {"A": "x" * 1025}}, "headers", "over 1024"),
        ({"headers": {f"H{i}": "v" for i in range(21)}}, "headers", "at most 20"),
        ({"filters": {"chatIds": ["nope"]}}, "filters.chatIds", "not a chat id"),
        ({"filters": {"chatIds": ["1\x00@c.us"]}}, "filters", "control characters"),
        ({"filters": {"direction": "sideways"}}, "filters.direction", "incoming"),
        ({"filters": {"messageTypes": ["gif"]}}, "filters", "unknown type 'gif'"),
        ({"filters": {"colour": "red"}}, "filters.colour", "Extra inputs"),
        ({"filters": "all"}, "filters", "valid dictionary"),
        ({"retryCount": -1}, "retryCount", "greater than or equal to 0"),
        ({"retryCount": 101}, "retryCount", "less than or equal to 100"),
        ({"retryPolicy": {"baseSeconds": 0}}, "retryPolicy.baseSeconds", "greater than 0"),
        ({"retryPolicy": {"capSeconds": 86401}}, "retryPolicy.capSeconds", "86400"),
        ({"retryPolicy": {"baseSeconds": 10, "capSeconds": 5}}, "retryPolicy", "capSeconds"),
        ({"active": "maybe"}, "active", "valid boolean"),
        ({"sessionId": "other"}, "sessionId", "Extra inputs"),
    ],
)
async def test_invalid_fields_are_422_with_the_field_path(
    api: ApiHarness,
    admin: httpx.AsyncClient,
    alpha: SessionRecord,
    change: dict[str, Any],
    path: str,
    words: str,
) -> None:
    existing = await create(admin, "alpha")
    payload = {"url": URL, "events": ["message.received"], **change}
    answers = [
        await admin.post(hooks_url("alpha"), json=payload),
        await admin.post(hooks_url(None), json=payload),
        await admin.put(hooks_url("alpha", existing["id"]), json=change),
    ]
    for response in answers:
        body = assert_error(response, 422, "validation_failed")
        assert [problem["path"] for problem in body["errors"]] == [path], body
        assert words in body["message"], body
    assert [w["id"] for w in (await admin.get("/api/webhooks")).json()] == [existing["id"]]


async def test_loopback_is_refused_without_the_allow_list(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:  # no ENGINEHOST_WEBHOOK_ALLOWED_HOSTS
        with_webhooks(api)
        admin = api.client(api.admin_secret)
        for url, address in [
            ("http://127.0.0.1:8080/hook", "127.0.0.1"),
            ("http://localhost/hook", ""),
            ("http://[::1]/hook", "::1"),
            ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
            ("http://10.1.2.3/hook", "10.1.2.3"),
            ("http://192.168.0.10/hook", "192.168.0.10"),
            ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
            ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
            ("http://224.0.0.1/", "224.0.0.1"),
            ("http://0.0.0.0/", "0.0.0.0"),
        ]:
            response = await admin.post("/api/webhooks", json={"url": url, "events": ["*"]})
            body = assert_error(response, 422, "validation_failed")
            assert body["errors"][0]["path"] == "url", body
            assert address in body["message"], body
            assert "ENGINEHOST_WEBHOOK_ALLOWED_HOSTS" in body["message"], body
        # A public address is fine (a literal: no DNS needed).
        accepted = await admin.post(
            "/api/webhooks", json={"url": "https://1.1.1.1/hook", "events": ["*"]}
        )
        assert accepted.status_code == 201, accepted.text


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ("127.0.0.0/8", "http://127.0.0.1:8080/hook"),
        ("localhost", "http://localhost:8080/hook"),
        ("LOCALHOST.", "http://LocalHost:8080/hook"),
        ("10.0.0.0/8", "http://10.1.2.3/hook"),
    ],
)
async def test_the_allow_list_lets_private_hosts_in(tmp_path: Path, allowed: str, url: str) -> None:
    async with api_harness(tmp_path, webhook_allowed_hosts=allowed) as api:
        with_webhooks(api)
        admin = api.client(api.admin_secret)
        response = await admin.post("/api/webhooks", json={"url": url, "events": ["*"]})
        assert response.status_code == 201, response.text
        # Another private range stays refused.
        other = await admin.post(
            "/api/webhooks", json={"url": "http://192.168.1.1/", "events": ["*"]}
        )
        assert_error(other, 422, "validation_failed")


FakeResolver = Callable[..., Any]


def resolving_to(*addresses: str) -> FakeResolver:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return getaddrinfo


async def test_names_are_resolved_at_registration(
    admin: httpx.AsyncClient, alpha: SessionRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def create_for(url: str) -> httpx.Response:
        return await admin.post(hooks_url("alpha"), json={"url": url, "events": ["*"]})

    # One private address among public ones refuses the name (rebinding-style records).
    monkeypatch.setattr(anyio, "getaddrinfo", resolving_to("93.184.215.14", "10.0.0.7"))
    body = assert_error(await create_for("https://hooks.example/x"), 422, "validation_failed")
    assert "'hooks.example' resolves to 10.0.0.7" in body["message"]

    monkeypatch.setattr(anyio, "getaddrinfo", resolving_to("93.184.215.14"))
    assert (await create_for("https://hooks.example/x")).status_code == 201

    async def unknown(host: str, port: int, **_: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(anyio, "getaddrinfo", unknown)
    body = assert_error(await create_for("https://nowhere.invalid/x"), 422, "validation_failed")
    assert body["errors"] == [{"path": "url", "message": "'nowhere.invalid' does not resolve"}]


async def test_a_slow_resolver_is_a_bounded_422(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = WebhookRegistry(
        api.databases.data, WebhookIndex(), policy=AddressPolicy(), resolve_timeout=0.2
    )

    async def hangs(host: str, port: int, **_: Any) -> list[Any]:
        await anyio.sleep(30)
        return []

    monkeypatch.setattr(anyio, "getaddrinfo", hangs)
    spec = WebhookCreate(url="https://slow.example/x", events=["*"])
    with anyio.fail_after(5):
        with pytest.raises(WebhookValidationError) as caught:
            await registry.create(None, spec)
    assert caught.value.status_code == 422
    assert caught.value.extra == {
        "errors": [{"path": "url", "message": "'slow.example' did not resolve within 0.2 s"}]
    }
    assert len(registry.index) == 0


# ------------------------------------------------------------------- roles and scopes


async def test_scoped_keys_reach_only_their_sessions_webhooks(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, beta: SessionRecord
) -> None:
    mine = await create(admin, "alpha")
    theirs = await create(admin, "beta")
    everywhere = await create(admin, None)
    scoped = api.client(await api.key("operator", sessions=["alpha"]))

    listed = (await scoped.get("/api/webhooks")).json()
    assert [w["id"] for w in listed] == [mine["id"]]
    assert (await scoped.get(hooks_url(None, mine["id"]))).json() == mine
    assert (await scoped.put(hooks_url(None, mine["id"]), json={"active": False})).is_success

    for other in (theirs, everywhere):
        webhook_id = other["id"]
        assert_error(await scoped.get(hooks_url(None, webhook_id)), 404, "webhook_not_found")
        assert_error(
            await scoped.put(hooks_url(None, webhook_id), json={"active": False}),
            404,
            "webhook_not_found",
        )
        assert_error(await scoped.delete(hooks_url(None, webhook_id)), 404, "webhook_not_found")
        assert_error(
            await scoped.post(hooks_url(None, webhook_id, "test")), 404, "webhook_not_found"
        )
        # Through the own session's path, another's webhook does not exist either.
        assert_error(await scoped.get(hooks_url("alpha", webhook_id)), 404, "webhook_not_found")
    for path in (hooks_url("beta"), hooks_url("beta", theirs["id"])):
        assert_error(await scoped.get(path), 404, "session_not_found")
    assert_error(
        await scoped.post(hooks_url("beta"), json={"url": URL, "events": ["*"]}),
        404,
        "session_not_found",
    )
    assert_error(
        await scoped.post("/api/webhooks", json={"url": URL, "events": ["*"]}),
        403,
        "forbidden_role",
    )
    assert_error(await scoped.get("/api/webhooks/dead-letters"), 403, "forbidden_role")
    # Nothing of the others' changed.
    assert (await admin.get(hooks_url(None, theirs["id"]))).json() == theirs
    assert (await admin.get(hooks_url(None, everywhere["id"]))).json() == everywhere


async def test_global_webhooks_need_an_admin(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    mine = await create(admin, "alpha")
    everywhere = await create(admin, None)
    operator = api.client(await api.key("operator"))
    # An unlimited operator sees every session's webhooks, not the global ones.
    assert [w["id"] for w in (await operator.get("/api/webhooks")).json()] == [mine["id"]]
    assert (await operator.get(hooks_url(None, mine["id"]))).status_code == 200
    for response in (
        await operator.get(hooks_url(None, everywhere["id"])),
        await operator.put(hooks_url(None, everywhere["id"]), json={"active": False}),
        await operator.delete(hooks_url(None, everywhere["id"])),
        await operator.post(hooks_url(None, everywhere["id"], "test")),
        await operator.post("/api/webhooks", json={"url": URL, "events": ["*"]}),
    ):
        assert_error(response, 403, "forbidden_role")
    assert (await admin.get(hooks_url(None, everywhere["id"]))).json() == everywhere


async def test_a_viewer_reads_but_cannot_write(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, deliveries: FakeDeliveries
) -> None:
    created = await create(admin, "alpha")
    viewer = api.client(await api.key("viewer"))
    assert (await viewer.get(hooks_url("alpha"))).json() == [created]
    assert (await viewer.get(hooks_url("alpha", created["id"]))).json() == created
    assert (await viewer.get(hooks_url(None, created["id"]))).json() == created
    for response in (
        await viewer.post(hooks_url("alpha"), json={"url": URL, "events": ["*"]}),
        await viewer.put(hooks_url("alpha", created["id"]), json={"active": False}),
        await viewer.delete(hooks_url("alpha", created["id"])),
        await viewer.post(hooks_url("alpha", created["id"], "test")),
        await viewer.put(hooks_url(None, created["id"]), json={"active": False}),
        await viewer.delete(hooks_url(None, created["id"])),
        await viewer.post(hooks_url(None, created["id"], "test")),
    ):
        assert_error(response, 403, "forbidden_role")
    assert_error(await api.client().get(hooks_url("alpha")), 401, "unauthorized")
    assert deliveries.calls == []
    assert (await admin.get(hooks_url("alpha", created["id"]))).json() == created


# ---------------------------------------------------------------- storage and the index


async def test_deleting_a_session_deletes_its_webhooks(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, beta: SessionRecord
) -> None:
    doomed = await create(admin, "alpha")
    kept = await create(admin, "beta")
    everywhere = await create(admin, None)
    assert (await admin.delete("/api/sessions/alpha")).status_code == 204
    assert stored(api, doomed["id"]) is None  # the database's cascade
    assert stored(api, kept["id"]) is not None
    assert stored(api, everywhere["id"]) is not None
    listed = [w["id"] for w in (await admin.get("/api/webhooks")).json()]
    assert listed == [kept["id"], everywhere["id"]]


async def test_the_index_follows_committed_changes(
    admin: httpx.AsyncClient, alpha: SessionRecord, registry: WebhookRegistry
) -> None:
    index = registry.index
    created = await create(
        admin,
        "alpha",
        events=["message.sent"],
        secret=SECRET,
        headers={"A": "1"},
        filters={"isGroup": True},
        retryCount=0,
    )
    snapshot = index.get(created["id"])
    assert snapshot is not None
    assert (snapshot.session_id, snapshot.url, snapshot.events) == (
        alpha.id,
        URL,
        frozenset({"message.sent"}),
    )
    assert (snapshot.secret, dict(snapshot.headers)) == (SECRET, {"A": "1"})
    assert (snapshot.is_group, snapshot.max_attempts, snapshot.active) == (True, 1, True)
    assert [s.id for s in index.matching("message.sent", alpha.id, {"chatId": "1@g.us"})] == [
        created["id"]
    ]
    assert index.matching("message.sent", alpha.id, {"chatId": "1@c.us"}) == []

    path = hooks_url("alpha", created["id"])
    await admin.put(path, json={"events": ["*"], "active": False, "secret": None})
    snapshot = index.get(created["id"])
    assert snapshot is not None
    assert (snapshot.events, snapshot.active, snapshot.secret) == (None, False, None)

    everywhere = await create(admin, None, events=["*"])
    assert index.get(everywhere["id"]) is not None
    assert len(index) == 2

    await admin.delete(path)
    assert index.get(created["id"]) is None
    assert len(index) == 1

    # Refused changes leave the index as it was.
    before = index.get(everywhere["id"])
    bad = await admin.put(hooks_url(None, everywhere["id"]), json={"url": "ftp://x"})
    assert bad.status_code == 422
    assert index.get(everywhere["id"]) is before


async def test_the_index_is_untouched_when_the_transaction_fails(
    api: ApiHarness,
    alpha: SessionRecord,
    registry: WebhookRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = api.databases.data
    kept = await registry.create(alpha.id, WebhookCreate(url=URL, events=["*"]))
    original = database.run_sync

    def fails_at_commit(work: Callable[..., Any], *args: Any, readonly: bool = False) -> Any:
        def then_fails(session: Session, *more: Any) -> Any:
            work(session, *more)
            raise RuntimeError("the commit fails")

        return original(then_fails, *args, readonly=readonly)

    monkeypatch.setattr(database, "run_sync", fails_at_commit)
    with pytest.raises(RuntimeError, match="the commit fails"):
        await registry.create(alpha.id, WebhookCreate(url=URL + "2", events=["*"]))
    with pytest.raises(RuntimeError, match="the commit fails"):
        await registry.update(kept.id, alpha.id, WebhookUpdate(active=False))
    with pytest.raises(RuntimeError, match="the commit fails"):
        await registry.delete(kept.id, alpha.id)
    monkeypatch.undo()

    assert len(registry.index) == 1
    snapshot = registry.index.get(kept.id)
    assert snapshot is not None and snapshot.active is True
    assert [w.id for w in await registry.list(include_global=True)] == [kept.id]
    assert (await registry.get(kept.id, alpha.id)).active is True


async def test_load_index_reads_every_webhook(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, registry: WebhookRegistry
) -> None:
    ids = {(await create(admin, "alpha"))["id"], (await create(admin, None))["id"]}
    fresh = WebhookRegistry(api.databases.data, WebhookIndex(), policy=registry.policy)
    assert await fresh.load_index() == 2
    assert {s for s in ids if fresh.index.get(s) is not None} == ids


async def test_a_session_gone_meanwhile_is_not_found(
    registry: WebhookRegistry, alpha: SessionRecord
) -> None:
    spec = WebhookCreate(url=URL, events=["*"])
    with pytest.raises(SessionNotFoundError):
        await registry.create("00000000-0000-0000-0000-000000000000", spec)
    assert len(registry.index) == 0
    assert await registry.list(include_global=True) == []


async def test_database_errors_never_quote_the_row(
    registry: WebhookRegistry, alpha: SessionRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's own message quotes the statement's parameters, the secret and header
    values among them; what leaves the registry (and reaches the error log) does not."""

    def refuses(self: Session, *args: Any, **kwargs: Any) -> None:
        raise IntegrityError(
            "INSERT INTO webhooks ...", {"secret": SECRET, "headers": HEADER_VALUE}, ValueError()
        )

    assert SECRET in str(IntegrityError("x", {"secret": SECRET}, ValueError()))
    monkeypatch.setattr(Session, "flush", refuses)
    spec = WebhookCreate(url=URL, events=["*"], secret=SECRET, headers={"A": HEADER_VALUE})
    with pytest.raises(RuntimeError) as caught:
        await registry.create(alpha.id, spec)
    logged = "".join(traceback.format_exception(caught.value))
    assert "the database refused the webhook: ValueError" in logged
    assert SECRET not in logged and HEADER_VALUE not in logged


@pytest.mark.parametrize(
    "webhook_id", ["00000000-0000-0000-0000-000000000000", "x" * 37, "a\x00b", "%00", "é", "a b"]
)
async def test_unknown_ids_are_404(
    admin: httpx.AsyncClient, alpha: SessionRecord, webhook_id: str
) -> None:
    await create(admin, "alpha")
    quoted = quote(webhook_id, safe="")
    for path in (hooks_url("alpha", quoted), hooks_url(None, quoted)):
        assert_error(await admin.get(path), 404, "webhook_not_found")
        assert_error(await admin.put(path, json={"active": False}), 404, "webhook_not_found")
        assert_error(await admin.delete(path), 404, "webhook_not_found")
        assert_error(await admin.post(path + "/test"), 404, "webhook_not_found")


# ------------------------------------------------------------ test, dead letters, redrive


async def test_test_deliveries_go_through_the_dispatcher(
    api: ApiHarness,
    admin: httpx.AsyncClient,
    alpha: SessionRecord,
    deliveries: FakeDeliveries,
) -> None:
    created = await create(admin, "alpha", secret=SECRET, active=False)
    for path in (hooks_url("alpha", created["id"], "test"), hooks_url(None, created["id"], "test")):
        response = await admin.post(path)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "delivered": True,
            "statusCode": 204,
            "error": None,
            "durationMs": 12.3,
            "responseExcerpt": "ok",
            "retryable": False,
        }
    assert [(name, webhook.id, webhook.secret) for name, webhook in deliveries.calls] == [
        ("send_test", created["id"], SECRET),
        ("send_test", created["id"], SECRET),
    ]

    deliveries.outcome = AttemptOutcome(
        delivered=False,
        status=None,
        error="connection refused by 127.0.0.1",
        retryable=True,
        retry_after=None,
        duration=0.5,
        response_excerpt="",
    )
    failed = (await admin.post(hooks_url("alpha", created["id"], "test"))).json()
    assert (failed["delivered"], failed["statusCode"], failed["retryable"]) == (False, None, True)
    assert failed["error"] == "connection refused by 127.0.0.1"
    assert failed["durationMs"] == 500.0


async def test_without_a_dispatcher_delivery_routes_are_503(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    created = await create(admin, "alpha")
    api.state.deliveries = None
    for response in (
        await admin.post(hooks_url("alpha", created["id"], "test")),
        await admin.post(hooks_url(None, created["id"], "test")),
        await admin.get("/api/webhooks/dead-letters"),
        await admin.post("/api/webhooks/dead-letters/redrive", json={"all": True}),
    ):
        body = assert_error(response, 503, "unavailable")
        assert body["message"] == "webhook delivery is not running"
    # The registrations themselves still work.
    assert (await admin.get(hooks_url("alpha", created["id"]))).status_code == 200


async def test_dead_letters_are_listed_for_admins(
    api: ApiHarness,
    admin: httpx.AsyncClient,
    alpha: SessionRecord,
    deliveries: FakeDeliveries,
) -> None:
    created = await create(admin, "alpha")
    dead_at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    body = {"event": "message.received", "data": {"chatId": "1@c.us"}}
    deliveries.letters = [
        DeadLetterRecord(
            id="d1",
            webhook_id=created["id"],
            session_id=alpha.id,
            event="message.received",
            lane="1@c.us",
            idempotency_key="k1",
            body=json.dumps(body),
            attempts=10,
            last_error="HTTP 500",
            last_status=500,
            created_at=dead_at,
            dead_at=dead_at,
        )
    ]
    response = await admin.get(
        "/api/webhooks/dead-letters",
        params={"webhookId": created["id"], "sessionId": "alpha", "limit": 10, "offset": 0},
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["total"], page["limit"], page["offset"]) == (1, 10, 0)
    (letter,) = page["deadLetters"]
    assert letter == {
        "id": "d1",
        "webhookId": created["id"],
        "sessionId": alpha.id,
        "event": "message.received",
        "idempotencyKey": "k1",
        "attempts": 10,
        "lastError": "HTTP 500",
        "lastStatus": 500,
        "createdAt": letter["createdAt"],
        "deadAt": letter["deadAt"],
        "payload": body,
    }
    assert datetime.fromisoformat(letter["deadAt"]) == dead_at
    assert datetime.fromisoformat(letter["createdAt"]) == dead_at  # what the fake stored
    # The session's name became its id for the dispatcher.
    assert deliveries.calls == [("dead_letters", (created["id"], alpha.id, 10, 0))]

    bad = await admin.get("/api/webhooks/dead-letters", params={"limit": 0})
    assert assert_error(bad, 422, "validation_failed")["errors"][0]["path"] == "query.limit"
    operator = api.client(await api.key("operator"))
    assert_error(await operator.get("/api/webhooks/dead-letters"), 403, "forbidden_role")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"all": True}, (None, None)),
        ({"ids": ["d1", "d2"]}, (["d1", "d2"], None)),
        ({"webhookId": "w1"}, (None, "w1")),
        ({"ids": ["d1"], "webhookId": "w1"}, (["d1"], "w1")),
    ],
)
async def test_redrive(
    admin: httpx.AsyncClient,
    deliveries: FakeDeliveries,
    body: dict[str, Any],
    expected: tuple[Any, Any],
) -> None:
    deliveries.redriven = 7
    response = await admin.post("/api/webhooks/dead-letters/redrive", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"redriven": 7}
    assert deliveries.calls == [("redrive", expected)]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "body"),
        ({"all": False}, "body"),
        ({"all": True, "ids": ["d1"]}, "body"),
        ({"ids": []}, "ids"),
        ({"ids": ["x" * 37]}, "ids.0"),
        ({"webhookId": ""}, "webhookId"),
        ({"every": True}, "every"),
    ],
)
async def test_redrive_needs_a_clear_choice(
    api: ApiHarness, admin: httpx.AsyncClient, deliveries: FakeDeliveries, body: Any, path: str
) -> None:
    response = await admin.post("/api/webhooks/dead-letters/redrive", json=body)
    assert assert_error(response, 422, "validation_failed")["errors"][0]["path"] == path
    assert deliveries.calls == []
    operator = api.client(await api.key("operator"))
    refused = await operator.post("/api/webhooks/dead-letters/redrive", json={"all": True})
    assert_error(refused, 403, "forbidden_role")


# ------------------------------------------------------------------------- the document


async def test_the_routes_are_documented(api: ApiHarness) -> None:
    spec = api.app.openapi()
    validate(spec)
    paths = spec["paths"]
    for path, methods in [
        ("/api/sessions/{sessionId}/webhooks", {"get", "post"}),
        ("/api/sessions/{sessionId}/webhooks/{webhookId}", {"get", "put", "delete"}),
        ("/api/sessions/{sessionId}/webhooks/{webhookId}/test", {"post"}),
        ("/api/webhooks", {"get", "post"}),
        ("/api/webhooks/dead-letters", {"get"}),
        ("/api/webhooks/dead-letters/redrive", {"post"}),
        ("/api/webhooks/{webhookId}", {"get", "put", "delete"}),
        ("/api/webhooks/{webhookId}/test", {"post"}),
    ]:
        assert set(paths[path]) == methods, path
        for method in methods:
            operation = paths[path][method]
            assert operation["description"].startswith("Requires an API key"), (path, method)
            assert {"401", "403", "500", "503"} <= set(operation["responses"]), (path, method)
            if "{" in path:
                assert "404" in operation["responses"], (path, method)
    schemas = spec["components"]["schemas"]
    out = next(schema for name, schema in schemas.items() if name.startswith("WebhookOut"))
    assert "secret" not in out["properties"] and "headers" not in out["properties"]
    assert {"hasSecret", "headerNames"} <= set(out["properties"])
