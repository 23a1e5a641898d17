"""The webjs engine after the QR, at the sidecar protocol boundary: the host's API with
a scripted sidecar (tests/support/scripted_webjs.py) playing what whatsapp-web.js
reports once a phone has linked, which a stub WhatsApp Web page cannot reach."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehost.plugins.webjs_bridge import WebjsPlugin
from tests.support.api import SANDBOX, WEBJS, ApiHarness, api_harness
from tests.support.wait import until

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).parent / "support" / "scripted_webjs.py"


@asynccontextmanager
async def scripted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    close: str | None = None,
    echo_first: bool = False,
) -> AsyncIterator[tuple[ApiHarness, httpx.AsyncClient, Path]]:
    real_spec = WebjsPlugin.sidecar_spec

    def spec(self: WebjsPlugin) -> Any:
        env = {
            "SCRIPTED_CLOSE": close or "",
            "SCRIPTED_ECHO_FIRST": "1" if echo_first else "",
            "PATH": "/usr/bin:/bin",
        }
        return dataclasses.replace(
            real_spec(self), command=[sys.executable, str(SCRIPT)], cwd=None, env=env
        )

    monkeypatch.setattr(WebjsPlugin, "sidecar_spec", spec)
    profiles = tmp_path / "profiles"
    async with api_harness(
        tmp_path,
        entry_points=(SANDBOX, WEBJS),
        engines={"webjs": {"session_data_path": str(profiles)}},
        reconnect_base=0.1,
        reconnect_cap=1.0,
    ) as api:
        yield api, api.client(api.admin_secret), profiles


async def _session(client: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/api/sessions/{session_id}")).json())


async def _status(client: httpx.AsyncClient, session_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await _session(client, session_id))["status"] == status

    try:
        await until(reached, within=15, poll=0.05)
    except TimeoutError:
        raise AssertionError(await _session(client, session_id)) from None


async def _create(client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/api/sessions", json={"name": "alpha", "engine": "webjs", "start": True}
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("echo_first", [False, True], ids=["reply-then-echo", "echo-then-reply"])
async def test_link_receive_send_echo_and_acks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo_first: bool
) -> None:
    async with scripted(tmp_path, monkeypatch, echo_first=echo_first) as (api, client, profiles):
        received = api.state.bus.subscribe(types=["message.received", "message.sent"])
        session_id = await _create(client)
        await _status(client, session_id, "ready")
        session = await _session(client, session_id)
        assert (session["phone"], session["pushName"]) == ("15550001111", "Scripted")
        history = [entry["status"] for entry in session["statusHistory"]]
        assert "qr_ready" in history and "authenticating" in history
        assert (profiles / f"session-{session_id}").is_dir()
        inbound = await received.get()
        assert inbound.type == "message.received"
        assert inbound.data["body"] == "hello from the scripted phone"

        sent = await client.post(
            f"/api/sessions/{session_id}/messages/send-text",
            json={"chatId": "15551234567@c.us", "text": "hi"},
        )
        assert sent.status_code in (200, 201), sent.text
        message_id = sent.json()["messageId"]
        assert message_id == "3EB0OUT0001"  # the short id, as the echo and acks carry it

        async def read() -> bool:
            rows = (await client.get(f"/api/sessions/{session_id}/messages")).json()["messages"]
            own = [row for row in rows if row["messageId"] == message_id]
            # The echo (message_create) is the same row as the send, not a second one.
            return len(own) == 1 and own[0]["status"] == "read"

        await until(read, within=10, poll=0.05)
        announced = await received.get()
        assert announced.type == "message.sent" and announced.data["messageId"] == message_id


@pytest.mark.parametrize(
    ("close", "status", "desired", "profile_kept"),
    [
        ("LOGOUT", "disconnected", "stopped", False),
        ("CONFLICT", "failed", "stopped", True),
        ("AUTH_FAILURE", "failed", "stopped", True),
    ],
)
async def test_final_disconnects(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    close: str,
    status: str,
    desired: str,
    profile_kept: bool,
) -> None:
    async with scripted(tmp_path, monkeypatch, close=close) as (_, client, profiles):
        session_id = await _create(client)
        await _status(client, session_id, status)
        session = await _session(client, session_id)
        assert session["desiredState"] == desired
        assert close in (session["lastError"] or "") or any(
            close in (entry.get("reason") or "") for entry in session["statusHistory"]
        )
        await until(lambda: (profiles / f"session-{session_id}").exists() is profile_kept)


async def test_a_navigation_close_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted(tmp_path, monkeypatch, close="NAVIGATION") as (_, client, _profiles):
        session_id = await _create(client)

        async def reconnected() -> bool:
            history = (await _session(client, session_id))["statusHistory"]
            return any("reconnecting" in (entry.get("reason") or "") for entry in history)

        await until(reconnected, within=15, poll=0.05)
        assert (await _session(client, session_id))["desiredState"] == "running"
