"""The route/role matrix: every route of the app, every kind of key, the right answer.

Walks the real app's routes, so a route added later without an access rule, or with a
rule the dependency does not enforce, fails here.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Rule, Scope, api_routes, route_rule
from enginehost.core.sessions.store import SessionNotFoundError
from tests.support.api import ApiHarness, api_harness

pytestmark = pytest.mark.anyio

BODY_METHODS = {"POST", "PUT", "PATCH"}
# Answers that never end (text/event-stream): the in-process transport returns only once
# the app is done, so only the refusal without a key is checked here;
# tests/test_event_stream.py checks the rest over a real socket.
ENDLESS = {"/api/events"}


def _routes(api: ApiHarness) -> list[tuple[Any, str]]:
    routes = []
    for route in api_routes(api.app):
        for method in sorted(set(route.methods or ()) - {"HEAD", "OPTIONS"}):
            routes.append((route, method))
    assert routes, "no routes found: the walk itself is broken"
    return routes


def _path(route: Any, session: str) -> str:
    def fill(match: re.Match[str]) -> str:
        return session if match.group(1) == "sessionId" else str(uuid.uuid4())

    return re.sub(r"\{(\w+)(?::\w+)?\}", fill, route.path)


async def _call(client: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    kwargs: dict[str, Any] = {"json": {}} if method in BODY_METHODS else {}
    return await client.request(method, path, **kwargs)


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


async def test_every_route_declares_exactly_one_rule(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        missing = [f"{m} {r.path}" for r, m in _routes(api) if route_rule(r) is None]
        assert missing == []
        public = sorted({r.path for r, _ in _routes(api) if route_rule(r) == Rule(role=None)})
        assert public == ["/api/health", "/api/health/live", "/api/health/ready"]


async def test_route_role_scope_matrix(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        await api.session("alpha")
        await api.session("beta")
        nobody = api.client()
        full = {
            role: api.client(await api.key(role.value)) for role in (Role.VIEWER, Role.OPERATOR)
        }
        full[Role.ADMIN] = api.client(api.admin_secret)
        scoped = {
            role: api.client(await api.key(role.value, sessions=["beta"]))
            for role in (Role.VIEWER, Role.OPERATOR)
        }
        problems: list[str] = []

        def expect(ok: bool, what: str) -> None:
            if not ok:
                problems.append(what)

        async def ensure_sessions() -> None:
            # A DELETE route really deletes: give every route the same sessions to act on.
            for name in ("alpha", "beta"):
                try:
                    await api.state.sessions.resolve(name)
                except SessionNotFoundError:
                    await api.session(name)

        for route, method in _routes(api):
            await ensure_sessions()
            rule = route_rule(route)
            assert rule is not None
            path = _path(route, "alpha")
            name = f"{method} {route.path}"
            if rule.role is None:
                response = await _call(nobody, method, path)
                expect(response.status_code not in (401, 403), f"{name}: public but {response}")
                continue
            assert rule.scope is not None
            response = await _call(nobody, method, path)
            expect(response.status_code == 401, f"{name} without a key: {response.status_code}")
            if route.path in ENDLESS:
                continue
            for role, client in full.items():
                await ensure_sessions()
                response = await _call(client, method, path)
                if role.allows(rule.role):
                    expect(
                        response.status_code not in (401, 403)
                        and _code(response) != "session_not_found",
                        f"{name} as {role}: {response.status_code} {response.text[:120]}",
                    )
                else:
                    expect(
                        response.status_code == 403 and _code(response) == "forbidden_role",
                        f"{name} as {role} (below {rule.role}): {response.status_code}",
                    )
            for role, client in scoped.items():
                await ensure_sessions()
                response = await _call(client, method, path)
                if not role.allows(rule.role):
                    expected = (403, "forbidden_role")
                elif rule.scope is Scope.GLOBAL:
                    expected = (403, "forbidden_scope")
                elif rule.scope is Scope.SESSION:
                    expected = (404, "session_not_found")  # alpha is outside its scope
                else:
                    expected = None
                got = (response.status_code, _code(response))
                if expected is None:
                    expect(
                        response.status_code not in (401, 403),
                        f"{name} as {role} limited to beta: {got}",
                    )
                else:
                    expect(
                        got == expected, f"{name} as {role} limited to beta: {got} != {expected}"
                    )
                if rule.scope is Scope.SESSION and role.allows(rule.role):
                    await ensure_sessions()
                    own = await _call(client, method, _path(route, "beta"))
                    expect(
                        own.status_code not in (401, 403) and _code(own) != "session_not_found",
                        f"{name} as {role} on its own session: {own.status_code}",
                    )
        assert problems == []


async def test_keys_are_never_taken_from_the_query_string(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        client = api.client()
        for parameter in ("apiKey", "api_key", "key", "token", "access_token"):
            response = await client.get("/api/plugins", params={parameter: api.admin_secret})
            assert response.status_code == 401, parameter


async def test_bearer_and_header_both_work_and_bad_keys_say_why(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        assert (
            await api.client(api.admin_secret, bearer=True).get("/api/plugins")
        ).status_code == 200
        assert (await api.client(api.admin_secret).get("/api/plugins")).status_code == 200
        missing = await api.client().get("/api/plugins")
        assert missing.json()["message"].startswith("an API key is required")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await api.client("ehk_" + "x" * 43).get("/api/plugins")
        assert wrong.status_code == 401
        assert wrong.json()["message"] == "invalid API key: unknown API key"
        short = await api.client("nope").get("/api/plugins")
        assert short.json()["message"] == "invalid API key: malformed API key"


@pytest.mark.parametrize(
    ("headers", "answer"),
    [
        # The scheme is case-insensitive, and blanks around the key do not count.
        ({"Authorization": "bearer {key}"}, 200),
        ({"Authorization": "BEARER   {key}  "}, 200),
        # An empty X-API-Key is no key: the bearer token counts.
        ({"X-API-Key": "", "Authorization": "Bearer {key}"}, 200),
        # X-API-Key wins over a bearer token.
        ({"X-API-Key": "{key}", "Authorization": "Bearer ehk_wrong"}, 200),
        ({"X-API-Key": "ehk_wrong", "Authorization": "Bearer {key}"}, "malformed API key"),
        # Another scheme, or a scheme without a key, is no key at all.
        ({"Authorization": "Basic {key}"}, "required"),
        ({"Authorization": "Bearer"}, "required"),
        ({"Authorization": "Bearer    "}, "required"),
        ({"Authorization": "{key}"}, "required"),
        ({"X-API-Key": ""}, "required"),
    ],
)
async def test_how_a_key_may_be_presented(
    tmp_path: Path, headers: dict[str, str], answer: int | str
) -> None:
    async with api_harness(tmp_path) as api:
        sent = {name: value.format(key=api.admin_secret) for name, value in headers.items()}
        response = await api.client().get(f"/api/sessions/{uuid.uuid4()}", headers=sent)
        if answer == 200:
            assert response.status_code == 404  # past authentication: no such session
            assert response.json()["code"] == "session_not_found"
        else:
            assert response.status_code == 401
            message = response.json()["message"]
            if answer == "required":
                assert message.startswith("an API key is required")
            else:
                assert message == f"invalid API key: {answer}"


async def test_the_walk_catches_a_route_added_without_a_rule(tmp_path: Path) -> None:
    from fastapi import APIRouter

    async with api_harness(tmp_path) as api:
        careless = APIRouter()

        @careless.get("/careless")
        async def open_door() -> dict[str, str]:
            return {"oops": "no key needed"}

        api.app.include_router(careless, prefix="/api")
        missing = [f"{m} {r.path}" for r, m in _routes(api) if route_rule(r) is None]
        assert missing == ["GET /api/careless"]
