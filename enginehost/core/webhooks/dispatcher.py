"""The dispatcher: delivers the outbox, in order per lane, with retries and dead letters.

Deliveries live in the ``webhook_outbox`` table until their receiver took them (or their
attempts ran out); in memory the dispatcher keeps them in *lanes*, one per (webhook,
session, chat), each a queue in outbox id order. One task works a lane while it has
deliveries: it sends the lane's first delivery, and only when that one is settled
(delivered, or a dead letter) the next. So each receiver gets each chat's events in the
order they happened, while different chats and different webhooks proceed in parallel.

Concurrency is bounded twice: ``ENGINEHOST_WEBHOOK_CONCURRENCY`` attempts in flight in
all, and ``ENGINEHOST_WEBHOOK_CONCURRENCY_PER_WEBHOOK`` per webhook, so a receiver that
hangs until the timeout can hold only its own share of the slots. A receiver that keeps
failing is also paused as a whole (its lanes wait, with a growing pause), which spares
it a thundering herd of retries and costs healthy receivers nothing.

Bookkeeping (a delivered row deleted, a failed attempt counted, a dead letter moved) is
written in batches by a task of its own: delivery does not wait for the database. A
crash before the batch commits means some deliveries are made again after the restart,
with the same idempotency key: delivery is at least once, and receivers de-duplicate by
``X-OpenWA-Idempotency-Key``.

Memory is bounded: at most ``WINDOW`` deliveries per webhook are held; beyond that a
webhook's new deliveries stay in the table only, and are read back in id order as its
lanes drain (a receiver that is down for a day costs disk, not memory).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import uuid4

import anyio
import anyio.abc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from enginehost.core.db.after_commit import after_commit
from enginehost.core.db.database import Database
from enginehost.core.db.group_commit import GroupCommit
from enginehost.core.db.lookups import dialect_insert, searchable
from enginehost.core.engine import utc_now
from enginehost.core.errors import shortened
from enginehost.core.logging import get_logger
from enginehost.core.settings import Settings
from enginehost.core.webhooks.catalogue import (
    TEST_EVENT,
    TEST_MESSAGE,
    envelope_bytes,
    test_payload,
)
from enginehost.core.webhooks.delivery import Attempt, AttemptOutcome, WebhookClient
from enginehost.core.webhooks.matching import WebhookSnapshot
from enginehost.core.webhooks.models import DeadLetterRecord, OutboxRecord, WebhookRecord
from enginehost.core.webhooks.outbox import Delivery, Outbox, idempotency_key
from enginehost.core.webhooks.retry import RetryPolicy

__all__ = ["REDRIVE_PAGE", "WINDOW", "Dispatcher"]

log = get_logger("enginehost.webhooks")

WINDOW = 20_000
"""Deliveries held in memory per webhook (the rest wait in the table)."""
REDRIVE_PAGE = 1000
"""Dead letters put back per transaction."""

_OUTBOX = OutboxRecord.__table__  # type: ignore[attr-defined]
_DEAD = DeadLetterRecord.__table__  # type: ignore[attr-defined]

_PAUSE_AFTER_FAILURES = 3
"""Consecutive failed attempts to one webhook before the whole webhook pauses."""
_INACTIVE_POLL = 1.0
_READ_BACK_RETRY = 1.0
"""Seconds before reading a webhook's deliveries back again after a database error."""
_BOOKKEEPING_RETRY = 1.0
"""How often lanes of a deactivated webhook look whether it is active again (s)."""
_ERROR_MAX = 500

LaneKey = tuple[str, str | None, str]


@dataclass(eq=False)
class _Lane:
    key: LaneKey
    queue: deque[Delivery] = field(default_factory=deque)
    not_before: float = 0.0
    """Monotonic time before which the first delivery is not tried again."""
    running: bool = False


