"""The send-text fast path answers exactly as the route does, and takes only what it
can serve that way: the same requests, sent with the fast path on and off, get the
same statuses, bodies, headers and audit entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from enginehost.core.http.fast_path import FastSendText
from tests.support.api import ApiHarness, api_harness

pytestmark = pytest.mark.anyio

CHAT = "15550001111@c.us"
VOLATILE = {"messageId", "id", "timestamp", "requestId"}


def fast_path_of(api: ApiHarness) -> FastSendText | None:
    """The app's FastSendText middleware, if installed."""
    layer: Any = api.app.middleware_stack
    for _ in range(50):
        if layer is None:
            return None
        if isinstance(layer, FastSendText):
            return layer
        layer = getattr(layer, "app", None)
    return None


async def ready(api: ApiHarness, name: str) -> str:
    session = await api.session(name)
    await api.state.manager.start(session.id)
    with anyio.fail_after(10):
        while (await api.state.sessions.resolve(session.id)).status != "ready":
            await anyio.sleep(0.02)
    return session.id


def shape(response: httpx.Response, session_id: str) -> tuple[int, Any, dict[str, str]]:
    """What must match: status, body without per-request values, telling headers."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        body["message"] = body["message"].replace(session_id, "<session id>")
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    headers = {
        name: response.headers[name]
        for name in ("content-type", "retry-after", "www-authenticate", "idempotent-replayed")
        if name in response.headers
    }
    return response.status_code, body, headers


async def scenario(tmp_path: Path, fast: bool) -> tuple[list[Any], list[Any], int]:
    """The same requests against a fresh host; their shapes, the audit entries, and how
    many requests the fast path served."""
    engines = {"sandbox": {"auto_scan_seconds": 0}}
    async with api_harness(tmp_path, http_fast_path=fast, engines=engines) as api:
        alpha = await ready(api, "alpha")
        await api.session("stopped")  # never started: not ready
        beta_only = await api.key("operator", sessions=["beta"])
        viewer = await api.key("viewer")
        admin = api.client(api.admin_secret)
        path = f"/api/sessions/{alpha}/messages/send-text"
        good = {"chatId": CHAT, "text": "hello"}
        requests: list[tuple[httpx.AsyncClient, str, dict[str, Any]]] = [
            (admin, path, {"json": good}),
            (admin, "/api/sessions/alpha/messages/send-text", {"json": good}),  # by name
            (api.client(), path, {"json": good}),  # no key
            (api.client("ehk_not-a-key-0123456789abcdefghijklmnopq"), path, {"json": good}),
            (api.client(viewer), path, {"json": good}),  # role too low
            (api.client(beta_only), path, {"json": good}),  # another session
            (admin, "/api/sessions/ghost/messages/send-text", {"json": good}),
            (admin, "/api/sessions/stopped/messages/send-text", {"json": good}),  # 409
            (admin, path, {"json": {"chatId": CHAT}}),  # text missing
            (admin, path, {"json": {**good, "extra": 1}}),  # unknown field
            (admin, path, {"json": {"chatId": "not-a-chat", "text": "x"}}),
            (
                admin,
                path,
                {"content": b"{not json", "headers": {"content-type": "application/json"}},
            ),
            (admin, path, {"content": b"text=hi", "headers": {"content-type": "text/plain"}}),
            (admin, path, {"json": good, "headers": {"Idempotency-Key": "k1"}}),
            (admin, path, {"json": good, "headers": {"Idempotency-Key": "k1"}}),  # replay
        ]
        shapes = []
        for client, url, options in requests:
            shapes.append(shape(await client.post(url, **options), alpha))
        await api.state.audit.flush()
        entries, _ = await api.state.audit.query(limit=100)
        audit = sorted(
            repr((e.action, e.outcome, e.session, e.role, e.key_prefix is None)).replace(
                alpha, "<session id>"
            )
            for e in entries
        )
        layer = fast_path_of(api)
        served = layer.served if layer is not None else 0
        assert (layer is not None) is fast
    return shapes, audit, served


async def test_the_fast_path_answers_as_the_route_does(tmp_path: Path) -> None:
    fast_shapes, fast_audit, served = await scenario(tmp_path / "fast", fast=True)
    route_shapes, route_audit, _ = await scenario(tmp_path / "route", fast=False)
    for number, (fast, route) in enumerate(zip(fast_shapes, route_shapes, strict=True)):
        assert fast == route, f"request {number}"
    assert fast_audit == route_audit
    # It served the plain sends (by id and by name) and the two the send service itself
    # refuses (a session not ready, a malformed chat id); everything else went to the
    # route.
    assert served == 4
    assert [status for status, _, _ in fast_shapes] == [
        201, 201, 401, 401, 403, 404, 404, 409, 422, 422, 422, 400, 415, 201, 201,
    ]  # fmt: skip
    assert fast_shapes[14][2]["idempotent-replayed"] == "true"  # the replay, by the route
