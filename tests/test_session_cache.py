"""Session look-ups answered from memory: no database work, never a stale answer.

The races are driven deterministically by wrapping the database's ``run``: a held call
has finished its transaction (read, or committed) but does not come back to its caller
until the test releases it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.store import SessionNotFoundError, SessionStore
from tests.conftest import open_database
from tests.support.api import api_harness

pytestmark = pytest.mark.anyio


@dataclass
class Calls:
    reads: int = 0
    writes: int = 0


def count_runs(monkeypatch: pytest.MonkeyPatch, database: Any) -> Calls:
    """Count the session store's calls to ``database.run`` from now on."""
    calls = Calls()
    original = database.run

    async def run(work: Callable[..., Any], *args: Any, readonly: bool = False) -> Any:
        if work.__qualname__.startswith("SessionStore."):
            if readonly:
                calls.reads += 1
            else:
                calls.writes += 1
        return await original(work, *args, readonly=readonly)

    monkeypatch.setattr(database, "run", run)
    return calls


def hold_first(
    monkeypatch: pytest.MonkeyPatch, database: Any, *, readonly: bool, before: bool = False
) -> tuple[anyio.Event, anyio.Event]:
    """Hold the next read (or write): once its transaction is over, or ``before`` it
    begins. The first event is set when the call is held; it goes on once the second is."""
    held, release = anyio.Event(), anyio.Event()
    original = database.run
    held_kind = readonly

    async def hold() -> None:
        held.set()
        await release.wait()

    async def run(work: Callable[..., Any], *args: Any, readonly: bool = False) -> Any:
        chosen = readonly is held_kind and not held.is_set()
        if chosen and before:
            await hold()
        result = await original(work, *args, readonly=readonly)
        if chosen and not before:
            await hold()
        return result

    monkeypatch.setattr(database, "run", run)
    return held, release


async def create_elsewhere(
    database_url: str, tmp_path: Path, name: str, **config: Any
) -> SessionRecord:
    """A session row made through another database object: one the store under test has
    never seen, as if made before this process started."""
    other = open_database(database_url, "data", tmp_path)
    try:
        return await SessionStore(other).create(name, engine="sandbox", config=config)
    finally:
        other.dispose()


# ------------------------------------------------------------------------------ memory