@dataclass(eq=False)
class _Receiver:
    """What the dispatcher knows of one webhook's receiver."""

    limiter: anyio.CapacityLimiter
    held: int = 0
    """Deliveries of this webhook in memory."""
    known: set[int] = field(default_factory=set)
    """Ids held, or settled with their bookkeeping not yet written: a refill skips them."""
    forget_after_refill: list[int] = field(default_factory=list)
    """Settled ids written meanwhile: a refill under way may have read them before."""
    spilled: bool = False
    """Some of its deliveries are in the table only (see WINDOW)."""
    refilling: bool = False
    missed: bool = False
    """A delivery was left in the table while a refill ran: read back again."""
    failures: int = 0
    paused_until: float = 0.0


class Dispatcher:
    """Delivers staged deliveries (see the module docs). Run :meth:`run` in a task group."""

    def __init__(
        self,
        database: Database,
        writes: GroupCommit,
        outbox: Outbox,
        client: WebhookClient,
        settings: Settings,
    ) -> None:
        self._database = database
        self._writes = writes
        self._outbox = outbox
        self._client = client
        self._settings = settings
        self._lanes: dict[LaneKey, _Lane] = {}
        self._receivers: dict[str, _Receiver] = {}
        self._all = anyio.CapacityLimiter(settings.webhook_concurrency)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._bookkeeping: list[tuple[str, Any]] = []
        self._bookkeeping_wake = anyio.Event()
        self._outcomes: Counter[str] = Counter()
        self._insert_dead = dialect_insert(database.backend, _DEAD).on_conflict_do_nothing(
            index_elements=["id"]
        )
        self.attempts = 0
        outbox.deliver_to(self.accept)

    # ------------------------------------------------------------------ statistics

    def delivery_outcomes(self) -> Mapping[str, int]:
        """Counts since start: delivered, failed_attempt, dead_lettered, dropped."""
        return dict(self._outcomes)

    async def outbox_depth(self) -> int:
        return await self._count(_OUTBOX)

    async def dead_letter_count(self) -> int:
        return await self._count(_DEAD)

    async def _count(self, table: Any) -> int:
        statement = sa.select(sa.func.count()).select_from(table)

        def work(connection: Connection) -> int:
            return int(connection.execute(statement).scalar_one())

        return await self._database.run_connection(work, readonly=True)

    def held(self) -> int:
        """Deliveries in memory (for tests and the benchmark)."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    def quiet(self) -> bool:
        """Nothing held and everything settled written (for tests and the benchmark)."""
        receivers = self._receivers.values()
        return not self._bookkeeping and not self.held() and not any(r.known for r in receivers)

    # ------------------------------------------------------------------ running

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the outbox and deliver until cancelled; bookkeeping still due when it
        is cancelled is written (shielded, bounded) before it returns. Call
        :meth:`prepare` first."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._write_bookkeeping)
                for webhook_id in await self._webhooks_with_deliveries():
                    await self._refill(webhook_id)
                for lane in list(self._lanes.values()):
                    self._wake_lane(lane)
                log.info("webhooks.dispatcher_started", held=self.held())
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._flush_bookkeeping()

    async def prepare(self) -> None:
        """Continue outbox ids after the stored ones: before anything can stage."""
        self._outbox.start_ids_after(await self._last_id())

    async def aclose(self) -> None:
        await self._client.aclose()

    def accept(self, deliveries: list[Delivery]) -> None:
        """Take deliveries whose rows just committed (on the event loop)."""
        for delivery in deliveries:
            receiver = self._receiver(delivery.webhook_id)
            if receiver.spilled or receiver.held >= WINDOW:
                receiver.spilled = True  # it stays in the table; a refill reads it
                # A refill whose read came before this commit would miss it: read again.
                receiver.missed = receiver.missed or receiver.refilling
                continue
            self._hold(delivery, receiver)

    def _hold(self, delivery: Delivery, receiver: _Receiver) -> None:
        key = (delivery.webhook_id, delivery.session_id, delivery.lane)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key)
        lane.queue.append(delivery)
        receiver.held += 1
        receiver.known.add(delivery.id)
        self._wake_lane(lane)

    def _wake_lane(self, lane: _Lane) -> None:
        if not lane.running and self._tasks is not None:
            lane.running = True
            self._tasks.start_soon(self._work_lane, lane)

    def _receiver(self, webhook_id: str) -> _Receiver:
        receiver = self._receivers.get(webhook_id)
        if receiver is None:
            limit = self._settings.webhook_concurrency_per_webhook
            receiver = self._receivers[webhook_id] = _Receiver(anyio.CapacityLimiter(limit))
        return receiver

    # ------------------------------------------------------------------ lanes

    async def _work_lane(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                delivery = lane.queue[0]
                webhook = self._outbox.index.get(delivery.webhook_id)
                if webhook is None:  # deleted: the database deleted its rows with it
                    self._drop_lane(lane)
                    return
                if not webhook.active:
                    await anyio.sleep(_INACTIVE_POLL)
                    continue
                receiver = self._receiver(webhook.id)
                wait = max(lane.not_before, receiver.paused_until) - time.monotonic()
                if wait > 0:
                    await anyio.sleep(wait)
                    continue
                outcome = await self._attempt(webhook, receiver, delivery)
                self._settle(webhook, receiver, lane, delivery, outcome)
        finally:
            lane.running = False
            if not lane.queue and self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]

    async def _attempt(
        self, webhook: WebhookSnapshot, receiver: _Receiver, delivery: Delivery
    ) -> AttemptOutcome:
        attempt = Attempt(
            url=webhook.url,
            body=delivery.body,
            event=delivery.event,
            idempotency_key=delivery.idempotency_key,
            delivery_id=delivery.delivery_id,
            retry_count=delivery.attempts,
            secret=webhook.secret,
            headers=webhook.headers,
        )
        async with receiver.limiter, self._all:
            self.attempts += 1
            return await self._client.send(attempt)

    def _settle(
        self,
        webhook: WebhookSnapshot,
        receiver: _Receiver,
        lane: _Lane,
        delivery: Delivery,
        outcome: AttemptOutcome,
    ) -> None:
        delivery.attempts += 1
        if outcome.delivered:
            receiver.failures, receiver.paused_until = 0, 0.0
            lane.not_before = 0.0
            self._release(lane, receiver)
            self._outcomes["delivered"] += 1
            self._book("delivered", (delivery.webhook_id, delivery.id))
            return
        error = _describe(outcome)
        delivery.last_error = error
        policy = self._policy(webhook)
        receiver.failures += 1
        if receiver.failures >= _PAUSE_AFTER_FAILURES:
            pause = policy.delay(receiver.failures - _PAUSE_AFTER_FAILURES + 1)
            receiver.paused_until = max(receiver.paused_until, time.monotonic() + pause)
        if not outcome.retryable or policy.exhausted(delivery.attempts):
            lane.not_before = 0.0
            self._release(lane, receiver)
            self._outcomes["dead_lettered"] += 1
            self._book("dead", (delivery, error, outcome.status))
            log.warning(
                "webhooks.dead_letter",
                webhook_id=webhook.id,
                delivery_id=delivery.delivery_id,
                webhook_event=delivery.event,
                attempts=delivery.attempts,
                error=error,
            )
            return
        delay = policy.delay(delivery.attempts, retry_after=outcome.retry_after)
        lane.not_before = time.monotonic() + delay
        self._outcomes["failed_attempt"] += 1
        self._book("failed", (delivery.id, delivery.attempts, delay, error))
        log.info(
            "webhooks.attempt_failed",
            webhook_id=webhook.id,
            delivery_id=delivery.delivery_id,
            attempt=delivery.attempts,
            retry_in=round(delay, 3),
            error=error,
        )

    def _release(self, lane: _Lane, receiver: _Receiver) -> None:
        lane.queue.popleft()
        receiver.held -= 1
        self._refill_if_due(lane.key[0], receiver)

    def _refill_if_due(self, webhook_id: str, receiver: _Receiver) -> None:
        if receiver.spilled and not receiver.refilling and receiver.held <= WINDOW // 2:
            receiver.refilling = True
            if self._tasks is not None:
                self._tasks.start_soon(self._refill, webhook_id)

    def _drop_lane(self, lane: _Lane) -> None:
        receiver = self._receiver(lane.key[0])
        receiver.held -= len(lane.queue)
        self._outcomes["dropped"] += len(lane.queue)
        for delivery in lane.queue:
            receiver.known.discard(delivery.id)
        lane.queue.clear()

    def _policy(self, webhook: WebhookSnapshot) -> RetryPolicy:
        settings = self._settings
        base = webhook.retry_base or settings.webhook_retry_base
        return RetryPolicy(
            max_attempts=webhook.max_attempts or settings.webhook_max_attempts,
            base=base,
            cap=max(base, webhook.retry_cap or settings.webhook_retry_cap),
        )

    # ------------------------------------------------------------------ reading back

    async def _last_id(self) -> int:
        statement = sa.select(sa.func.max(_OUTBOX.c.id))

        def work(connection: Connection) -> int:
            return int(connection.execute(statement).scalar_one() or 0)

        return await self._database.run_connection(work, readonly=True)

    async def _webhooks_with_deliveries(self) -> list[str]:
        statement = sa.select(_OUTBOX.c.webhook_id).distinct()

        def work(connection: Connection) -> list[str]:
            return [str(row[0]) for row in connection.execute(statement)]

        return await self._database.run_connection(work, readonly=True)

    async def _refill(self, webhook_id: str) -> None:
        """Read a webhook's deliveries that are in the table only, oldest first; a
        database that cannot be read is tried again (the rows wait in the table)."""
        receiver = self._receiver(webhook_id)
        receiver.refilling = True
        try:
            while True:
                receiver.missed = False
                try:
                    await self._read_back(webhook_id, receiver)
                except Exception as exc:
                    log.error("webhooks.read_back_failed", webhook_id=webhook_id, error=str(exc))
                    await anyio.sleep(_READ_BACK_RETRY)
                    continue
                if not receiver.missed:
                    return
        finally:
            receiver.refilling = False
            for record_id in receiver.forget_after_refill:
                receiver.known.discard(record_id)
            receiver.forget_after_refill.clear()

    async def _read_back(self, webhook_id: str, receiver: _Receiver) -> None:
        # Rows held or settled-but-unwritten come back too: ask for enough beyond them.
        limit = WINDOW - receiver.held + len(receiver.known)
        statement = (
            sa.select(_OUTBOX)
            .where(_OUTBOX.c.webhook_id == webhook_id)
            .order_by(_OUTBOX.c.id)
            .limit(limit)
        )

        def work(connection: Connection) -> list[dict[str, Any]]:
            return [dict(row._mapping) for row in connection.execute(statement)]

        rows = await self._database.run_connection(work, readonly=True)
        now_wall, now = utc_now(), time.monotonic()
        receiver.spilled = len(rows) >= limit
        for row in rows:
            if row["id"] in receiver.known:
                continue
            if receiver.held >= WINDOW:
                receiver.spilled = True
                break
            delivery = Delivery.of_row(row)
            self._hold(delivery, receiver)
            due = row["next_attempt_at"]
            if due is not None and due > now_wall:
                lane = self._lanes[(delivery.webhook_id, delivery.session_id, delivery.lane)]
                wait = (due - now_wall).total_seconds()
                lane.not_before = max(lane.not_before, now + wait)

    # ------------------------------------------------------------------ bookkeeping

    def _book(self, kind: str, item: Any) -> None:
        self._bookkeeping.append((kind, item))
        self._bookkeeping_wake.set()

    async def _write_bookkeeping(self) -> None:
        while True:
            await self._bookkeeping_wake.wait()
            self._bookkeeping_wake = anyio.Event()
            try:
                await self._flush_bookkeeping()
            except Exception as exc:  # the batch went back to the queue: try again later
                log.error("webhooks.bookkeeping_failed", error=str(exc))
                await anyio.sleep(_BOOKKEEPING_RETRY)
                self._bookkeeping_wake.set()

    async def _flush_bookkeeping(self) -> None:
        if not self._bookkeeping:
            return
        batch, self._bookkeeping = self._bookkeeping, []
        now = utc_now()
        delivered: list[tuple[str, int]] = []
        failed: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        for kind, item in batch:
            if kind == "delivered":
                delivered.append(item)
            elif kind == "failed":
                record_id, attempts, delay, error = item
                failed.append(
                    {
                        "record_id": record_id,
                        "attempts": attempts,
                        "next_attempt_at": now + timedelta(seconds=delay),
                        "last_error": error,
                    }
                )
            else:
                delivery, error, status = item
                dead.append(
                    {
                        "id": delivery.delivery_id,
                        "record_id": delivery.id,
                        "webhook_id": delivery.webhook_id,
                        "session_id": delivery.session_id,
                        "event": delivery.event,
                        "lane": delivery.lane,
                        "idempotency_key": delivery.idempotency_key,
                        "body": delivery.body.decode(),
                        "attempts": delivery.attempts,
                        "last_error": error,
                        "last_status": status,
                        "created_at": delivery.created_at,
                        "dead_at": now,
                    }
                )
        update = (
            sa.update(_OUTBOX)
            .where(_OUTBOX.c.id == sa.bindparam("record_id"))
            .values(
                attempts=sa.bindparam("attempts"),
                next_attempt_at=sa.bindparam("next_attempt_at"),
                last_error=sa.bindparam("last_error"),
            )
        )

        def work(connection: Connection) -> None:
            if failed:
                connection.execute(update, failed)
            if dead:
                # A dead letter's webhook may be gone meanwhile: keep only live ones.
                alive = _existing_webhooks(connection, {d["webhook_id"] for d in dead})
                letters = [
                    {k: v for k, v in d.items() if k != "record_id"}
                    for d in dead
                    if d["webhook_id"] in alive
                ]
                if letters:
                    # Idempotent: a batch written again after a failure adds no twin.
                    connection.execute(self._insert_dead, letters)
            gone = [record_id for _, record_id in delivered] + [d["record_id"] for d in dead]
            for chunk in _chunks(gone, 500):
                connection.execute(sa.delete(_OUTBOX).where(_OUTBOX.c.id.in_(chunk)))

        try:
            await self._writes.submit(work)
        except BaseException:
            # Nothing of it was written: it goes first in the next attempt.
            self._bookkeeping[:0] = batch
            raise
        settled = delivered + [(d["webhook_id"], d["record_id"]) for d in dead]
        for webhook_id, record_id in settled:
            receiver = self._receivers.get(webhook_id)
            if receiver is None:
                continue
            if receiver.refilling:  # its read may predate this write: forget after it
                receiver.forget_after_refill.append(record_id)
            else:
                receiver.known.discard(record_id)

    # ------------------------------------------------------------------ admin

    async def send_test(self, webhook: WebhookRecord) -> AttemptOutcome:
        """Send a ``webhook.test`` event to ``webhook`` once, now (no retry, no outbox)."""
        snapshot = WebhookSnapshot.of(webhook)
        delivery_id = str(uuid4())
        key = idempotency_key(snapshot.id, delivery_id)
        body = envelope_bytes(
            event=TEST_EVENT,
            timestamp=utc_now(),
            session_id=snapshot.session_id,
            idempotency_key=key,
            delivery_id=delivery_id,
            data=test_payload(webhook_id=snapshot.id, message=TEST_MESSAGE),
        )
        attempt = Attempt(
            url=snapshot.url,
            body=body,
            event=TEST_EVENT,
            idempotency_key=key,
            delivery_id=delivery_id,
            retry_count=0,
            secret=snapshot.secret,
            headers=snapshot.headers,
        )
        return await self._client.send(attempt)

    async def dead_letters(
        self,
        *,
        webhook_id: str | None = None,
        session_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[DeadLetterRecord], int]:
        """Dead letters, newest first, and how many match in all."""
        if not _searchable(webhook_id, session_id):
            return [], 0  # a NUL byte: no stored id has one (and PostgreSQL refuses it)
        conditions = []
        if webhook_id is not None:
            conditions.append(_DEAD.c.webhook_id == webhook_id)
        if session_id is not None:
            conditions.append(_DEAD.c.session_id == session_id)
        page = (
            sa.select(_DEAD)
            .where(*conditions)
            .order_by(_DEAD.c.dead_at.desc(), _DEAD.c.id)
            .limit(limit)
            .offset(offset)
        )
        total = sa.select(sa.func.count()).select_from(_DEAD).where(*conditions)

        def work(connection: Connection) -> tuple[list[DeadLetterRecord], int]:
            rows = [DeadLetterRecord(**row._mapping) for row in connection.execute(page)]
            return rows, int(connection.execute(total).scalar_one())

        return await self._database.run_connection(work, readonly=True)

    async def redrive(self, *, ids: list[str] | None = None, webhook_id: str | None = None) -> int:
        """Put dead letters back into the outbox (all of them when neither is given):
        the same body and idempotency key, attempts from zero; how many.

        In pages of :data:`REDRIVE_PAGE` letters, a transaction each: re-driving
        thousands must not hold the data database's write queue for long."""
        if not _searchable(webhook_id):
            return 0
        pages: list[list[str] | None]
        if ids is not None:
            pages = list(_chunks([i for i in ids if _searchable(i)], REDRIVE_PAGE))
        else:
            pages = [None]
        count = 0
        for page in pages:
            while True:
                moved = await self._writes.submit(self._redrive_page(page, webhook_id))
                count += moved
                if page is not None or moved < REDRIVE_PAGE:
                    break
        if count:
            log.info("webhooks.redriven", count=count)
        return count

    def _redrive_page(
        self, ids: list[str] | None, webhook_id: str | None
    ) -> Callable[[Connection], int]:
        conditions = []
        if ids is not None:
            conditions.append(_DEAD.c.id.in_(ids))
        if webhook_id is not None:
            conditions.append(_DEAD.c.webhook_id == webhook_id)
        select = (
            sa.select(_DEAD)
            .where(*conditions)
            .order_by(_DEAD.c.created_at, _DEAD.c.id)
            .limit(REDRIVE_PAGE)
        )
        outbox = self._outbox

        def work(connection: Connection) -> int:
            letters = [dict(row._mapping) for row in connection.execute(select)]
            if not letters:
                return 0
            rows = [
                {
                    "id": outbox.next_id(),
                    "webhook_id": letter["webhook_id"],
                    "session_id": letter["session_id"],
                    "event": letter["event"],
                    "lane": letter["lane"],
                    "idempotency_key": letter["idempotency_key"],
                    "delivery_id": letter["id"],
                    "body": letter["body"],
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error": None,
                    "created_at": letter["created_at"],
                }
                for letter in letters
            ]
            connection.execute(sa.insert(_OUTBOX), rows)
            taken = [letter["id"] for letter in letters]
            connection.execute(sa.delete(_DEAD).where(_DEAD.c.id.in_(taken)))
            deliveries = [Delivery.of_row(row) for row in rows]
            after_commit(connection, lambda: self.accept(deliveries))
            return len(rows)

        return work


def _searchable(*values: str | None) -> bool:
    """:func:`searchable` for optional filters (None matches anything)."""
    return searchable(*(value for value in values if value is not None))


def _existing_webhooks(connection: Connection, ids: set[str]) -> set[str]:
    table = WebhookRecord.__table__  # type: ignore[attr-defined]
    found = connection.execute(sa.select(table.c.id).where(table.c.id.in_(sorted(ids))))
    return {str(row[0]) for row in found}


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _describe(outcome: AttemptOutcome) -> str:
    if outcome.error:
        return shortened(outcome.error, _ERROR_MAX)
    text = f"HTTP {outcome.status}"
    excerpt = outcome.response_excerpt.strip()
    return shortened(f"{text}: {excerpt}", _ERROR_MAX) if excerpt else text
