"""Session routes over the in-process API, with the sandbox engine playing the phone."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from enginehost.core import qr
from enginehost.core.engine import Capability
from enginehost.plugins.sandbox import SandboxEngine
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

SESSION_FIELDS = {
    "id",
    "name",
    "engine",
    "status",
    "desiredState",
    "phone",
    "pushName",
    "connectedAt",
    "lastActive",
    "createdAt",
    "updatedAt",
    "lastError",
    "reconnectAttempt",
    "statusHistory",
    "config",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAIRING_CODE = re.compile(r"^[1-9A-Z]{4}-[1-9A-Z]{4}$")
SANDBOX_NUMBER = "15550000001"  # the sandbox's default own_number


@asynccontextmanager
async def sessions_api(tmp_path: Path, **settings: Any) -> AsyncIterator[ApiHarness]:
    values = {"default_engine": "sandbox", "session_teardown_timeout": 1.0, **settings}
    async with api_harness(tmp_path, **values) as api:
        yield api


def sandbox(api: ApiHarness, session_id: str) -> SandboxEngine:
    plugin: Any = api.state.plugins.engines["sandbox"].instance
    engine: SandboxEngine = plugin.engine_for(session_id)
    return engine


async def wait_status(
    client: httpx.AsyncClient, session: str, status: str, within: float = 5
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    with anyio.fail_after(within):
        while True:
            response = await client.get(f"/api/sessions/{session}")
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] == status:
                return body
            await anyio.sleep(0.02)


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/sessions", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# ------------------------------------------------------------------------------ create


async def test_create_uses_the_default_engine_and_answers_the_session(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(await api.key("operator"))
        session = await create(client, "alpha")
        assert set(session) == SESSION_FIELDS
        assert session["name"] == "alpha"
        assert session["engine"] == "sandbox"
        assert session["status"] == "created"
        assert session["desiredState"] == "stopped"
        assert session["statusHistory"] == []
        assert session["config"] == {}
        assert session["reconnectAttempt"] == 0
        assert session["phone"] is None and session["lastError"] is None
        stored = await api.state.sessions.resolve(session["id"])
        assert stored.name == "alpha" and stored.engine == "sandbox"


async def test_create_refuses_duplicates_unknown_engines_and_bad_names(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(await api.key("operator"))
        await create(client, "alpha")
        duplicate = await client.post("/api/sessions", json={"name": "alpha"})
        assert "alpha" in assert_error(duplicate, 409, "session_exists")["message"]

        unknown = await client.post("/api/sessions", json={"name": "beta", "engine": "nope"})
        body = assert_error(unknown, 422, "unknown_engine")
        assert "'nope'" in body["message"] and "loaded engines: sandbox" in body["message"]

        for name in ("bad name", "-leading", "", "x" * 101, "slash/name"):
            response = await client.post("/api/sessions", json={"name": name})
            assert_error(response, 422, "validation_failed")

        missing = await client.post("/api/sessions", json={})
        assert assert_error(missing, 422, "validation_failed")["errors"][0]["path"] == "name"
        extra = await client.post("/api/sessions", json={"name": "gamma", "colour": "red"})
        assert_error(extra, 422, "validation_failed")
        assert [s["name"] for s in (await client.get("/api/sessions")).json()] == ["alpha"]


async def test_a_default_engine_that_is_not_loaded_is_named(tmp_path: Path) -> None:
    async with sessions_api(tmp_path, default_engine="baileys") as api:
        client = api.client(api.admin_secret)
        response = await client.post("/api/sessions", json={"name": "alpha"})
        assert "'baileys'" in assert_error(response, 422, "unknown_engine")["message"]
        assert (await create(client, "alpha", engine="sandbox"))["engine"] == "sandbox"


async def test_create_validates_reconnect_overrides(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(api.admin_secret)
        cases = [
            ({"reconnect": {"capSeconds": 0}}, "config.reconnect.capSeconds"),
            ({"reconnect": {"tries": 3}}, "config.reconnect.tries"),
            ({"reconnect": "fast"}, "config.reconnect"),
            ({"reconnect": {"baseSeconds": 10, "capSeconds": 5}}, "config.reconnect.capSeconds"),
        ]
        for config, path in cases:
            response = await client.post("/api/sessions", json={"name": "alpha", "config": config})
            body = assert_error(response, 422, "validation_failed")
            assert body["errors"][0]["path"] == path, body
        good = {"reconnect": {"baseSeconds": 2, "capSeconds": 120}, "flavour": "x"}
        session = await create(client, "alpha", config=good)
        assert session["config"] == good


async def test_create_stores_a_proxy_and_masks_its_password(
    tmp_path: Path, database_url: str
) -> None:
    async with sessions_api(tmp_path, database_url=database_url) as api:
        client = api.client(api.admin_secret)
        session = await create(client, "alpha", proxyUrl="socks5://bot:hunter2@proxy.lan:1080")
        assert session["config"]["proxy"]["type"] == "socks5"
        shown = session["config"]["proxy"]["url"]
        assert "hunter2" not in shown and shown.startswith("socks5://bot:")
        stored = await api.state.sessions.resolve("alpha")
        assert stored.config["proxy"] == {
            "url": "socks5://bot:hunter2@proxy.lan:1080",
            "type": "socks5",
        }
        # A bare host:port takes the scheme of proxyType.
        beta = await create(client, "beta", proxyUrl="proxy.lan:3128", proxyType="http")
        assert beta["config"]["proxy"] == {"url": "http://proxy.lan:3128", "type": "http"}

        bad: list[tuple[dict[str, Any], str]] = [
            ({"proxyType": "socks5"}, "proxyType"),
            ({"proxyUrl": "proxy.lan:3128"}, "proxyUrl"),
            ({"proxyUrl": "ftp://proxy.lan:21"}, "proxyUrl"),
            ({"proxyUrl": "http://:8080"}, "proxyUrl"),
            ({"proxyUrl": "http://proxy.lan:port"}, "proxyUrl"),
            ({"config": {"proxy": {"url": "http://:1", "type": "http"}}}, "config.proxy.url"),
            ({"config": {"proxy": {"url": "x", "type": "http", "auth": 1}}}, "config.proxy.auth"),
            ({"proxyUrl": "http://proxy.lan", "proxyType": "gopher"}, "proxyType"),
            ({"config": {"proxy": {"url": "http://p:1"}}}, "config.proxy.type"),
            ({"config": {"proxy": "http://p:1"}}, "config.proxy"),
        ]
        for fields, path in bad:
            response = await client.post("/api/sessions", json={"name": "gamma", **fields})
            body = assert_error(response, 422, "validation_failed")
            assert body["errors"][0]["path"] == path, (fields, body)


async def test_a_config_read_back_with_masks_keeps_its_secrets(
    tmp_path: Path, database_url: str
) -> None:
    """PUT or PATCH of what a GET showed changes only what the client changed."""
    async with sessions_api(tmp_path, database_url=database_url) as api:
        client = api.client(api.admin_secret)
        secret_config = {"engine_token": "s3cret", "flavour": "plain", "nested": {"password": "pw"}}
        await create(client, "alpha", proxyUrl="http://bot:hunter2@proxy.lan:3128")
        shown = await client.patch("/api/sessions/alpha", json={"config": secret_config})
        config = shown.json()["config"]
        assert config["engine_token"] == "**********" and "hunter2" not in str(config)

        # Sent back as read, with one harmless change: the secrets stay.
        config["flavour"] = "changed"
        response = await client.put("/api/sessions/alpha", json={"config": config})
        assert response.status_code == 200, response.text
        stored = (await api.state.sessions.resolve("alpha")).config
        assert stored["engine_token"] == "s3cret"
        assert stored["nested"] == {"password": "pw"}
        assert stored["proxy"]["url"] == "http://bot:hunter2@proxy.lan:3128"
        assert stored["flavour"] == "changed"

        # A new secret replaces the old one; a changed proxy host takes its URL as given.
        response = await client.patch(
            "/api/sessions/alpha",
            json={
                "config": {
                    "engine_token": "fresh",
                    "proxy": {"url": "http://bot:***@other.lan:3128", "type": "http"},
                }
            },
        )
        assert response.status_code == 200, response.text
        stored = (await api.state.sessions.resolve("alpha")).config
        assert stored["engine_token"] == "fresh"
        assert stored["proxy"]["url"] == "http://bot:***@other.lan:3128"

        # A mask standing for nothing stored is a clear error, not a stored mask.
        response = await client.patch(
            "/api/sessions/alpha", json={"config": {"api_secret": "**********"}}
        )
        body = assert_error(response, 422, "validation_failed")
        assert body["errors"][0]["path"] == "config.api_secret"
        assert "api_secret" not in (await api.state.sessions.resolve("alpha")).config


async def test_create_with_start_starts_at_once(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(api.admin_secret)
        session = await create(client, "alpha", start=True)
        assert session["desiredState"] == "running"
        await wait_status(client, "alpha", "qr_ready")


# ------------------------------------------------------------------------------ reads


async def test_list_and_get_by_id_or_name(tmp_path: Path, database_url: str) -> None:
    async with sessions_api(tmp_path, database_url=database_url) as api:
        operator = api.client(await api.key("operator"))
        viewer = api.client(await api.key("viewer"))
        alpha = await create(operator, "alpha")
        beta = await create(operator, "beta")
        listed = (await viewer.get("/api/sessions")).json()
        assert [s["name"] for s in listed] == ["alpha", "beta"]
        assert all(set(s) == SESSION_FIELDS for s in listed)
        by_id = (await viewer.get(f"/api/sessions/{alpha['id']}")).json()
        by_name = (await viewer.get("/api/sessions/alpha")).json()
        assert by_id == by_name == alpha
        assert (await viewer.get(f"/api/sessions/{beta['id']}")).json()["name"] == "beta"
        assert_error(await viewer.get("/api/sessions/ghost"), 404, "session_not_found")
        # Viewers read; they do not act.
        assert_error(await viewer.post("/api/sessions/alpha/start"), 403, "forbidden_role")
        assert_error(await viewer.post("/api/sessions", json={"name": "x"}), 403, "forbidden_role")


async def test_a_scoped_key_sees_only_its_sessions(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        admin = api.client(api.admin_secret)
        await create(admin, "alpha")
        beta = await create(admin, "beta")
        await create(admin, "gamma")
        await admin.post("/api/sessions/gamma/start")
        await wait_status(admin, "gamma", "qr_ready")
        scoped = api.client(await api.key("operator", sessions=["alpha"]))

        assert [s["name"] for s in (await scoped.get("/api/sessions")).json()] == ["alpha"]
        stats = (await scoped.get("/api/sessions/stats/overview")).json()
        assert stats["total"] == 1 and stats["active"] == 0
        assert stats["byStatus"]["created"] == 1 and stats["byStatus"]["qr_ready"] == 0
        assert (await admin.get("/api/sessions/stats/overview")).json()["total"] == 3

        assert (await scoped.get("/api/sessions/alpha")).status_code == 200
        for path in ("/api/sessions/beta", f"/api/sessions/{beta['id']}", "/api/sessions/gamma"):
            assert_error(await scoped.get(path), 404, "session_not_found")
        assert_error(await scoped.get("/api/sessions/gamma/qr"), 404, "session_not_found")
        assert_error(await scoped.post("/api/sessions/beta/start"), 404, "session_not_found")
        assert_error(await scoped.delete("/api/sessions/beta"), 404, "session_not_found")
        assert_error(await scoped.delete("/api/sessions/ghost"), 404, "session_not_found")
        assert (await admin.get("/api/sessions/beta")).status_code == 200
        created = await scoped.post("/api/sessions", json={"name": "delta"})
        assert_error(created, 403, "forbidden_scope")


async def test_stats_count_statuses_and_active_sessions(tmp_path: Path, database_url: str) -> None:
    async with sessions_api(tmp_path, database_url=database_url) as api:
        client = api.client(api.admin_secret)
        empty = (await client.get("/api/sessions/stats/overview")).json()
        assert empty == {
            "total": 0,
            "active": 0,
            "ready": 0,
            "disconnected": 0,
            "byStatus": {
                "created": 0,
                "initializing": 0,
                "qr_ready": 0,
                "authenticating": 0,
                "ready": 0,
                "disconnected": 0,
                "failed": 0,
            },
        }
        for name in ("alpha", "beta", "gamma", "delta"):
            await create(client, name)
        await client.post("/api/sessions/alpha/start")
        await client.post("/api/sessions/beta/start")
        await client.post("/api/sessions/gamma/start")
        await wait_status(client, "alpha", "qr_ready")
        beta = await wait_status(client, "beta", "qr_ready")
        await wait_status(client, "gamma", "qr_ready")
        await sandbox(api, beta["id"]).scan()
        await wait_status(client, "beta", "ready")
        await client.post("/api/sessions/gamma/stop")
        stats = (await client.get("/api/sessions/stats/overview")).json()
        assert stats["total"] == 4
        assert stats["active"] == 2  # alpha (qr_ready) and beta (ready)
        assert stats["ready"] == 1
        assert stats["disconnected"] == 1  # gamma
        assert stats["byStatus"]["created"] == 1  # delta
        assert stats["byStatus"]["qr_ready"] == 1
        assert sum(stats["byStatus"].values()) == 4


# ------------------------------------------------------------------------------ linking


async def test_start_show_qr_scan_ready(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        operator = api.client(await api.key("operator"))
        viewer = api.client(await api.key("viewer"))
        session = await create(operator, "alpha")

        not_started = await viewer.get("/api/sessions/alpha/qr")
        assert assert_error(not_started, 409, "qr_not_available")["status"] == "created"
        assert_error(await viewer.get("/api/sessions/alpha/qr.png"), 409, "qr_not_available")

        started = await operator.post("/api/sessions/alpha/start")
        assert started.status_code == 200 and started.json()["desiredState"] == "running"
        await wait_status(viewer, "alpha", "qr_ready")
        engine = sandbox(api, session["id"])

        response = await viewer.get(f"/api/sessions/{session['id']}/qr")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"qrCode", "qr", "pairingCode", "status"}
        assert body["status"] == "qr_ready" and body["pairingCode"] is None
        assert body["qr"] == engine.qr_payload
        prefix = "data:image/png;base64,"
        assert body["qrCode"].startswith(prefix)
        png = base64.b64decode(body["qrCode"][len(prefix) :], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        assert png == qr.png_bytes(engine.qr_payload or "")

        image = await viewer.get("/api/sessions/alpha/qr.png")
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.headers["cache-control"] == "no-store"
        assert image.content == png

        await engine.scan()
        ready = await wait_status(viewer, "alpha", "ready")
        assert ready["phone"] == SANDBOX_NUMBER and ready["pushName"] == "Sandbox"
        assert ready["connectedAt"] is not None
        statuses = [entry["status"] for entry in ready["statusHistory"]]
        assert statuses == ["initializing", "qr_ready", "authenticating", "ready"]
        assert all(entry["at"] for entry in ready["statusHistory"])

        linked = await viewer.get("/api/sessions/alpha/qr")
        body = assert_error(linked, 409, "qr_not_available")
        assert body["status"] == "ready" and "already linked" in body["message"]
        assert_error(await viewer.get("/api/sessions/alpha/qr.png"), 409, "qr_not_available")


async def test_lifecycle_actions_are_idempotent(tmp_path: Path, database_url: str) -> None:
    async with sessions_api(tmp_path, database_url=database_url) as api:
        client = api.client(await api.key("operator"))
        session = await create(client, "alpha")
        session_id = session["id"]

        # stop before any start: nothing to stop.
        stopped = await client.post("/api/sessions/alpha/stop")
        assert stopped.status_code == 200 and stopped.json()["desiredState"] == "stopped"

        for _ in range(2):
            response = await client.post("/api/sessions/alpha/start")
            assert response.status_code == 200 and response.json()["desiredState"] == "running"
        await wait_status(client, "alpha", "qr_ready")
        first = sandbox(api, session_id)
        await first.scan()
        await wait_status(client, "alpha", "ready")

        async def twice_stopped(action: str) -> list[dict[str, Any]]:
            """POST ``action`` twice: both answers 200 with the session stopped."""
            bodies = []
            for _ in range(2):
                response = await client.post(f"/api/sessions/alpha/{action}")
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                assert body["status"] == "disconnected" and body["desiredState"] == "stopped"
                bodies.append(body)
            return bodies

        await twice_stopped("stop")

        # The link is kept: a start comes up ready without a QR.
        await client.post("/api/sessions/alpha/start")
        await wait_status(client, "alpha", "ready")
        before = sandbox(api, session_id)

        restarted = await client.post("/api/sessions/alpha/restart")
        assert restarted.status_code == 200
        assert restarted.json()["desiredState"] == "running"
        await wait_status(client, "alpha", "ready")
        assert sandbox(api, session_id) is not before  # a fresh engine object

        await twice_stopped("force-kill")

        # restart of a stopped session simply starts it.
        await client.post("/api/sessions/alpha/restart")
        await wait_status(client, "alpha", "ready")

        for logged_out in await twice_stopped("logout"):
            assert logged_out["phone"] is None and logged_out["pushName"] is None

        # Logged out: the next start needs a QR again.
        await client.post("/api/sessions/alpha/start")
        await wait_status(client, "alpha", "qr_ready")


async def test_logout_reports_an_engine_that_refuses_the_session(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(api.admin_secret)
        # The sandbox refuses session config keys it does not know.
        await create(client, "alpha", config={"colour": "red"})
        response = await client.post("/api/sessions/alpha/logout")
        body = assert_error(response, 409, "logout_failed")
        assert "colour" in body["message"]


async def test_delete_is_idempotent_and_stops_the_session(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(await api.key("operator"))
        session = await create(client, "alpha")
        await client.post("/api/sessions/alpha/start")
        await wait_status(client, "alpha", "qr_ready")
        for _ in range(2):
            response = await client.delete("/api/sessions/alpha")
            assert response.status_code == 204 and response.content == b""
        assert api.state.manager.live(session["id"]) is None
        assert_error(await client.get("/api/sessions/alpha"), 404, "session_not_found")
        assert (await client.delete(f"/api/sessions/{session['id']}")).status_code == 204
        assert (await client.get("/api/sessions")).json() == []
        # The name is free again.
        await create(client, "alpha")


# ------------------------------------------------------------------------------ config


async def test_put_replaces_and_patch_merges_the_config(tmp_path: Path, database_url: str) -> None:
    async with sessions_api(tmp_path, database_url=database_url) as api:
        client = api.client(await api.key("operator"))
        original = {"reconnect": {"capSeconds": 30}, "a": 1, "b": {"x": 1}}
        session = await create(client, "alpha", config=original)

        patched = await client.patch(
            "/api/sessions/alpha", json={"config": {"b": {"y": 2}, "a": None, "c": True}}
        )
        assert patched.status_code == 200
        assert patched.json()["config"] == {
            "reconnect": {"capSeconds": 30},
            "b": {"y": 2},
            "c": True,
        }
        assert patched.json()["updatedAt"] >= session["updatedAt"]

        replaced = await client.put(f"/api/sessions/{session['id']}", json={"config": {"z": 1}})
        assert replaced.status_code == 200 and replaced.json()["config"] == {"z": 1}

        bad = await client.patch(
            "/api/sessions/alpha", json={"config": {"reconnect": {"baseSeconds": -1}}}
        )
        assert assert_error(bad, 422, "validation_failed")["errors"][0]["path"] == (
            "config.reconnect.baseSeconds"
        )
        bad_proxy = await client.put("/api/sessions/alpha", json={"config": {"proxy": 1}})
        assert_error(bad_proxy, 422, "validation_failed")
        assert_error(await client.put("/api/sessions/alpha", json={}), 422, "validation_failed")
        assert_error(
            await client.put("/api/sessions/alpha", json={"config": {}, "name": "x"}),
            422,
            "validation_failed",
        )
        assert (await client.get("/api/sessions/alpha")).json()["config"] == {"z": 1}
        cleared = await client.put("/api/sessions/alpha", json={"config": {}})
        assert cleared.json()["config"] == {}


# ------------------------------------------------------------------------------ pairing


async def test_pairing_code_links_the_requested_number(tmp_path: Path) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(await api.key("operator"))
        session = await create(client, "alpha")

        not_running = await client.post(
            "/api/sessions/alpha/pairing-code", json={"phoneNumber": "15551234567"}
        )
        assert_error(not_running, 409, "session_not_running")

        await client.post("/api/sessions/alpha/start")
        await wait_status(client, "alpha", "qr_ready")
        for bad in ("+15551234567", "1234567", "1" * 16, "15551234abc", ""):
            response = await client.post(
                "/api/sessions/alpha/pairing-code", json={"phoneNumber": bad}
            )
            body = assert_error(response, 422, "validation_failed")
            assert body["errors"][0]["path"] == "phoneNumber"

        response = await client.post(
            "/api/sessions/alpha/pairing-code", json={"phoneNumber": "15551234567"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"pairingCode", "status"}
        assert PAIRING_CODE.match(body["pairingCode"]) and body["status"] == "qr_ready"
        shown = (await client.get("/api/sessions/alpha/qr")).json()
        assert shown["pairingCode"] == body["pairingCode"]

        await sandbox(api, session["id"]).enter_pairing_code(body["pairingCode"])
        ready = await wait_status(client, "alpha", "ready")
        assert ready["phone"] == "15551234567"

        linked = await client.post(
            "/api/sessions/alpha/pairing-code", json={"phoneNumber": "15551234567"}
        )
        assert_error(linked, 409, "session_already_linked")


async def test_pairing_code_on_an_engine_without_it_is_501(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sessions_api(tmp_path) as api:
        client = api.client(api.admin_secret)
        await create(client, "alpha", start=True)
        await wait_status(client, "alpha", "qr_ready")
        record = api.state.plugins.engines["sandbox"]
        monkeypatch.setattr(
            record.cls, "capabilities", frozenset(Capability) - {Capability.PAIRING_CODE}
        )
        response = await client.post(
            "/api/sessions/alpha/pairing-code", json={"phoneNumber": "15551234567"}
        )
        body = assert_error(response, 501, "not_supported")
        assert "'sandbox'" in body["message"]