async def test_a_resolved_session_is_then_answered_from_memory(
    data_db: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_elsewhere(database_url, tmp_path, "alpha", x=1)
    store = SessionStore(data_db)
    calls = count_runs(monkeypatch, data_db)
    assert (await store.resolve("alpha")).id == created.id
    assert calls.reads == 1
    for key in ("alpha", created.id, "alpha", created.id):
        record = await store.resolve(key)
        assert (record.id, record.name, record.config) == (created.id, "alpha", {"x": 1})
        assert record.created_at == created.created_at
    assert (calls.reads, calls.writes) == (1, 0)


async def test_writes_are_seen_at_once_without_reading_again(
    data_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    calls = count_runs(monkeypatch, data_db)
    await store.update(record.id, config={"a": 1}, desired_state="running")
    seen = await store.resolve("alpha")
    assert (seen.config, seen.desired_state) == ({"a": 1}, "running")
    await store.transition(record.id, "ready", reason="linked", phone="15551234567")
    seen = await store.resolve(record.id)
    assert (seen.status, seen.phone) == ("ready", "15551234567")
    assert [entry["reason"] for entry in seen.status_history] == ["linked"]
    # Each answer was the row its write committed, kept in memory.
    assert calls.reads == 0


async def test_stores_over_one_database_share_what_they_know(data_db: Any) -> None:
    writer, reader = SessionStore(data_db), SessionStore(data_db)
    record = await writer.create("alpha", engine="sandbox")
    assert (await reader.resolve("alpha")).desired_state == "stopped"
    await writer.update(record.id, desired_state="running")
    assert (await reader.resolve("alpha")).desired_state == "running"
    await writer.delete(record.id)
    with pytest.raises(SessionNotFoundError):
        await reader.resolve("alpha")


async def test_records_handed_out_are_copies(data_db: Any) -> None:
    store = SessionStore(data_db)
    proxy = {"url": "http://proxy:3128", "type": "http"}
    created = await store.create("alpha", engine="sandbox", config={"proxy": dict(proxy)})
    transitioned, _ = await store.transition(created.id, "ready", reason="linked")
    updated = await store.update(created.id, phone="15551234567")
    # Every write first: a write replaces the row in memory, which would hide damage done
    # to it through a record handed out earlier.
    handed_out = [
        created,
        transitioned,
        updated,
        await store.resolve("alpha"),
        await store.resolve(created.id),
    ]
    for record in handed_out:
        record.status = "mangled"
        record.name = "mangled"
        record.config["proxy"]["url"] = "http://mangled:1"
        record.config["extra"] = True
        if record.status_history:
            record.status_history[0]["status"] = "mangled"
        record.status_history.append({"status": "mangled", "at": "never", "reason": None})
    for key in ("alpha", created.id):
        again = await store.resolve(key)
        assert (again.name, again.status, again.phone) == ("alpha", "ready", "15551234567")
        assert again.config == {"proxy": proxy}
        assert [(e["status"], e["reason"]) for e in again.status_history] == [("ready", "linked")]


async def test_deleted_sessions_are_not_found_and_not_kept(data_db: Any) -> None:
    store = SessionStore(data_db)
    records = [await store.create(f"s{index}", engine="sandbox") for index in range(10)]
    for record in records:
        await store.resolve(record.name)
    assert len(store._cache) == 10
    for record in records[:6]:
        assert await store.delete(record.id) is True
    assert len(store._cache) == 4  # at most the sessions that exist
    for record in records[:6]:
        for key in (record.id, record.name):
            with pytest.raises(SessionNotFoundError):
                await store.resolve(key)
        with pytest.raises(SessionNotFoundError):
            await store.update(record.id, last_error="late")
    await store.update(records[7].id, last_error="still here")
    assert len(store._cache) == 4
    assert not store._cache._finished  # nothing kept for writes once none is in flight
    assert (await store.resolve("s7")).id == records[7].id


async def test_a_renamed_session_is_not_found_by_its_old_name(data_db: Any) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    assert (await store.resolve("alpha")).id == record.id
    await store.update(record.id, name="beta")
    with pytest.raises(SessionNotFoundError):
        await store.resolve("alpha")
    assert (await store.resolve("beta")).id == record.id
    assert (await store.resolve(record.id)).name == "beta"
    # The old name is free for another session, which then owns it.
    other = await store.create("alpha", engine="sandbox")
    assert (await store.resolve("alpha")).id == other.id


async def test_an_id_wins_over_a_cached_name_equal_to_it(
    data_db: Any, database_url: str, tmp_path: Path
) -> None:
    # A session named like another's id: the id must win, as in the database query,
    # even when only the one with that name is in memory.
    owner = await create_elsewhere(database_url, tmp_path, "alpha")
    store = SessionStore(data_db)
    namesake = await store.create(owner.id, engine="sandbox")
    assert (await store.resolve(owner.id)).id == owner.id
    assert (await store.resolve(namesake.id)).name == owner.id


async def test_reset_at_boot_is_seen_by_resolve(data_db: Any) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    await store.transition(record.id, "ready")
    assert (await store.resolve("alpha")).status == "ready"
    assert await store.reset_in_flight(frozenset({"ready"}), "the host restarted") == 1
    again = await store.resolve("alpha")
    assert (again.status, again.status_history[-1]["reason"]) == (
        "disconnected",
        "the host restarted",
    )


# ------------------------------------------------------------------------------ races


async def test_a_read_coming_back_after_a_write_does_not_undo_it(
    data_db: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_elsewhere(database_url, tmp_path, "alpha", v=1)
    store = SessionStore(data_db)
    read_over, release = hold_first(monkeypatch, data_db, readonly=True)
    answers: list[SessionRecord] = []

    async def slow_resolve() -> None:
        answers.append(await store.resolve("alpha"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_resolve)
        await read_over.wait()  # it read v1 ...
        await store.update(created.id, config={"v": 2})  # ... v2 commits and comes back ...
        release.set()  # ... then the read comes back with v1.
    assert answers[0].config == {"v": 1}  # an answer from before the write: fine
    for key in ("alpha", created.id):
        assert (await store.resolve(key)).config == {"v": 2}


async def test_a_read_coming_back_after_a_delete_does_not_bring_it_back(
    data_db: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_elsewhere(database_url, tmp_path, "alpha")
    store = SessionStore(data_db)
    read_over, release = hold_first(monkeypatch, data_db, readonly=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.resolve, created.id)
        await read_over.wait()
        assert await store.delete(created.id) is True
        release.set()
    for key in ("alpha", created.id):
        with pytest.raises(SessionNotFoundError):
            await store.resolve(key)
    assert len(store._cache) == 0


async def test_a_read_coming_back_after_a_rename_does_not_keep_the_old_name(
    data_db: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_elsewhere(database_url, tmp_path, "alpha")
    store = SessionStore(data_db)
    read_over, release = hold_first(monkeypatch, data_db, readonly=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.resolve, "alpha")
        await read_over.wait()
        await store.update(created.id, name="beta")
        release.set()
    with pytest.raises(SessionNotFoundError):
        await store.resolve("alpha")
    assert (await store.resolve(created.id)).name == "beta"


@pytest.mark.parametrize("write", ["update", "transition"])
async def test_writes_coming_back_in_reverse_order_leave_the_newer_row(
    data_db: Any, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")

    def change(version: int) -> Callable[[], Any]:
        if write == "update":
            return partial(store.update, record.id, config={"v": version})
        return partial(store.transition, record.id, "ready", config={"v": version})

    first_committed, release = hold_first(monkeypatch, data_db, readonly=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(change(1))
        await first_committed.wait()  # v1 committed, not back yet
        await change(2)()  # v2 commits after it and comes back first
        release.set()  # then v1 comes back
    for key in ("alpha", record.id):
        assert (await store.resolve(key)).config == {"v": 2}


async def test_a_write_overlapping_a_later_one_drops_the_row_it_cannot_vouch_for(
    data_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    second_begun, release = hold_first(monkeypatch, data_db, readonly=False, before=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(store.update, record.id, config={"v": 2}))
        await second_begun.wait()  # v2 has begun but not reached the database
        await store.update(record.id, config={"v": 1})  # v1 commits and comes back first
        assert (await store.resolve("alpha")).config == {"v": 1}
        release.set()  # then v2 commits and comes back, unsure it is the newer
    for key in ("alpha", record.id):
        assert (await store.resolve(key)).config == {"v": 2}


# ------------------------------------------------------------------------------ the API


async def test_session_routes_resolve_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    async with api_harness(tmp_path, database_url=database_url, default_engine="sandbox") as api:
        client = api.client(await api.key("operator"))
        created = (await client.post("/api/sessions", json={"name": "alpha"})).json()
        calls = count_runs(monkeypatch, api.databases.data)
        for key in ("alpha", created["id"], "alpha"):
            response = await client.get(f"/api/sessions/{key}")
            assert response.status_code == 200 and response.json()["id"] == created["id"]
        assert calls.reads == 0  # create left the row in memory

        response = await client.patch("/api/sessions/alpha", json={"config": {"a": 1}})
        assert response.status_code == 200
        assert (await client.get("/api/sessions/alpha")).json()["config"] == {"a": 1}
        assert calls.reads == 0

        assert (await client.delete("/api/sessions/alpha")).status_code == 204
        for key in ("alpha", created["id"]):
            response = await client.get(f"/api/sessions/{key}")
            assert response.status_code == 404
            assert response.json()["code"] == "session_not_found"
