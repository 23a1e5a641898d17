"""The OpenAPI document: valid, and complete about auth, access rules and error answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from enginehost.core.http.auth import Scope, api_routes, route_rule
from tests.support.api import ApiHarness, api_harness

pytestmark = pytest.mark.anyio

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
ERROR_REF = "#/components/schemas/ErrorResponse"
# The answers of the layers around every route (a route may document others its own way).
GENERIC_ERRORS = {"401", "403", "413", "415", "422", "500", "503"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path, max_request_bytes=4096) as harness:
        yield harness


@pytest.fixture
async def spec(api: ApiHarness) -> dict[str, Any]:
    response = await api.client().get("/api/openapi.json")  # public: no key
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, item[method])
        for path, item in spec["paths"].items()
        for method in METHODS
        if method in item
    ]


async def test_the_document_reads_in_the_documented_order(
    api: ApiHarness, spec: dict[str, Any]
) -> None:
    """Routers are matched busiest first, but the document keeps the reading order:
    health, plugins, keys, settings, audit, templates, sessions, messages."""
    paths = list(spec["paths"])
    assert paths[0] == "/api/health"
    first_of = {
        group: next(i for i, p in enumerate(paths) if p.startswith(prefix))
        for group, prefix in [
            ("keys", "/api/auth/api-keys"),
            ("settings", "/api/settings"),
            ("audit", "/api/audit"),
            ("sessions", "/api/sessions"),
            ("messages", "/api/sessions/{sessionId}/messages/send-text"),
        ]
    }
    assert list(first_of.values()) == sorted(first_of.values()), first_of
    # And the app does match the busiest routers first.
    matched = [route.path_format for route in api_routes(api.app)]
    assert matched.index("/api/sessions/{sessionId}/messages/send-text") < matched.index(
        "/api/health"
    )


async def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    info = spec["info"]
    assert info["title"] == "enginehost"
    assert info["version"]
    assert "OpenWA-compatible" in info["description"]
    assert "X-API-Key" in info["description"] and "correlationId" in info["description"]
    assert "4096" in info["description"]  # the body cap of this host


async def test_both_security_schemes_are_declared(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["ApiKey"]["description"],
    }
    assert schemes["Bearer"]["type"] == "http"
    assert schemes["Bearer"]["scheme"] == "bearer"


async def test_the_error_response_schema(spec: dict[str, Any]) -> None:
    schema = spec["components"]["schemas"]["ErrorResponse"]
    assert set(schema["required"]) == {"statusCode", "error", "message", "code"}
    assert set(schema["properties"]) == {
        "statusCode",
        "error",
        "message",
        "code",
        "errors",
        "correlationId",
    }
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"path", "message"}
    # FastAPI's own validation error shape is not what we send: it is not documented.
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_every_operation_is_documented_with_its_rule_security_and_errors(
    api: ApiHarness, spec: dict[str, Any]
) -> None:
    routes = {
        (route.path_format, method.lower()): route
        for route in api_routes(api.app)
        for method in route.methods or ()
    }
    operations = _operations(spec)
    assert len(operations) >= 5
    for path, method, operation in operations:
        name = f"{method.upper()} {path}"
        route = routes[(path, method)]
        rule = route_rule(route)
        assert rule is not None, name
        assert operation["description"].startswith(rule.describe()), name
        assert operation["x-access-rule"]["public"] is (rule.role is None), name
        responses = operation["responses"]
        codes = set(responses)
        if rule.role is None:
            assert operation["security"] == [], name
            assert not codes & {"401", "403"}, name
        else:
            assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], name
            assert operation["x-access-rule"]["role"] == rule.role.value, name
            assert {"401", "403"} <= codes, name
        if rule.scope is Scope.SESSION or "{" in path:
            assert "404" in codes, name
        takes_body = "requestBody" in operation
        if takes_body or operation.get("parameters"):
            assert "422" in codes, name
        if takes_body:
            assert {"400", "413", "415"} <= codes, name
        else:
            assert not codes & {"413", "415"}, name
        assert {"500", "503"} <= codes, name
        for code, response in responses.items():
            assert "X-Request-Id" in response["headers"], (name, code)
            if code in GENERIC_ERRORS:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (name, code)


async def test_known_operations(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    health = paths["/api/health"]["get"]
    assert health["security"] == []
    assert health["description"].startswith("Public: no API key needed.")
    ready = paths["/api/health/ready"]["get"]["responses"]["503"]
    assert ready["description"] == "Starting or shutting down"  # the route's own words kept
    assert ready["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    plugins = paths["/api/plugins"]["get"]
    assert plugins["description"].startswith("Requires an API key with role `viewer`")
    assert "400" in plugins["responses"]  # an unknown hook
    assert "404" not in plugins["responses"]
    assert plugins["responses"]["503"]["headers"]["Retry-After"]
    assert plugins["responses"]["401"]["headers"]["WWW-Authenticate"]


async def test_the_document_is_built_once_and_follows_new_routes(api: ApiHarness) -> None:
    first = api.app.openapi()
    assert api.app.openapi() is first
    assert api.app.openapi_schema is first

    @api.app.get("/api/_test/added-later")
    async def added_later() -> dict[str, str]:
        return {}

    again = api.app.openapi()
    assert "/api/_test/added-later" in again["paths"]
    assert "ErrorResponse" in again["components"]["schemas"]
    assert again["paths"]["/api/_test/added-later"]["get"]["responses"]["500"]


async def test_docs_are_served_without_a_key(api: ApiHarness) -> None:
    client = api.client()
    docs = await client.get("/api/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/api/openapi.json" in docs.text
    assert docs.headers["x-request-id"]
    assert (await client.get("/api/openapi.json")).headers["x-request-id"]


async def test_the_document_matches_the_error_bodies_sent(api: ApiHarness) -> None:
    """An answer of each generic kind validates against the documented ErrorResponse."""
    schemas = api.app.openapi()["components"]["schemas"]
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/$defs/ErrorResponse", "$defs": _rebase(schemas)}
    )
    admin = api.client(api.admin_secret)
    answers: list[httpx.Response] = [
        await api.client().get("/api/plugins"),  # 401
        await admin.get("/api/nope"),  # 404
        await admin.delete("/api/health"),  # 405
        await admin.get("/api/plugins", params={"hook": "nope"}),  # 400
        await admin.post("/api/auth/api-keys", content=b"{", headers=_JSON),  # 400
        await admin.post(
            "/api/auth/api-keys", content=b"x", headers={"content-type": "text/plain"}
        ),
        await admin.post("/api/auth/api-keys", json={"role": 5}),  # 422
    ]
    for response in answers:
        assert response.status_code >= 400, response.request.url
        body = response.json()
        errors = [error.message for error in validator.iter_errors(body)]
        assert not errors, (response.request.url, body, errors)


_JSON = {"content-type": "application/json"}


def _rebase(schema: Any) -> Any:
    """``schema`` with its ``#/components/schemas/`` references as ``#/$defs/`` ones."""
    if isinstance(schema, dict):
        return {
            key: value.replace("#/components/schemas/", "#/$defs/")
            if key == "$ref"
            else _rebase(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(value) for value in schema]
    return schema
