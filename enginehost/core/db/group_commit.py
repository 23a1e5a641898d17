"""Group commit: write operations of many callers share one transaction.

A caller hands over a small synchronous operation (a function of a SQLAlchemy
:class:`~sqlalchemy.engine.Connection`) and waits for its result. Whatever is queued
when the database is free runs as one batch, in queue order, in one transaction. Under
load this turns a transaction per operation into one per batch (on SQLite a commit and
the write lock cost more than a small statement); a lone operation runs at once, with
no timer.

While the queue is busy a task of its own leads it: created when a write finds the
queue idle, it runs batch after batch and ends when the queue is empty. Callers only
wait for their outcome, so waiting needs no cancellation shield (measured: the shield
cost about as much as the rest of the queue's work per write). A caller that goes away
loses nothing and stalls nobody: its operation runs all the same and its outcome is
dropped; a caller that must see the outcome shields itself. The loop lets the event
loop run once before it takes a batch, so the writes that callers ready to run are
about to submit join it.

Operations of one :class:`GroupCommit` never run concurrently with each other, which
makes read-then-write operations free of races between them. They may be run twice
(see below), so they must compute everything from what they read, and must not keep
state of their own across runs.

Failures stay with their operation:

* An exception of the ``refusals`` types (a caller's mistake found by reading, say) is
  the result of that operation alone; the batch goes on. An operation must raise those
  only *before* its first write.
* :class:`~enginehost.core.db.errors.DatabaseError` (the database is busy or down) fails
  every operation of the batch: running them again would not help.
* Any other exception rolls the whole batch back; then each operation runs again alone,
  in its own transaction, so only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

from enginehost.core.db.database import Database
from enginehost.core.db.errors import DatabaseError, DatabaseUnavailableError
from enginehost.core.logging import get_logger

__all__ = ["GroupCommit", "Operation"]

log = get_logger("enginehost.db")

T = TypeVar("T")

Operation = Callable[[Connection], T]
"""A unit of writing: statements on the connection, no commit, no rollback."""


class _Queued(Generic[T]):
    """An operation in the queue, and how its caller learns the outcome.

    The wake-up is a bare asyncio future, not an ``anyio.Event``: the host runs on
    asyncio (uvicorn needs it), this is made for every write, and creating an anyio
    event (which looks up the running async library each time) showed in the send
    benchmark's profile at several times the cost of the future.
    """

    __slots__ = ("error", "finished", "operation", "result", "wake")

    def __init__(self, operation: Operation[T]) -> None:
        self.operation = operation
        self.wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def finish(self, result: T | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.finished = result, error, True
        self.set_awake()

    def set_awake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)


class GroupCommit:
    """One queue of write operations on one database (see the module docs)."""

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 256,
        refusals: tuple[type[BaseException], ...] = (),
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._database = database
        self._max_batch = max_batch
        self._refusals = refusals
        self._queue: deque[_Queued[Any]] = deque()
        self._leader: asyncio.Task[None] | None = None
        self.batches = 0
        """Transactions committed or attempted for batches so far (for tests and metrics)."""
        self.operations = 0
        """Operations finished so far, whatever their outcome."""

    async def submit(self, operation: Operation[T]) -> T:
        """Run ``operation`` in the next batch; its result, or its exception."""
        queued: _Queued[T] = _Queued(operation)
        self._queue.append(queued)
        if self._leader is None:
            # A context of its own: the task serves every caller, so it must not carry
            # the first one's log context (request and session ids) into its logs.
            self._leader = asyncio.get_running_loop().create_task(
                self._lead(), name="enginehost-group-commit", context=contextvars.Context()
            )
        await queued.wake  # cancelling the caller cancels this future only
        if queued.error is not None:
            raise queued.error
        return queued.result  # type: ignore[return-value]  # T, set by finish()

    async def drain(self) -> None:
        """Wait until the queue is empty and its task has ended (at shutdown, before the
        database closes: operations of callers that went away still run)."""
        while self._leader is not None:
            await asyncio.wait({self._leader})

    async def _lead(self) -> None:
        batch: list[_Queued[Any]] = []
        try:
            while self._queue:
                # One turn of the event loop first: the writes that callers ready to run
                # are about to submit join this batch instead of waiting for the next.
                await asyncio.sleep(0)
                batch = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
                try:
                    await self._run(batch)
                except Exception as exc:  # a bug here must not strand the waiting callers
                    log.error("db.group_commit_failed", error=str(exc), exc_info=exc)
                    for queued in batch:
                        if not queued.finished:
                            queued.finish(error=exc)
        except BaseException:  # cancelled: the event loop is closing
            stopped = DatabaseUnavailableError("the write queue stopped with the host")
            for queued in [*batch, *self._queue]:
                if not queued.finished:
                    queued.finish(error=stopped)
            self._queue.clear()
            raise
        finally:
            self._leader = None

    async def _run(self, batch: list[_Queued[Any]]) -> None:
        refusals = self._refusals
        outcomes: list[tuple[Any, BaseException | None]] = []

        def work(connection: Connection) -> None:
            for queued in batch:
                try:
                    outcomes.append((queued.operation(connection), None))
                except refusals as exc:
                    outcomes.append((None, exc))

        self.batches += 1
        try:
            await self._database.run_connection(work)
        except DatabaseError as exc:
            for queued in batch:
                queued.finish(error=exc)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].finish(error=exc)
            else:
                # Rolled back: run each alone, so only the operation at fault fails.
                for queued in batch:
                    await self._run_alone(queued)
        else:
            for queued, (result, error) in zip(batch, outcomes, strict=True):
                queued.finish(result, error)
        self.operations += len(batch)

    async def _run_alone(self, queued: _Queued[Any]) -> None:
        self.batches += 1
        try:
            queued.finish(await self._database.run_connection(queued.operation))
        except Exception as exc:
            queued.finish(error=exc)
