"""Settings routes: GET shows the effective settings with every secret masked; changes are 501."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic.alias_generators import to_camel

from enginehost.core.settings import Settings, load_settings
from tests.support.api import ADMIN_SECRET, ApiHarness, api_harness

pytestmark = pytest.mark.anyio

MASK = "**********"
PEPPER = "pepper-0123456789-secret-value"
DATA_DB_PASSWORD = "data-db-pw-4f1c9e"
MAIN_DB_PASSWORD = "main-db-pw-77ab02"
PROXY_PASSWORD = "proxy-pw-from-env-9d3e"
BLOB_SECRETS = {
    "api_token": "token-value-1b2c3d",
    "nested_credential": "nested-value-5e6f7a",
    "listed_secret": "listed-value-8b9c0d",
    "redis_password_in_url": "redis-pw-2e3f4a",
}
SECRETS = [
    ADMIN_SECRET,
    PEPPER,
    DATA_DB_PASSWORD,
    MAIN_DB_PASSWORD,
    PROXY_PASSWORD,
    *BLOB_SECRETS.values(),
]
READ_ONLY_MARKERS = ("environment", "ENGINEHOST_", ".env", "ENGINEHOST_CONFIG", "restart")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path, api_key_pepper=PEPPER) as harness:
        yield harness


@pytest.fixture
def admin(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(api.admin_secret)


def secret_settings(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The harness's settings plus every kind of secret, some from the environment."""
    monkeypatch.setenv("ENGINEHOST_ENGINES__BAILEYS__PROXY_PASSWORD", PROXY_PASSWORD)
    monkeypatch.setenv("ENGINEHOST_ENGINES__BAILEYS__PROXY_HOST", "proxy.internal")
    monkeypatch.setenv(
        "ENGINEHOST_DATABASE_URL",
        f"postgresql://app:{DATA_DB_PASSWORD}@db.internal:5432/enginehost",
    )
    return load_settings(
        data_dir=api.settings.data_dir,
        admin_key=ADMIN_SECRET,
        api_key_pepper=PEPPER,
        main_database_url=f"postgresql+psycopg://auth:{MAIN_DB_PASSWORD}@db.internal/main",
        engines={
            "webjs": {
                "api_token": BLOB_SECRETS["api_token"],
                "credentials": {"user": "bob", "pass": BLOB_SECRETS["nested_credential"]},
                "tokens": [BLOB_SECRETS["listed_secret"]],
                "redis_url": f"redis://:{BLOB_SECRETS['redis_password_in_url']}@cache:6379/0",
                "headless": True,
                "user_agent": "enginehost",
            }
        },
    )


# ---------------------------------------------------------------------------------- GET


