"""API keys: the admin routes under /api/auth/api-keys and ``enginehost keys ...``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlmodel import Session

from enginehost.core.auth import service as service_module
from enginehost.core.auth.keys import hash_secret, secret_prefix
from enginehost.core.auth.models import ApiKey
from enginehost.core.auth.service import ApiKeyError
from enginehost.core.engine import utc_now
from tests.support.api import ADMIN_SECRET, ApiHarness, api_harness
from tests.support.daemon import cli_env, run_cli

KEYS = "/api/auth/api-keys"
# A route any valid key may call: proves a secret authenticates.
PROBE = "/api/plugins"
KEY_FIELDS = {
    "id",
    "name",
    "prefix",
    "role",
    "sessions",
    "expiresAt",
    "createdAt",
    "lastUsedAt",
    "revokedAt",
    "active",
}


async def _create(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await admin.post(KEYS, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _row(api: ApiHarness, key_id: str) -> ApiKey:
    return await api.state.keys.get(key_id)


async def _harness_admin_id(api: ApiHarness) -> str:
    keys = await api.state.keys.list()
    return next(k.id for k in keys if k.prefix == secret_prefix(ADMIN_SECRET))


def _paths(response: httpx.Response) -> list[str]:
    return [problem["path"] for problem in response.json()["errors"]]


# ---------------------------------------------------------------------------- REST


@pytest.mark.anyio
async def test_create_returns_a_secret_that_works_as_header_and_bearer(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="reporting bot", role="viewer")

        assert set(created) == KEY_FIELDS | {"key"}
        secret = created["key"]
        assert secret.startswith("ehk_") and len(secret) >= 40
        assert created["prefix"] == secret[:12]
        assert created["role"] == "viewer" and created["name"] == "reporting bot"
        assert created["sessions"] is None and created["expiresAt"] is None
        assert created["active"] is True and created["revokedAt"] is None
        assert created["createdAt"].endswith("Z")

        assert (await api.client(secret).get(PROBE)).status_code == 200
        assert (await api.client(secret, bearer=True).get(PROBE)).status_code == 200
        # Only the hash is stored.
        row = await _row(api, created["id"])
        assert row.key_hash != secret and secret not in row.key_hash


@pytest.mark.anyio
async def test_a_key_in_the_query_string_is_not_accepted(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        anonymous = api.client()
        secret = await api.key("viewer")
        for parameter in ("apiKey", "key", "api_key", "X-API-Key", "token"):
            response = await anonymous.get(PROBE, params={parameter: secret})
            assert response.status_code == 401, parameter
            assert response.json()["code"] == "unauthorized"
        admin_query = await anonymous.get(KEYS, params={"apiKey": api.admin_secret})
        assert admin_query.status_code == 401


@pytest.mark.anyio
async def test_the_list_never_shows_a_secret_or_a_hash(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="viewer", role="viewer")
        rotated = (await admin.post(f"{KEYS}/{created['id']}/rotate")).json()["key"]
        other = await _create(admin, name="operator", role="operator")

        response = await admin.get(KEYS)
        assert response.status_code == 200
        listed = response.json()
        assert [k["name"] for k in listed] == ["admin (ENGINEHOST_ADMIN_KEY)", "viewer", "operator"]
        assert all(set(k) == KEY_FIELDS for k in listed)
        text = response.text
        for secret in (api.admin_secret, created["key"], rotated, other["key"]):
            assert secret not in text
            assert hash_secret(secret, api.state.keys._pepper) not in text
        for row in await api.state.keys.list():
            assert row.key_hash not in text
        assert "keyHash" not in text and "key_hash" not in text


@pytest.mark.anyio
async def test_revoke_is_idempotent_and_stops_the_key_at_once(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="to revoke", role="operator")
        user = api.client(created["key"])
        assert (await user.get(PROBE)).status_code == 200  # now cached in the service

        first = await admin.post(f"{KEYS}/{created['id']}/revoke")
        assert first.status_code == 200, first.text
        body = first.json()
        assert set(body) == KEY_FIELDS
        assert body["active"] is False and body["revokedAt"] is not None

        refused = await user.get(PROBE)
        assert refused.status_code == 401
        assert "revoked" in refused.json()["message"]

        again = await admin.post(f"{KEYS}/{created['id']}/revoke")
        assert again.status_code == 200
        assert again.json()["revokedAt"] == body["revokedAt"]
        # A revoked key stays listed, inactive; it cannot be rotated back to life.
        listed = {k["id"]: k for k in (await admin.get(KEYS)).json()}
        assert listed[created["id"]]["active"] is False
        rotate = await admin.post(f"{KEYS}/{created['id']}/rotate")
        assert rotate.status_code == 409
        assert rotate.json()["code"] == "api_key_inactive"


@pytest.mark.anyio
async def test_rotate_gives_a_new_secret_and_the_old_one_stops_at_once(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="rotating", role="viewer", sessions=["alpha"])
        old = api.client(created["key"])
        assert (await old.get(PROBE)).status_code == 200  # cached

        response = await admin.post(f"{KEYS}/{created['id']}/rotate")
        assert response.status_code == 200, response.text
        rotated = response.json()
        assert set(rotated) == KEY_FIELDS | {"key"}
        assert rotated["id"] == created["id"]
        assert rotated["key"] != created["key"]
        assert rotated["prefix"] == rotated["key"][:12] != created["prefix"]
        assert rotated["sessions"] == ["alpha"] and rotated["role"] == "viewer"

        gone = await old.get(PROBE)
        assert gone.status_code == 401
        assert "unknown" in gone.json()["message"]
        assert (await api.client(rotated["key"]).get(PROBE)).status_code == 200


@pytest.mark.anyio
async def test_delete_answers_204_and_the_key_stops_at_once(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="doomed", role="viewer")
        user = api.client(created["key"])
        assert (await user.get(PROBE)).status_code == 200

        response = await admin.delete(f"{KEYS}/{created['id']}")
        assert response.status_code == 204
        assert response.content == b""
        assert (await user.get(PROBE)).status_code == 401
        assert created["id"] not in {k["id"] for k in (await admin.get(KEYS)).json()}
        again = await admin.delete(f"{KEYS}/{created['id']}")
        assert again.status_code == 404


@pytest.mark.anyio
async def test_the_last_active_admin_key_cannot_be_revoked_or_deleted(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        admin_id = await _harness_admin_id(api)
        for response in (
            await admin.post(f"{KEYS}/{admin_id}/revoke"),
            await admin.delete(f"{KEYS}/{admin_id}"),
        ):
            assert response.status_code == 409, response.text
            body = response.json()
            assert body["code"] == "last_admin_key"
            assert body["error"] == "Conflict" and body["statusCode"] == 409
            assert "last active admin key" in body["message"]
        assert (await admin.get(KEYS)).status_code == 200  # still works

        # Expired or revoked admin keys do not count as another admin.
        expired = await _create(admin, name="old admin", role="admin")
        await _set_expiry(api, expired["id"], utc_now() - timedelta(minutes=1))
        assert (await admin.post(f"{KEYS}/{admin_id}/revoke")).status_code == 409

        second = await _create(admin, name="second admin", role="admin")
        revoked = await api.client(second["key"]).post(f"{KEYS}/{admin_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert (await admin.get(KEYS)).status_code == 401
        # Now the second is the last one.
        last = await api.client(second["key"]).post(f"{KEYS}/{second['id']}/revoke")
        assert last.status_code == 409
        # Revoking an already revoked admin key is fine (nothing changes).
        assert (await api.client(second["key"]).post(f"{KEYS}/{admin_id}/revoke")).is_success


@pytest.mark.anyio
async def test_two_concurrent_revocations_of_the_only_two_admins(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin_id = await _harness_admin_id(api)
        first = api.client(api.admin_secret)
        created = await _create(first, name="second admin", role="admin")
        second = api.client(created["key"])
        assert (await second.get(KEYS)).status_code == 200  # both authenticated and cached

        statuses: list[int] = []

        async def revoke_self(client: httpx.AsyncClient, key_id: str) -> None:
            statuses.append((await client.post(f"{KEYS}/{key_id}/revoke")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke_self, first, admin_id)
            tg.start_soon(revoke_self, second, created["id"])
        assert sorted(statuses) == [200, 409]
        active = [k for k in await api.state.keys.list() if k.role == "admin" and not k.revoked_at]
        assert len(active) == 1


@pytest.mark.anyio
async def test_concurrent_cross_revocations_in_the_service_leave_one_admin(
    tmp_path: Path,
) -> None:
    async with api_harness(tmp_path) as api:
        keys = api.state.keys
        admin_id = await _harness_admin_id(api)
        other, _ = await keys.create(name="other admin", role="admin")
        outcomes: list[str] = []

        async def revoke(key_id: str) -> None:
            try:
                await keys.revoke(key_id)
                outcomes.append("revoked")
            except ApiKeyError as exc:
                outcomes.append(f"{exc.status_code} {exc.code}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke, admin_id)
            tg.start_soon(revoke, other.id)
        assert sorted(outcomes) == ["409 last_admin_key", "revoked"]

        deletes: list[str] = []
        third, _ = await keys.create(name="third admin", role="admin")
        survivor = next(k for k in await keys.list() if k.role == "admin" and not k.revoked_at)

        async def delete(key_id: str) -> None:
            try:
                await keys.delete(key_id)
                deletes.append("deleted")
            except ApiKeyError as exc:
                deletes.append(exc.code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete, survivor.id)
            tg.start_soon(delete, third.id)
        assert sorted(deletes) == ["deleted", "last_admin_key"]


@pytest.mark.anyio
async def test_session_scoped_keys(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        scoped = await _create(
            admin, name="alpha bot", role="operator", sessions=["beta", " alpha ", "beta"]
        )
        assert scoped["sessions"] == ["alpha", "beta"]
        row = await _row(api, scoped["id"])
        assert row.sessions == ["alpha", "beta"]
        # It works on routes across sessions; the global (admin) routes refuse it.
        assert (await api.client(scoped["key"]).get(PROBE)).status_code == 200
        listed = {k["id"]: k for k in (await admin.get(KEYS)).json()}
        assert listed[scoped["id"]]["sessions"] == ["alpha", "beta"]

        scoped_admin = await admin.post(
            KEYS, json={"name": "x", "role": "admin", "sessions": ["a"]}
        )
        assert scoped_admin.status_code == 422
        assert scoped_admin.json()["code"] == "validation_failed"
        assert _paths(scoped_admin) == ["sessions"]
        assert "admin" in scoped_admin.json()["message"]

        empty = await admin.post(KEYS, json={"name": "x", "role": "viewer", "sessions": []})
        assert empty.status_code == 422
        assert _paths(empty) == ["sessions"]


@pytest.mark.anyio
async def test_only_admins_manage_keys(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        target = await api.key("viewer")
        target_id = next(k.id for k in await api.state.keys.list() if k.role == "viewer")
        calls = [
            ("GET", KEYS, None),
            ("POST", KEYS, {"name": "x", "role": "viewer"}),
            ("POST", f"{KEYS}/{target_id}/revoke", None),
            ("POST", f"{KEYS}/{target_id}/rotate", None),
            ("DELETE", f"{KEYS}/{target_id}", None),
        ]
        for role in ("viewer", "operator"):
            client = api.client(await api.key(role))
            for method, url, body in calls:
                response = await client.request(method, url, json=body)
                assert response.status_code == 403, (role, method, url)
                assert response.json()["code"] == "forbidden_role"
        scoped = api.client(await api.key("operator", sessions=["alpha"]))
        assert (await scoped.get(KEYS)).status_code == 403
        for method, url, body in calls:
            assert (await api.client().request(method, url, json=body)).status_code == 401
        # Nothing changed.
        assert (await api.client(target).get(PROBE)).status_code == 200


async def _set_expiry(api: ApiHarness, key_id: str, when: datetime) -> None:
    def work(session: Session) -> None:
        key = session.get(ApiKey, key_id)
        assert key is not None
        key.expires_at = when
        session.add(key)

    await api.databases.main.run(work)


@pytest.mark.anyio
async def test_an_expired_key_is_refused(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        soon = (utc_now() + timedelta(hours=1)).isoformat()
        created = await _create(admin, name="short-lived", role="viewer", expiresAt=soon)
        assert datetime.fromisoformat(created["expiresAt"]) == datetime.fromisoformat(soon)
        await _set_expiry(api, created["id"], utc_now() - timedelta(seconds=1))

        response = await api.client(created["key"]).get(PROBE)
        assert response.status_code == 401
        assert "expired" in response.json()["message"]
        listed = {k["id"]: k for k in (await admin.get(KEYS)).json()}
        assert listed[created["id"]]["active"] is False
        assert listed[created["id"]]["revokedAt"] is None

        past = (utc_now() - timedelta(minutes=5)).isoformat()
        refused = await admin.post(KEYS, json={"name": "x", "role": "viewer", "expiresAt": past})
        assert refused.status_code == 422
        assert _paths(refused) == ["expiresAt"]
        offset = await _create(
            admin, name="offset", role="viewer", expiresAt="2099-06-01T12:00:00+02:00"
        )
        assert offset["expiresAt"] == "2099-06-01T10:00:00Z"


@pytest.mark.anyio
async def test_last_used_at_is_written_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No authentication cache: every request reaches the once-a-minute bookkeeping.
    monkeypatch.setattr(service_module, "CACHE_SECONDS", 0.0)
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        created = await _create(admin, name="busy", role="viewer")
        assert (await _row(api, created["id"])).last_used_at is None
        user = api.client(created["key"])

        writes = 0
        database = api.databases.main
        original_run = database.run

        async def counting_run(work: Any, *args: Any, readonly: bool = False) -> Any:
            nonlocal writes
            if getattr(work, "__qualname__", "").startswith("ApiKeyService._touch"):
                writes += 1
            return await original_run(work, *args, readonly=readonly)

        monkeypatch.setattr(database, "run", counting_run)
        assert (await user.get(PROBE)).status_code == 200
        first = (await _row(api, created["id"])).last_used_at
        assert first is not None
        assert abs((utc_now() - first).total_seconds()) < 30
        assert (await user.get(PROBE)).status_code == 200
        assert (await _row(api, created["id"])).last_used_at == first
        assert writes == 1

        monkeypatch.setattr(service_module, "LAST_USED_INTERVAL", 0.0)
        assert (await user.get(PROBE)).status_code == 200
        later = (await _row(api, created["id"])).last_used_at
        assert later is not None and later > first
        assert writes == 2
        listed = {k["id"]: k for k in (await admin.get(KEYS)).json()}
        assert datetime.fromisoformat(listed[created["id"]]["lastUsedAt"]) == later


@pytest.mark.anyio
async def test_unknown_ids_answer_404(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        for method, url in (
            ("POST", f"{KEYS}/no-such-key/revoke"),
            ("POST", f"{KEYS}/no-such-key/rotate"),
            ("DELETE", f"{KEYS}/no-such-key"),
        ):
            response = await admin.request(method, url)
            assert response.status_code == 404, url
            body = response.json()
            assert body["code"] == "api_key_not_found"
            assert "no-such-key" in body["message"]


@pytest.mark.anyio
async def test_validation_errors_name_the_field(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        admin = api.client(api.admin_secret)
        cases: list[tuple[dict[str, Any], list[str]]] = [
            ({"role": "viewer"}, ["name"]),
            ({"name": "x"}, ["role"]),
            ({"name": "x", "role": "superuser"}, ["role"]),
            ({"name": "", "role": "viewer"}, ["name"]),
            ({"name": "n" * 101, "role": "viewer"}, ["name"]),
            ({"name": "   ", "role": "viewer"}, ["name"]),
            ({"name": "x", "role": "viewer", "secret": "mine"}, ["secret"]),
            ({"name": "x", "role": "viewer", "keyHash": "0" * 64}, ["keyHash"]),
            ({"name": "x", "role": "viewer", "expiresAt": "2099-01-01T00:00:00"}, ["expiresAt"]),
            ({"name": "x", "role": "viewer", "expiresAt": "tomorrow"}, ["expiresAt"]),
            ({"name": "x", "role": "viewer", "sessions": "alpha"}, ["sessions"]),
        ]
        for body, paths in cases:
            response = await admin.post(KEYS, json=body)
            assert response.status_code == 422, (body, response.text)
            answer = response.json()
            assert answer["code"] == "validation_failed"
            assert _paths(response) == paths, (body, answer)
            assert answer["message"].startswith(paths[0])
        naive = await admin.post(
            KEYS, json={"name": "x", "role": "viewer", "expiresAt": "2099-01-01T00:00:00"}
        )
        assert "timezone" in naive.json()["message"]
        # Nothing was created.
        assert len((await admin.get(KEYS)).json()) == 1


@pytest.mark.anyio
async def test_openapi_documents_the_key_shapes(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as api:
        document = (await api.client().get("/api/openapi.json")).json()
        paths = document["paths"]
        assert set(paths[KEYS]) == {"get", "post"}
        assert "201" in paths[KEYS]["post"]["responses"]
        assert "204" in paths[f"{KEYS}/{{id}}"]["delete"]["responses"]
        assert "409" in paths[f"{KEYS}/{{id}}/revoke"]["post"]["responses"]
        assert "post" in paths[f"{KEYS}/{{id}}/rotate"]
        schemas = document["components"]["schemas"]
        assert set(schemas["ApiKeyOut"]["properties"]) == KEY_FIELDS
        assert set(schemas["ApiKeyWithSecret"]["properties"]) == KEY_FIELDS | {"key"}
        create = schemas["ApiKeyCreate"]
        assert set(create["properties"]) == {"name", "role", "sessions", "expiresAt"}
        assert create["additionalProperties"] is False


# ---------------------------------------------------------------------------- CLI


def _cli_json(*args: str, env: dict[str, str]) -> Any:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.anyio
async def test_cli_create_and_list_and_the_key_works_over_the_api(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")  # the harness below opens the same data dir

    plain = run_cli("keys", "create", "--role", "viewer", "--name", "dashboard", env=env)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 1
    secret = lines[0]
    assert secret.startswith("ehk_")
    assert secret[:12] in plain.stderr and "only this once" in plain.stderr
    assert "no active admin key" in plain.stderr  # a fresh data dir: say how to get in

    created = _cli_json(
        "keys",
        *("create", "--role", "operator", "--session", "alpha", "-s", "beta"),
        *("--expires", "30d", "--json"),
        env=env,
    )
    assert created["key"].startswith("ehk_") and created["prefix"] == created["key"][:12]
    assert created["role"] == "operator" and created["sessions"] == ["alpha", "beta"]
    assert created["name"] == "cli operator key"
    expires = datetime.fromisoformat(created["expiresAt"])
    assert abs((expires - (datetime.now(UTC) + timedelta(days=30))).total_seconds()) < 120

    table = run_cli("keys", "list", env=env)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        *("ID", "NAME", "PREFIX", "ROLE", "SESSIONS", "EXPIRES", "LAST", "USED", "STATUS")
    ]
    assert len(rows) == 2
    assert secret[:12] in rows[0] and "dashboard" in rows[0] and rows[0].endswith("active")
    assert created["id"] in rows[1] and "alpha, beta" in rows[1]
    assert secret not in table.stdout and created["key"] not in table.stdout

    listed = _cli_json("keys", "list", "--json", env=env)
    assert [k["prefix"] for k in listed] == [secret[:12], created["prefix"]]
    assert all(k["status"] == "active" and "key" not in k for k in listed)

    async with api_harness(tmp_path) as api:  # the daemon's view: same pepper, same table
        viewer = await api.client(secret).get(PROBE)
        assert viewer.status_code == 200, viewer.text
        assert (await api.client(created["key"], bearer=True).get(PROBE)).status_code == 200
        principal = await api.state.keys.authenticate(created["key"])
        assert principal.sessions == frozenset({"alpha", "beta"})

    used = _cli_json("keys", "list", "--json", env=env)
    assert used[0]["lastUsedAt"] is not None


@pytest.mark.slow
def test_cli_revoke_by_prefix_and_the_last_admin(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    first = _cli_json("keys", "create", "--role", "admin", "--json", env=env)

    last = run_cli("keys", "revoke", first["prefix"], env=env)
    assert last.returncode == 1
    assert "last active admin key cannot be revoked" in last.stderr

    second = _cli_json("keys", "create", "--role", "admin", "--name", "ops", "--json", env=env)
    viewer = _cli_json("keys", "create", "--role", "viewer", "--json", env=env)

    ambiguous = run_cli("keys", "revoke", "ehk_", env=env)
    assert ambiguous.returncode == 2
    assert "matches 3 keys" in ambiguous.stderr
    for key in (first, second, viewer):
        assert key["id"] in ambiguous.stderr

    unknown = run_cli("keys", "revoke", "ehk_nothing-like-it", env=env)
    assert unknown.returncode == 2
    assert "no API key" in unknown.stderr

    by_prefix = run_cli("keys", "revoke", first["prefix"][:10], env=env)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert first["id"] in by_prefix.stdout and "revoked" in by_prefix.stdout
    by_id = run_cli("keys", "revoke", viewer["id"], env=env)
    assert by_id.returncode == 0, by_id.stderr
    again = run_cli("keys", "revoke", viewer["id"], env=env)
    assert again.returncode == 0 and "already revoked" in again.stdout

    statuses = {k["id"]: k["status"] for k in _cli_json("keys", "list", "--json", env=env)}
    assert statuses == {first["id"]: "revoked", second["id"]: "active", viewer["id"]: "revoked"}
    now_last = run_cli("keys", "revoke", second["id"], env=env)
    assert now_last.returncode == 1


@pytest.mark.slow
def test_cli_usage_errors_and_help(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    bad_role = run_cli("keys", "create", "--role", "root", env=env)
    assert bad_role.returncode == 2
    assert "--role" in bad_role.stderr

    for expires, message in (
        ("soon", "ISO 8601"),
        ("2099-01-01T00:00:00", "timezone"),
        ("0d", "more than zero"),
        ("2000-01-01T00:00:00Z", "future"),
    ):
        result = run_cli("keys", "create", "--role", "viewer", "--expires", expires, env=env)
        assert result.returncode == 2, (expires, result.stderr)
        assert message in result.stderr, (expires, result.stderr)

    scoped_admin = run_cli("keys", "create", "--role", "admin", "--session", "alpha", env=env)
    assert scoped_admin.returncode == 2
    assert "admin key cannot be limited to sessions" in scoped_admin.stderr

    iso = _cli_json(
        "keys",
        "create",
        "--role",
        "viewer",
        "--expires",
        "2099-06-01T12:00:00+02:00",
        "--json",
        env=env,
    )
    assert iso["expiresAt"] == "2099-06-01T10:00:00Z"
    minutes = _cli_json("keys", "create", "--role", "viewer", "-e", "90m", "--json", env=env)
    delta = datetime.fromisoformat(minutes["expiresAt"]) - datetime.now(UTC)
    assert timedelta(minutes=88) < delta <= timedelta(minutes=90)

    overview = run_cli("keys", "--help", env=env)
    assert overview.returncode == 0
    assert all(command in overview.stdout for command in ("create", "list", "revoke"))
    create_help = run_cli("keys", "create", "--help", env=env)
    assert "--expires" in create_help.stdout and "30d" in create_help.stdout
    assert "--json" in create_help.stdout and "--session" in create_help.stdout
    revoke_help = run_cli("keys", "revoke", "--help", env=env)
    assert "ID_OR_PREFIX" in revoke_help.stdout and "last active admin" in revoke_help.stdout


def test_cli_role_choices_match_the_roles() -> None:
    from enginehost.cli import KeyRole
    from enginehost.core.auth.roles import Role

    assert [choice.value for choice in KeyRole] == [role.value for role in Role]
