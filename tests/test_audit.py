"""The audit log: the buffered writer, retention, the recording middleware, GET /api/audit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlmodel import Session, select

from enginehost.core.audit import service as audit_service
from enginehost.core.audit.models import AuditEntry
from enginehost.core.audit.service import AuditLog
from enginehost.core.auth.roles import Role
from enginehost.core.http import audit as audit_http
from enginehost.core.http.auth import Scope, requires
from tests.conftest import open_database
from tests.support.api import ApiHarness, api_harness

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BAD_SECRET = "ehk_not-a-real-key-0123456789abcdefghijklmnopqrstuv"
BODY_SECRET = "body-secret-never-recorded-9f8e7d"
ENTRY_KEYS = {
    "id",
    "at",
    "keyId",
    "keyPrefix",
    "role",
    "session",
    "action",
    "outcome",
    "client",
    "detail",
}


class RecordingLog:
    """Stands in for a module's structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return emit

    def events(self, level: str) -> list[str]:
        return [event for lvl, event, _ in self.lines if lvl == level]


class FailingDatabase:
    """A database whose every unit of work fails."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    async def run(self, work: Any, *args: Any, readonly: bool = False) -> Any:
        self.calls += 1
        if readonly:
            return await self.real.run(work, *args, readonly=True)
        raise RuntimeError("main database is gone")

    async def run_connection(self, work: Any, *, readonly: bool = False) -> Any:
        self.calls += 1
        if readonly:
            return await self.real.run_connection(work, readonly=True)
        raise RuntimeError("main database is gone")


@pytest.fixture
def main_db(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """The main database on each backend, migrated to head."""
    from enginehost.core.db.migrations import upgrade

    database = open_database(database_url, "main", tmp_path)
    upgrade(database)
    yield database
    database.dispose()


def all_rows(database: Any) -> list[AuditEntry]:
    def work(session: Session) -> list[AuditEntry]:
        return list(session.exec(select(AuditEntry)).all())

    return database.run_sync(work)


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not await predicate():
            await anyio.sleep(0.02)


# ------------------------------------------------------------------------ the service


async def test_flush_writes_and_query_filters_pages_newest_first(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=30, batch_size=3)
    for i in range(7):
        audit.record(
            action="POST /api/things" if i % 2 else "DELETE /api/things/{id}",
            outcome=201 if i % 2 else 204,
            key_id=f"key-{i % 3}",
            key_prefix="ehk_abcdefgh",
            role="operator",
            session="alpha" if i < 4 else "beta",
            client="127.0.0.1",
            at=T0 + timedelta(minutes=i),
        )
    # Same instant: the later id comes first.
    audit.record(action="PUT /api/x", outcome=200, at=T0 + timedelta(minutes=6))
    assert audit.pending == 8
    await audit.flush()
    assert audit.pending == 0

    entries, total = await audit.query()
    assert total == 8
    assert [e.action for e in entries[:2]] == ["PUT /api/x", "DELETE /api/things/{id}"]
    assert [e.at for e in entries[1:]] == [T0 + timedelta(minutes=i) for i in range(6, -1, -1)]
    assert entries[0].id is not None and entries[1].id is not None
    assert entries[0].id > entries[1].id
    assert all(e.at.tzinfo is not None for e in entries)

    page, total = await audit.query(limit=3, offset=2)
    assert total == 8
    assert [e.at for e in page] == [T0 + timedelta(minutes=i) for i in (5, 4, 3)]

    assert (await audit.query(key_id="key-1"))[1] == 2
    assert (await audit.query(session="beta"))[1] == 3
    assert (await audit.query(action="POST /api/things"))[1] == 3
    assert (await audit.query(outcome=204))[1] == 4
    entries, total = await audit.query(
        since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)
    )
    assert total == 2  # since inclusive, until exclusive
    assert [e.at for e in entries] == [T0 + timedelta(minutes=3), T0 + timedelta(minutes=2)]
    entries, total = await audit.query(session="alpha", outcome=201, limit=1)
    assert total == 2 and len(entries) == 1 and entries[0].at == T0 + timedelta(minutes=3)


async def test_query_refuses_naive_times_and_bad_pages(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=30)
    with pytest.raises(ValueError, match="timezone-aware"):
        await audit.query(since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await audit.query(until=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        await audit.query(limit=0)
    with pytest.raises(ValueError, match="offset"):
        await audit.query(offset=-1)


async def test_values_are_cut_to_their_columns(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=30)
    audit.record(
        action="POST /" + "a" * 300,
        outcome=401,
        key_prefix="p" * 40,
        session="s" * 300,
        client="c" * 100,
        detail="d" * 5000,
    )
    await audit.flush()
    (entry,) = all_rows(main_db)
    assert len(entry.action) == 100
    assert entry.key_prefix is not None and len(entry.key_prefix) == 16
    assert entry.session is not None and len(entry.session) == 100
    assert entry.client is not None and len(entry.client) == 64
    assert entry.detail is not None and len(entry.detail) == 1024


async def test_prune_removes_only_entries_older_than_retention(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=10)
    now = T0
    ages = {"ancient": 400, "old": 11, "just-old": 10.001, "recent": 9.99, "new": 0}
    for name, days in ages.items():
        audit.record(action=name, outcome=200, at=now - timedelta(days=days))
    await audit.flush()
    assert await audit.prune(now) == 3
    assert sorted(e.action for e in all_rows(main_db)) == ["new", "recent"]
    assert await audit.prune(now) == 0


async def test_prune_defaults_to_the_current_time(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=10)
    audit.record(action="stale", outcome=200, at=datetime.now(UTC) - timedelta(days=11))
    audit.record(action="today", outcome=200)
    await audit.flush()
    assert await audit.prune() == 1
    assert [e.action for e in all_rows(main_db)] == ["today"]


async def test_full_buffer_drops_the_oldest_and_warns_once_a_minute(
    main_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RecordingLog()
    monkeypatch.setattr(audit_service, "log", recorded)
    audit = AuditLog(main_db, retention_days=30, capacity=3)
    for i in range(6):
        audit.record(action=f"call {i}", outcome=200, at=T0 + timedelta(seconds=i))
    assert audit.pending == 3
    assert audit.dropped == 3
    assert recorded.events("warning") == ["audit.buffer_full"]  # not one per drop
    await audit.flush()
    assert sorted(e.action for e in all_rows(main_db)) == ["call 3", "call 4", "call 5"]


async def test_a_failed_write_is_logged_never_raised(
    main_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RecordingLog()
    monkeypatch.setattr(audit_service, "log", recorded)
    audit = AuditLog(main_db, retention_days=30, batch_size=2)
    audit.database = FailingDatabase(main_db)  # type: ignore[assignment]
    for i in range(5):
        audit.record(action=f"call {i}", outcome=200)
    await audit.flush()  # does not raise
    assert audit.pending == 0
    assert audit.lost == 5
    assert recorded.events("error") == ["audit.write_failed"]  # throttled: once a minute
    assert "main database is gone" in recorded.lines[0][2]["error"]
    # The database is back: later entries are written again.
    audit.database = main_db
    audit.record(action="after", outcome=200)
    await audit.flush()
    assert [e.action for e in all_rows(main_db)] == ["after"]


async def test_run_writes_in_the_background_and_early_for_a_full_batch(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=30, interval=0.05, batch_size=1000)

    async def written(count: int) -> bool:
        return (await audit.query())[1] == count

    async with anyio.create_task_group() as tg:
        tg.start_soon(audit.run)
        audit.record(action="one", outcome=200)
        await wait_for(lambda: written(1))
        tg.cancel_scope.cancel()

    slow = AuditLog(main_db, retention_days=30, interval=3600, batch_size=3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(slow.run)
        await anyio.sleep(0.05)  # the writer is waiting for its interval
        for i in range(3):
            slow.record(action=f"batch {i}", outcome=200)
        with anyio.fail_after(5):
            while slow.pending:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert (await audit.query())[1] == 4


async def test_run_flushes_what_is_left_when_cancelled(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=30, interval=3600)
    async with anyio.create_task_group() as tg:
        tg.start_soon(audit.run)
        await anyio.sleep(0.05)
        for i in range(3):
            audit.record(action=f"late {i}", outcome=200)
        tg.cancel_scope.cancel()
    assert audit.pending == 0
    assert sorted(e.action for e in all_rows(main_db)) == ["late 0", "late 1", "late 2"]


async def test_run_prunes_when_it_starts(main_db: Any) -> None:
    audit = AuditLog(main_db, retention_days=1, interval=3600)
    audit.record(action="old", outcome=200, at=datetime.now(UTC) - timedelta(days=3))
    audit.record(action="new", outcome=200)
    await audit.flush()
    async with anyio.create_task_group() as tg:
        tg.start_soon(audit.run)
        await wait_for(lambda: _count(audit, 1))
        tg.cancel_scope.cancel()
    assert [e.action for e in all_rows(main_db)] == ["new"]


async def _count(audit: AuditLog, expected: int) -> bool:
    return (await audit.query())[1] == expected


# ------------------------------------------------------------------------- the middleware


def add_test_routes(api: ApiHarness) -> None:
    app = api.app

    @app.post(
        "/api/_test/sessions/{sessionId}/things/{thingId}",
        status_code=201,
        dependencies=[requires(Role.OPERATOR, Scope.SESSION)],
    )
    async def create_thing(thingId: str, body: dict[str, Any]) -> dict[str, str]:
        return {"thingId": thingId}

    @app.delete("/api/_test/things/{thingId}", dependencies=[requires(Role.OPERATOR, Scope.GLOBAL)])
    async def delete_thing(thingId: str) -> None:
        return None

    @app.put("/api/_test/bug", dependencies=[requires(Role.OPERATOR, Scope.GLOBAL)])
    async def bug() -> None:
        raise RuntimeError("a bug")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path) as harness:
        add_test_routes(harness)
        yield harness


async def entries(api: ApiHarness, **filters: Any) -> list[AuditEntry]:
    await api.state.audit.flush()
    found, _ = await api.state.audit.query(limit=500, **filters)
    return found


async def test_failed_authentication_is_recorded_on_any_method(api: ApiHarness) -> None:
    response = await api.client(BAD_SECRET).get("/api/plugins")
    assert response.status_code == 401
    assert (await api.client().get("/api/plugins")).status_code == 401
    assert (await api.client(api.admin_secret).get("/api/plugins")).status_code == 200

    no_key, bad_key = await entries(api)
    assert bad_key.action == "GET /api/plugins"
    assert bad_key.outcome == 401
    assert bad_key.key_prefix == BAD_SECRET[:12]
    assert bad_key.key_id is None and bad_key.role is None
    assert bad_key.detail == "unknown API key"
    assert bad_key.client == "127.0.0.1"
    assert no_key.outcome == 401 and no_key.detail == "no API key"
    assert no_key.key_prefix is None


async def test_a_mutating_call_is_recorded_with_its_route_template(api: ApiHarness) -> None:
    await api.session("alpha")
    secret = await api.key("operator")
    operator = api.client(secret)
    response = await operator.post(
        "/api/_test/sessions/alpha/things/t-42", json={"password": BODY_SECRET}
    )
    assert response.status_code == 201
    (entry,) = await entries(api)
    principal = await api.state.keys.authenticate(secret)
    assert entry.action == "POST /api/_test/sessions/{sessionId}/things/{thingId}"
    assert entry.outcome == 201
    assert entry.key_id == principal.key_id
    assert entry.key_prefix == secret[:12]
    assert entry.role == "operator"
    assert entry.session == "alpha"
    assert entry.client == "127.0.0.1"
    assert entry.detail is None
    assert entry.at.tzinfo is not None


async def test_outcomes_other_than_success_are_recorded(api: ApiHarness) -> None:
    viewer = api.client(await api.key("viewer"))
    operator = api.client(await api.key("operator"))
    assert (await viewer.delete("/api/_test/things/1")).status_code == 403
    assert (await operator.delete("/api/_test/things/1")).status_code == 200
    assert (await operator.post("/api/_test/sessions/ghost/things/1", json={})).status_code == 404
    assert (await operator.post("/api/nowhere/abc")).status_code == 404
    assert (await operator.put("/api/_test/bug")).status_code == 500
    assert (await operator.patch("/api/plugins")).status_code == 405
    found = await entries(api)
    summary = [(e.action, e.outcome, e.role, e.session) for e in reversed(found)]
    assert summary == [
        ("DELETE /api/_test/things/{thingId}", 403, "viewer", None),
        ("DELETE /api/_test/things/{thingId}", 200, "operator", None),
        ("POST /api/_test/sessions/{sessionId}/things/{thingId}", 404, "operator", None),
        ("POST /api/nowhere/abc", 404, None, None),  # no route: the raw path
        ("PUT /api/_test/bug", 500, "operator", None),
        ("PATCH /api/plugins", 405, None, None),
    ]


async def test_reads_are_not_recorded(api: ApiHarness) -> None:
    admin = api.client(api.admin_secret)
    for path in ("/api/plugins", "/api/health", "/api/audit", "/api/nowhere"):
        await admin.get(path)
    assert await entries(api) == []


async def test_no_secret_or_body_reaches_the_log(api: ApiHarness) -> None:
    await api.session("alpha")
    secrets = [api.admin_secret, await api.key("operator"), await api.key("viewer"), BAD_SECRET]
    for secret in secrets:
        for bearer in (False, True):
            client = api.client(secret, bearer=bearer)
            await client.post(
                "/api/_test/sessions/alpha/things/x", json={"secret": BODY_SECRET, "key": secret}
            )
            await client.get("/api/plugins")
            await client.delete("/api/_test/things/x")
    found = await entries(api)
    assert len(found) == 4 * 2 * 2 + 2  # POST and DELETE per client; the bad key's GETs
    for entry in found:
        for column, value in entry.model_dump().items():
            text = str(value)
            assert BODY_SECRET not in text, column
            for secret in secrets:
                assert secret not in text, column


async def test_a_failing_audit_write_does_not_fail_the_request(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RecordingLog()
    monkeypatch.setattr(audit_service, "log", recorded)
    failing = FailingDatabase(api.state.audit.database)
    api.state.audit.database = failing  # type: ignore[assignment]
    operator = api.client(await api.key("operator"))
    response = await operator.delete("/api/_test/things/1")
    assert response.status_code == 200
    await api.state.audit.flush()
    assert failing.calls >= 1
    assert api.state.audit.lost >= 1
    assert "audit.write_failed" in recorded.events("error")


async def test_an_error_while_recording_never_escapes(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RecordingLog()
    monkeypatch.setattr(audit_http, "log", recorded)

    def broken(**_: Any) -> None:
        raise RuntimeError("recording is broken")

    monkeypatch.setattr(api.state.audit, "record", broken)
    operator = api.client(await api.key("operator"))
    assert (await operator.delete("/api/_test/things/1")).status_code == 200
    assert recorded.events("error") == ["audit.record_failed"]


async def test_the_harness_writer_writes_without_a_flush(api: ApiHarness) -> None:
    await api.client(BAD_SECRET).get("/api/plugins")
    await wait_for(lambda: _count(api.state.audit, 1))


# -------------------------------------------------------------------------- GET /api/audit


async def seed(api: ApiHarness) -> None:
    audit = api.state.audit
    for i in range(6):
        audit.record(
            action="POST /api/a" if i % 2 else "DELETE /api/b/{id}",
            outcome=200 if i < 3 else 409,
            key_id=f"key-{i % 2}",
            key_prefix="ehk_prefix00",
            role="admin",
            session="alpha" if i < 2 else None,
            client="10.0.0.1",
            at=T0 + timedelta(hours=i),
        )
    await audit.flush()


async def test_get_audit_answers_camel_case_newest_first_with_total(api: ApiHarness) -> None:
    await seed(api)
    admin = api.client(api.admin_secret)
    response = await admin.get("/api/audit", params={"limit": 2, "offset": 1})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"entries", "total", "limit", "offset"}
    assert (body["total"], body["limit"], body["offset"]) == (6, 2, 1)
    first, second = body["entries"]
    assert set(first) == ENTRY_KEYS
    assert datetime.fromisoformat(first["at"]) == T0 + timedelta(hours=4)
    assert datetime.fromisoformat(second["at"]) == T0 + timedelta(hours=3)
    assert first == {
        "id": first["id"],
        "at": first["at"],
        "keyId": "key-0",
        "keyPrefix": "ehk_prefix00",
        "role": "admin",
        "session": None,
        "action": "DELETE /api/b/{id}",
        "outcome": 409,
        "client": "10.0.0.1",
        "detail": None,
    }

    default = (await admin.get("/api/audit")).json()
    assert (default["limit"], default["offset"], len(default["entries"])) == (50, 0, 6)


@pytest.mark.parametrize(
    ("params", "hours"),
    [
        ({"keyId": "key-1"}, [5, 3, 1]),
        ({"session": "alpha"}, [1, 0]),
        ({"action": "DELETE /api/b/{id}"}, [4, 2, 0]),
        ({"outcome": 409}, [5, 4, 3]),
        ({"since": (T0 + timedelta(hours=2)).isoformat()}, [5, 4, 3, 2]),
        ({"since": "2026-03-01T14:00:00+02:00"}, [5, 4, 3, 2, 1, 0]),
        ({"until": "2026-03-01T14:00:00Z"}, [1, 0]),
        (
            {"since": "2026-03-01T13:00:00Z", "until": "2026-03-01T15:00:00Z", "outcome": 200},
            [2, 1],
        ),
        ({"keyId": "nobody"}, []),
    ],
)
async def test_get_audit_filters(api: ApiHarness, params: dict[str, Any], hours: list[int]) -> None:
    await seed(api)
    body = (await api.client(api.admin_secret).get("/api/audit", params=params)).json()
    assert body["total"] == len(hours)
    assert [datetime.fromisoformat(e["at"]) for e in body["entries"]] == [
        T0 + timedelta(hours=h) for h in hours
    ]


async def test_get_audit_is_for_admins_only(api: ApiHarness) -> None:
    for role in ("viewer", "operator"):
        response = await api.client(await api.key(role)).get("/api/audit")
        assert response.status_code == 403, role
        assert response.json()["code"] == "forbidden_role"
    response = await api.client().get("/api/audit")
    assert response.status_code == 401
    (entry,) = await entries(api)  # the 401 is itself recorded; the 403 reads are not
    assert (entry.action, entry.outcome) == ("GET /api/audit", 401)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-03-01T12:00:00"},  # naive
        {"until": "2026-03-01"},
        {"since": "yesterday"},
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"outcome": "teapot"},
    ],
)
async def test_get_audit_refuses_bad_parameters(api: ApiHarness, params: dict[str, Any]) -> None:
    response = await api.client(api.admin_secret).get("/api/audit", params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_failed"
    assert body["errors"][0]["path"].startswith("query.")


async def test_get_audit_is_documented_in_openapi(api: ApiHarness) -> None:
    schema = (await api.client(api.admin_secret).get("/api/openapi.json")).json()
    operation = schema["paths"]["/api/audit"]["get"]
    parameters = {p["name"] for p in operation["parameters"]}
    assert {"since", "until", "keyId", "session", "action", "outcome", "limit", "offset"} <= (
        parameters
    )
    reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    assert set(page["properties"]) == {"entries", "total", "limit", "offset"}
    entry_ref = page["properties"]["entries"]["items"]["$ref"]
    entry = schema["components"]["schemas"][entry_ref.rsplit("/", 1)[-1]]
    assert set(entry["properties"]) == ENTRY_KEYS