async def test_admin_gets_camel_case_settings_with_every_secret_masked(
    api: ApiHarness, admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.state.settings = secret_settings(api, monkeypatch)
    response = await admin.get("/api/settings")
    assert response.status_code == 200, response.text
    for secret in SECRETS:
        assert secret not in response.text, secret

    body = response.json()
    assert body["source"] == "environment"
    assert body["mutable"] is False
    settings: dict[str, Any] = body["settings"]
    assert set(settings) == {to_camel(name) for name in Settings.model_fields}
    assert all("_" not in name for name in settings)

    assert settings["dataDir"] == str(api.settings.data_dir)
    assert settings["port"] == 2785
    assert settings["templateRenderMaxBytes"] == 65536
    assert settings["adminKey"] == MASK
    assert settings["apiKeyPepper"] == MASK
    # Database URLs show everything but the password.
    assert settings["databaseUrl"] == "postgresql://app:***@db.internal:5432/enginehost"
    assert settings["mainDatabaseUrl"] == "postgresql+psycopg://auth:***@db.internal/main"

    # Engine blobs keep the operator's names and keys; secret-named values are masked.
    assert set(settings["engines"]) == {"baileys", "webjs"}
    assert settings["engines"]["baileys"] == {
        "proxy_password": MASK,
        "proxy_host": "proxy.internal",
    }
    webjs = settings["engines"]["webjs"]
    assert webjs["api_token"] == MASK
    assert webjs["tokens"] == [MASK]
    assert webjs["credentials"]["pass"] == MASK  # under a secret-named key: all masked
    assert webjs["redis_url"] == "redis://:***@cache:6379/0"
    assert (webjs["headless"], webjs["user_agent"]) == (True, "enginehost")


async def test_default_settings_show_unset_secrets_as_null(
    api: ApiHarness, admin: httpx.AsyncClient
) -> None:
    response = await admin.get("/api/settings")
    assert response.status_code == 200
    settings = response.json()["settings"]
    assert settings["databaseUrl"] is None
    assert settings["mainDatabaseUrl"] is None
    assert settings["apiKeyPepper"] == MASK  # the harness sets one
    assert settings["adminKey"] == MASK
    assert settings["engines"] == {}
    assert ADMIN_SECRET not in response.text
    assert PEPPER not in response.text


async def test_only_unscoped_admin_keys_may_read_settings(api: ApiHarness) -> None:
    await api.session("alpha")
    cases = [
        (await api.key("viewer"), "forbidden_role"),
        (await api.key("operator"), "forbidden_role"),
        (await api.key("viewer", sessions=["alpha"]), "forbidden_role"),
        (await api.key("operator", sessions=["alpha"]), "forbidden_role"),
    ]
    for secret, code in cases:
        response = await api.client(secret).get("/api/settings")
        assert response.status_code == 403, response.text
        assert response.json()["code"] == code
        assert ADMIN_SECRET not in response.text
    admin_key = await api.key("admin")
    assert (await api.client(admin_key).get("/api/settings")).status_code == 200
    assert (await api.client(admin_key, bearer=True).get("/api/settings")).status_code == 200


async def test_settings_need_a_valid_key(api: ApiHarness) -> None:
    for client in (api.client(), api.client("ehk_wrong-key-0123456789abcdefghijklmnop")):
        response = await client.get("/api/settings")
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert PEPPER not in response.text


# ------------------------------------------------------------------------- PUT / PATCH


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"json": {"port": 9999}},
        {"json": {}},
        {"json": [1, 2, 3]},
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b"", "headers": {"content-type": "text/plain"}},
    ],
    ids=["no-body", "change", "empty-object", "array", "not-json", "empty-text"],
)
async def test_changing_settings_is_501_whatever_the_body(
    api: ApiHarness, admin: httpx.AsyncClient, method: str, request_body: dict[str, Any]
) -> None:
    before = (await admin.get("/api/settings")).json()
    response = await admin.request(method, "/api/settings", **request_body)
    assert response.status_code == 501, response.text
    body = response.json()
    assert body["statusCode"] == 501
    assert body["error"] == "Not Implemented"
    assert body["code"] == "not_implemented"
    for marker in READ_ONLY_MARKERS:
        assert marker in body["message"], marker
    assert (await admin.get("/api/settings")).json() == before
    assert api.state.settings.port == 2785


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_a_body_that_is_not_json_meets_the_host_wide_415_first(
    api: ApiHarness, admin: httpx.AsyncClient, method: str
) -> None:
    # The request guards answer 415 for any non-JSON body before routing: still an
    # error, never a success.
    response = await admin.request(
        method, "/api/settings", content=b"port=9999", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert api.state.settings.port == 2785


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_changing_settings_checks_the_key_first(api: ApiHarness, method: str) -> None:
    await api.session("alpha")
    for secret in (None, "ehk_wrong-key-0123456789abcdefghijklmnop"):
        for kwargs in (
            {},
            {"json": {"port": 1}},
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ):
            response = await api.client(secret).request(method, "/api/settings", **kwargs)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthorized"
    for role, sessions in (("viewer", None), ("operator", None), ("operator", ["alpha"])):
        client = api.client(await api.key(role, sessions=sessions))
        response = await client.request(method, "/api/settings", json={"port": 1})
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden_role"


async def test_openapi_documents_the_settings_routes(admin: httpx.AsyncClient) -> None:
    spec = (await admin.get("/api/openapi.json")).json()
    routes = spec["paths"]["/api/settings"]
    assert set(routes) == {"get", "put", "patch"}
    ok = routes["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SettingsView")
    for method in ("put", "patch"):
        assert "501" in routes[method]["responses"]
        assert "requestBody" not in routes[method]
