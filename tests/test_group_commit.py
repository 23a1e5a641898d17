"""Group commit: shared transactions, queue order, failures kept to their operation, a
queue that survives cancelled callers."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from enginehost.core.db.errors import DatabaseBusyError
from enginehost.core.db.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


class Refused(Exception):
    """A refusal: raised by an operation before it wrote anything."""


@pytest.fixture
def db(data_db: Any) -> Iterator[Any]:
    data_db.run_connection_sync(lambda c: c.execute(text("CREATE TABLE gc_rows (n INTEGER)")))
    yield data_db


def rows(db: Any) -> list[int]:
    return sorted(
        db.run_connection_sync(
            lambda c: [r[0] for r in c.execute(text("SELECT n FROM gc_rows"))], readonly=True
        )
    )


def insert(n: int, then: Callable[[], object] | None = None) -> Callable[[Connection], int]:
    def operation(connection: Connection) -> int:
        connection.execute(text("INSERT INTO gc_rows (n) VALUES (:n)"), {"n": n})
        if then is not None:
            then()
        return n * 10

    return operation


async def test_concurrent_operations_share_transactions_in_order(db: Any) -> None:
    group = GroupCommit(db)
    order: list[int] = []
    results: dict[int, int] = {}

    async def submit(n: int) -> None:
        results[n] = await group.submit(insert(n, lambda: order.append(n)))

    async with anyio.create_task_group() as tasks:
        for n in range(100):
            tasks.start_soon(submit, n)
    assert results == {n: n * 10 for n in range(100)}
    assert rows(db) == list(range(100))
    assert group.operations == 100
    assert group.batches <= 100 / 5, group.batches  # grouped, not one commit each
    assert order == list(range(100))  # in arrival order


async def test_a_lone_operation_runs_at_once(db: Any) -> None:
    group = GroupCommit(db)
    assert await group.submit(insert(7)) == 70
    assert (group.batches, group.operations) == (1, 1)
    assert rows(db) == [7]


async def test_max_batch_is_respected(db: Any) -> None:
    group = GroupCommit(db, max_batch=3)
    async with anyio.create_task_group() as tasks:
        for n in range(12):
            tasks.start_soon(group.submit, insert(n))
    assert rows(db) == list(range(12))
    assert group.batches == 4  # all twelve were waiting: four batches of three


async def test_a_refusal_fails_its_operation_alone_and_the_batch_commits(db: Any) -> None:
    group = GroupCommit(db, refusals=(Refused,))
    outcomes: dict[int, object] = {}

    def refuse(connection: Connection) -> int:
        raise Refused("no")

    async def submit(n: int) -> None:
        try:
            outcomes[n] = await group.submit(refuse if n == 5 else insert(n))
        except Refused as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(submit, n)
    assert isinstance(outcomes.pop(5), Refused)
    assert outcomes == {n: n * 10 for n in range(10) if n != 5}
    assert rows(db) == [n for n in range(10) if n != 5]
    # One batch, not rolled back and run again: every operation ran exactly once.
    assert group.batches == 1


async def test_a_failing_operation_is_rolled_back_alone(db: Any) -> None:
    group = GroupCommit(db, refusals=(Refused,))
    runs: dict[int, int] = {}
    outcomes: dict[int, object] = {}

    def count(n: int) -> Callable[[], None]:
        def counted() -> None:
            runs[n] = runs.get(n, 0) + 1
            if n == 3:
                raise RuntimeError("operation 3 broke after writing")

        return counted

    async def submit(n: int) -> None:
        try:
            outcomes[n] = await group.submit(insert(n, count(n)))
        except RuntimeError as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tasks:
        for n in range(8):
            tasks.start_soon(submit, n)
    assert isinstance(outcomes.pop(3), RuntimeError)
    assert outcomes == {n: n * 10 for n in range(8) if n != 3}
    # Operation 3's row went with the rollback; the others were run again alone.
    assert rows(db) == [n for n in range(8) if n != 3]
    assert any(times == 2 for times in runs.values()), runs


async def test_an_unavailable_database_fails_the_whole_batch_and_the_queue_recovers(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupCommit(db)
    real = db.run_connection
    failures = 1

    async def flaky(work: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise DatabaseBusyError("the data database is busy: locked")
        return await real(work, **kwargs)

    monkeypatch.setattr(db, "run_connection", flaky)
    outcomes: list[object] = []

    async def submit(n: int) -> None:
        try:
            outcomes.append(await group.submit(insert(n)))
        except DatabaseBusyError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tasks:
        for n in range(3):
            tasks.start_soon(submit, n)
    # One batch of three, failed as a whole and not run again one by one.
    assert group.batches == 1
    assert len(outcomes) == 3 and all(isinstance(o, DatabaseBusyError) for o in outcomes)
    assert await group.submit(insert(7)) == 70
    assert rows(db) == [7]


async def test_a_cancelled_caller_neither_loses_its_operation_nor_stalls_the_queue(
    db: Any,
) -> None:
    group = GroupCommit(db)
    release = threading.Event()
    results: list[int] = []

    async def submit(n: int, then: Callable[[], object] | None = None) -> None:
        results.append(await group.submit(insert(n, then)))

    caller_2 = anyio.CancelScope()

    async def submit_2() -> None:
        with caller_2:
            await submit(2)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            # The leader's operation blocks its batch until released.
            tasks.start_soon(submit, 1, lambda: release.wait(10) or None)
            await anyio.sleep(0.1)
            tasks.start_soon(submit_2)  # queued behind the leader
            await anyio.sleep(0.05)
            tasks.start_soon(submit, 3)
            await anyio.sleep(0.05)
            caller_2.cancel()  # caller 2 goes away while waiting
            await anyio.sleep(0.05)
            release.set()
    # The cancelled caller's operation still ran (once queued it is decided), and the
    # operation queued after it was not stranded; only caller 2's outcome was dropped.
    assert rows(db) == [1, 2, 3]
    assert sorted(results) == [10, 30]
    assert group._leader is None  # the queue's task ended with the queue


async def test_a_shielded_caller_sees_its_outcome_when_cancelled(db: Any) -> None:
    group = GroupCommit(db)
    release = threading.Event()
    seen: list[int] = []
    caller = anyio.CancelScope()

    async def submit_shielded() -> None:
        with caller:
            with anyio.CancelScope(shield=True):
                seen.append(await group.submit(insert(1, lambda: release.wait(10) or None)))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(submit_shielded)
            await anyio.sleep(0.1)
            caller.cancel()
            await anyio.sleep(0.05)
            release.set()
    assert seen == [10]


async def test_a_bug_in_the_queue_fails_its_batch_and_the_queue_goes_on(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupCommit(db)
    real_run = group._run
    calls = 0

    async def broken_once(batch: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        await real_run(batch)

    monkeypatch.setattr(group, "_run", broken_once)
    with pytest.raises(RuntimeError, match="a bug"):
        await group.submit(insert(1))
    assert await group.submit(insert(2)) == 20
    assert rows(db) == [2]


async def test_drain_waits_for_writes_whose_callers_went_away(db: Any) -> None:
    group = GroupCommit(db)
    release = threading.Event()
    caller = anyio.CancelScope()

    async def submit() -> None:
        with caller:
            await group.submit(insert(1, lambda: release.wait(10) or None))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(submit)
            await anyio.sleep(0.05)
            caller.cancel()  # gone; its write is still running
        assert rows(db) == []
        threading.Timer(0.1, release.set).start()
        await group.drain()
    assert rows(db) == [1]
    await group.drain()  # an idle queue drains at once


async def test_the_queue_does_not_carry_a_callers_context(db: Any) -> None:
    # Log context (request and session ids) of whichever caller started the queue must
    # not label the writes of every other caller.
    group = GroupCommit(db)
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="none")
    marker.set("first caller")
    seen = await group.submit(lambda connection: marker.get())
    assert seen == "none"
