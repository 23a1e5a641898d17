"""Callbacks registered in a transaction run after it commits, in order, and only then."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from enginehost.core.db.after_commit import after_commit
from enginehost.core.db.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


async def test_callbacks_run_in_order_on_the_event_loop_after_the_commit(data_db: Any) -> None:
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def work(connection: Any) -> str:
        for name in ("first", "second"):
            after_commit(
                connection, lambda n=name: seen.append((n, threading.get_ident() == loop_thread))
            )
        connection.execute(sa.text("SELECT 1"))
        assert seen == []  # not before the commit
        return "done"

    assert await data_db.run_connection(work) == "done"
    assert seen == [("first", True), ("second", True)]


async def test_a_rolled_back_transaction_runs_none(data_db: Any) -> None:
    seen: list[str] = []

    def work(connection: Any) -> None:
        after_commit(connection, lambda: seen.append("never"))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await data_db.run_connection(work)
    # The pooled connection carries nothing over to the next transaction either.
    await data_db.run_connection(lambda connection: None)
    assert seen == []


async def test_orm_sessions_register_callbacks_too(data_db: Any) -> None:
    seen: list[str] = []

    def work(session: Any) -> None:
        after_commit(session, lambda: seen.append("committed"))

    await data_db.run(work)
    assert seen == ["committed"]


async def test_a_failing_callback_does_not_stop_the_others(data_db: Any) -> None:
    seen: list[str] = []

    def broken() -> None:
        raise ValueError("bug in a consumer")

    def work(connection: Any) -> None:
        after_commit(connection, broken)
        after_commit(connection, lambda: seen.append("still ran"))

    await data_db.run_connection(work)
    assert seen == ["still ran"]


async def test_a_group_commit_batch_rerun_alone_keeps_only_committed_callbacks(
    data_db: Any,
) -> None:
    """A batch that failed is rolled back and each operation rerun alone: callbacks of
    the failed attempt never run; those of the reruns that commit do, once."""
    writes = GroupCommit(data_db)
    seen: list[str] = []

    def good(connection: Any) -> None:
        after_commit(connection, lambda: seen.append("good"))

    def bad(connection: Any) -> None:
        after_commit(connection, lambda: seen.append("bad"))
        raise RuntimeError("this one fails")

    import anyio

    results: list[Any] = []

    async def submit(operation: Any) -> None:
        try:
            results.append(await writes.submit(operation))
        except RuntimeError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(submit, good)
        tasks.start_soon(submit, bad)
    await writes.drain()
    assert seen == ["good"]
    assert writes.batches >= 2  # the shared batch failed and ran again one by one


def test_outside_an_async_run_registering_is_harmless(data_db: Any) -> None:
    with data_db.engine.begin() as connection:
        after_commit(connection, lambda: pytest.fail("no loop to run it on"))
