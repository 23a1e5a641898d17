"""The session rows' store: create, resolve by id or name, list (both backends)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from enginehost.core.sessions.store import (
    SessionExistsError,
    SessionNameError,
    SessionNotFoundError,
    SessionStore,
)

pytestmark = pytest.mark.anyio


async def test_create_and_resolve_by_id_or_name(data_db: Any) -> None:
    store = SessionStore(data_db)
    alpha = await store.create("alpha", engine="sandbox", config={"x": 1})
    assert (await store.resolve(alpha.id)).name == "alpha"
    assert (await store.resolve("alpha")).id == alpha.id
    assert alpha.config == {"x": 1}
    assert alpha.status == "created"
    assert alpha.created_at.tzinfo is not None


async def test_a_taken_name_is_decided_by_the_database(data_db: Any) -> None:
    store = SessionStore(data_db)
    outcomes: list[str] = []

    async def create() -> None:
        try:
            await store.create("same", engine="sandbox")
            outcomes.append("created")
        except SessionExistsError:
            outcomes.append("exists")

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(create)
    assert sorted(outcomes) == ["created"] + ["exists"] * 4
    assert [s.name for s in await store.list()] == ["same"]


@pytest.mark.parametrize("name", ["", "-dash-first", "has space", "a/b", "x" * 101, "nul\x00"])
async def test_bad_names_are_refused(data_db: Any, name: str) -> None:
    with pytest.raises(SessionNameError):
        await SessionStore(data_db).create(name, engine="sandbox")


@pytest.mark.parametrize("key", ["nope", "nul\x00byte", "x" * 5000, ""])
async def test_unknown_keys_are_not_found_never_an_error(data_db: Any, key: str) -> None:
    with pytest.raises(SessionNotFoundError) as caught:
        await SessionStore(data_db).resolve(key)
    assert len(str(caught.value)) < 120  # a huge key is not echoed whole


async def test_list_can_be_limited_to_names(data_db: Any) -> None:
    store = SessionStore(data_db)
    for name in ("alpha", "beta", "gamma"):
        await store.create(name, engine="sandbox")
    assert [s.name for s in await store.list()] == ["alpha", "beta", "gamma"]
    assert [s.name for s in await store.list(frozenset({"gamma", "alpha"}))] == ["alpha", "gamma"]


@pytest.mark.anyio
async def test_the_boot_reset_keeps_the_configured_history_length(data_db: Any) -> None:
    store = SessionStore(data_db)
    record = await store.create("alpha", engine="sandbox")
    for status in ("initializing", "qr_ready", "ready"):
        await store.transition(record.id, status, reason=None, history_limit=3)
    reset = await store.reset_in_flight(frozenset({"ready"}), "restarted", history_limit=3)
    assert reset == 1
    history = (await store.resolve("alpha")).status_history
    assert [entry["status"] for entry in history] == ["qr_ready", "ready", "disconnected"]
