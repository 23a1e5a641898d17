"""The HTTP app: health routes, /api/plugins, and the error model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, Field

from enginehost.core.http.app import AppState, create_app
from enginehost.core.http.errors import ApiError
from tests.conftest import entry_point, make_host, support
from tests.support.api import ADMIN_SECRET, api_harness

pytestmark = pytest.mark.anyio


class Body(BaseModel):
    chatId: str = Field(min_length=3)  # the contract's camelCase
    count: int


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[AppState]:
    host = make_host(tmp_path, support("paths"), entry_point("broken", "tests.support.nope"))
    async with api_harness(tmp_path) as api, host.running(host.services(), retry=False):
        api.state.plugins = host
        api.state.version = "9.9.9"
        api.state.ready = False
        yield api.state


@pytest.fixture
async def client(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(state)

    @app.post("/api/_test/validate")
    async def validate(body: Body) -> dict[str, str]:
        return {"ok": body.chatId}

    @app.get("/api/_test/conflict")
    async def conflict() -> None:
        raise ApiError(409, "session 'x' already exists", code="session_exists")

    @app.get("/api/_test/bug")
    async def bug() -> None:
        raise RuntimeError("secret internal detail")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"X-API-Key": ADMIN_SECRET}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as http:
        yield http


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == "9.9.9"
    assert body["timestamp"].endswith("Z")
    assert body["plugins"] == {"enabled": 1, "failed": 1}
    live = await client.get("/api/health/live")
    assert live.status_code == 200 and live.json()["status"] == "ok"


async def test_readiness_follows_the_lifecycle(client: httpx.AsyncClient, state: AppState) -> None:
    starting = await client.get("/api/health/ready")
    assert starting.status_code == 503
    assert starting.json()["status"] == "starting"
    assert starting.json()["statusCode"] == 503
    state.ready = True
    assert (await client.get("/api/health/ready")).status_code == 200
    state.shutting_down = True
    stopping = await client.get("/api/health/ready")
    assert stopping.status_code == 503
    assert stopping.json()["code"] == "shutting_down"
    assert stopping.json()["message"] == "enginehost is shutting down"


async def test_plugins_route_matches_the_snapshot(
    client: httpx.AsyncClient, state: AppState
) -> None:
    response = await client.get("/api/plugins")
    assert response.status_code == 200
    assert response.json() == state.plugins.snapshot()
    filtered = await client.get("/api/plugins", params={"hook": "register_engines"})
    assert [p["name"] for p in filtered.json()["plugins"]] == ["paths"]
    unknown = await client.get("/api/plugins", params={"hook": "nope"})
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unknown_hook"
    assert "known hooks: host_started" in unknown.json()["message"]


async def test_error_model_for_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "statusCode": 404,
        "error": "Not Found",
        "message": "Cannot GET /api/nope",
        "code": "not_found",
    }
    wrong_method = await client.delete("/api/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


async def test_validation_errors_name_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/_test/validate", json={"chatId": "x", "count": "many"})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {e["path"] for e in body["errors"]} == {"chatId", "count"}
    assert "chatId:" in body["message"] and "count:" in body["message"]
    not_json = await client.post(
        "/api/_test/validate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400  # malformed, not invalid
    assert not_json.json()["code"] == "malformed_json"


async def test_api_error_and_unexpected_errors(client: httpx.AsyncClient) -> None:
    conflict = await client.get("/api/_test/conflict")
    assert conflict.status_code == 409
    assert conflict.json() == {
        "statusCode": 409,
        "error": "Conflict",
        "message": "session 'x' already exists",
        "code": "session_exists",
    }
    bug = await client.get("/api/_test/bug")
    assert bug.status_code == 500
    assert bug.json()["message"] == "internal error"
    assert "secret internal detail" not in bug.text


async def test_openapi_is_served_under_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/api/openapi.json")).json()
    assert "/api/health/ready" in spec["paths"]
    assert "/api/plugins" in spec["paths"]


async def test_readiness_is_503_while_a_database_is_unreachable(
    state: AppState, tmp_path: Path
) -> None:
    from enginehost.core.db import Database, DatabaseRole, Databases
    from enginehost.core.db.urls import resolve_targets
    from enginehost.core.settings import load_settings

    settings = load_settings(
        database_url="postgresql://app:hunter2@127.0.0.1:1/enginehost", db_connect_timeout=1
    )
    targets = resolve_targets(settings, tmp_path)
    state.databases = Databases(
        main=Database(targets[DatabaseRole.MAIN], settings),
        data=Database(targets[DatabaseRole.DATA], settings),
    )
    state.ready = True
    app = create_app(state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/api/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "database_unavailable"
    assert body["message"] == "the data database is unreachable"
    assert "127.0.0.1" not in response.text  # a public route never shows where the database is

    state.databases = Databases(
        main=Database(targets[DatabaseRole.MAIN], settings),
        data=Database(targets[DatabaseRole.MAIN], settings),  # a reachable SQLite file
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/api/health/ready")).status_code == 200
