"""The audit log service: best-effort, batched writes; queries; retention.

Recording never waits on the database: :meth:`AuditLog.record` appends to a bounded
in-memory buffer (when it is full the oldest entry is dropped, counted, and a warning is
logged at most once a minute) and :meth:`AuditLog.run`, the background writer, drains it
in batches, one transaction per batch. A failed write is logged and its entries are lost:
the audit log never fails or slows the request it describes. Entries therefore appear in
:meth:`AuditLog.query` a fraction of a second after the call they record.

:meth:`AuditLog.run` also prunes entries older than ``retention_days`` when it starts and
once a day after that, and writes what is left in the buffer when it is cancelled.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import anyio
from sqlalchemy import ColumnElement, Table, delete, func, insert
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from enginehost.core.audit.models import AuditEntry
from enginehost.core.db.database import Database
from enginehost.core.engine import utc_now
from enginehost.core.logging import get_logger

__all__ = ["AuditLog", "AuditRecord"]

log = get_logger("enginehost.audit")

BUFFER_CAPACITY = 10_000
"""Entries held in memory at most; beyond that the oldest are dropped."""
BATCH_SIZE = 500
"""Entries written per transaction; this many waiting also wakes the writer early."""
WRITE_INTERVAL = 0.2
"""Seconds between the writer's rounds when fewer than :data:`BATCH_SIZE` entries wait."""
PRUNE_INTERVAL = 24 * 3600.0
FINAL_FLUSH_TIMEOUT = 5.0
"""Seconds the writer spends, once cancelled, writing what is left in the buffer."""
WARNING_INTERVAL = 60.0
"""Seconds between two warnings about dropped or lost entries."""

# Column widths of ``audit_log`` (PostgreSQL enforces them; SQLite would not).
_WIDTHS = {
    "key_id": 36,
    "key_prefix": 16,
    "role": 16,
    "session": 100,
    "action": 100,
    "client": 64,
    "detail": 1024,
}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry waiting in the buffer (see :class:`AuditEntry` for the columns)."""

    action: str
    outcome: int
    key_id: str | None = None
    key_prefix: str | None = None
    role: str | None = None
    session: str | None = None
    client: str | None = None
    detail: str | None = None
    at: datetime = field(default_factory=utc_now)

    def row(self) -> dict[str, Any]:
        """The values of the row, each cut to its column's width."""
        values: dict[str, Any] = {"at": self.at, "outcome": int(self.outcome)}
        for name, width in _WIDTHS.items():
            value = getattr(self, name)
            values[name] = None if value is None else str(value)[:width]
        return values


class _Throttle:
    """Says whether to log now: at most once per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = -math.inf

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._interval:
            return False
        self._last = now
        return True


class AuditLog:
    """The ``audit_log`` table of the main database, written in the background.

    ``record`` is meant to be called from the event loop's thread (the HTTP middleware);
    everything else is async.
    """

    def __init__(
        self,
        database: Database,
        *,
        retention_days: int,
        capacity: int = BUFFER_CAPACITY,
        batch_size: int = BATCH_SIZE,
        interval: float = WRITE_INTERVAL,
        prune_interval: float = PRUNE_INTERVAL,
        final_flush_timeout: float = FINAL_FLUSH_TIMEOUT,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        self.database = database
        self.retention_days = retention_days
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval = interval
        self.prune_interval = prune_interval
        self.final_flush_timeout = final_flush_timeout
        self.dropped = 0
        """Entries dropped because the buffer was full (since this object was made)."""
        self.lost = 0
        """Entries lost because writing them failed."""
        self._buffer: deque[AuditRecord] = deque()
        self._write_lock = anyio.Lock()
        self._wakeup: anyio.Event | None = None
        self._drop_warning = _Throttle(WARNING_INTERVAL)
        self._failure_warning = _Throttle(WARNING_INTERVAL)
        self._lost_unreported = 0

    # ----------------------------------------------------------------------- recording

    @property
    def pending(self) -> int:
        """Entries recorded but not written yet."""
        return len(self._buffer)

    def record(
        self,
        *,
        action: str,
        outcome: int,
        key_id: str | None = None,
        key_prefix: str | None = None,
        role: str | None = None,
        session: str | None = None,
        client: str | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Buffer one entry; never blocks, never raises for a full buffer."""
        self.add(
            AuditRecord(
                action=action,
                outcome=outcome,
                key_id=key_id,
                key_prefix=key_prefix,
                role=role,
                session=session,
                client=client,
                detail=detail,
                at=at if at is not None else utc_now(),
            )
        )

    def add(self, entry: AuditRecord) -> None:
        """Buffer ``entry`` (the oldest buffered entry makes room when the buffer is full)."""
        if len(self._buffer) >= self.capacity:
            self._buffer.popleft()
            self._count_dropped(1)
        self._buffer.append(entry)
        if len(self._buffer) >= self.batch_size and self._wakeup is not None:
            self._wakeup.set()

    def _count_dropped(self, count: int) -> None:
        self.dropped += count
        if self._drop_warning.ready():
            log.warning(
                "audit.buffer_full",
                dropped_total=self.dropped,
                capacity=self.capacity,
                hint="audit entries are recorded faster than the main database takes them",
            )

    # ------------------------------------------------------------------------- writing

    async def flush(self) -> None:
        """Write everything buffered now (failures are logged, not raised)."""
        async with self._write_lock:
            while self._buffer:
                count = min(self.batch_size, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(count)]
                await self._write(batch)

    async def _write(self, batch: list[AuditRecord]) -> None:
        try:
            await self.database.run_connection(partial(_insert, batch=batch))
        except anyio.get_cancelled_exc_class():
            # Cancelled before the transaction ran (the worker thread is never
            # interrupted once started): keep the entries for the final flush.
            self._requeue(batch)
            raise
        except Exception as exc:
            self.lost += len(batch)
            self._lost_unreported += len(batch)
            if self._failure_warning.ready():
                log.error(
                    "audit.write_failed",
                    lost=self._lost_unreported,
                    lost_total=self.lost,
                    error=str(exc) or type(exc).__name__,
                )
                self._lost_unreported = 0

    def _requeue(self, batch: Sequence[AuditRecord]) -> None:
        entries = [*batch, *self._buffer]
        overflow = max(0, len(entries) - self.capacity)
        self._buffer = deque(entries[overflow:])
        if overflow:
            self._count_dropped(overflow)

    async def run(self) -> None:
        """The background writer and daily pruning; runs until cancelled.

        Once cancelled it writes what is left in the buffer, for at most
        ``final_flush_timeout`` seconds (shielded from the cancellation).
        """
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._prune_periodically)
                await self._write_periodically()
        finally:
            with anyio.move_on_after(self.final_flush_timeout, shield=True):
                await self.flush()
            if self._buffer:
                log.warning("audit.unwritten_at_exit", count=len(self._buffer))

    async def _write_periodically(self) -> None:
        while True:
            if len(self._buffer) < self.batch_size:
                self._wakeup = anyio.Event()
                with anyio.move_on_after(self.interval):
                    await self._wakeup.wait()
                self._wakeup = None
            try:
                await self.flush()
            except Exception as exc:  # a bug here must not stop auditing for good
                log.error("audit.writer_error", error=str(exc), exc_info=exc)

    async def _prune_periodically(self) -> None:
        while True:
            try:
                removed = await self.prune()
            except Exception as exc:
                log.error("audit.prune_failed", error=str(exc) or type(exc).__name__)
            else:
                if removed:
                    log.info("audit.pruned", removed=removed, retention_days=self.retention_days)
            await anyio.sleep(self.prune_interval)

    # ----------------------------------------------------------------- reading, pruning

    async def prune(self, now: datetime | None = None) -> int:
        """Delete entries older than ``retention_days`` (before ``now``); how many went."""
        cutoff = (now if now is not None else utc_now()) - timedelta(days=self.retention_days)
        _require_aware("now", cutoff)
        return await self.database.run(_delete_before, cutoff)

    async def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
        session: str | None = None,
        action: str | None = None,
        outcome: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[AuditEntry], int]:
        """One page of entries, newest first, and how many match in all.

        ``since`` is inclusive, ``until`` exclusive; both must be timezone-aware. The
        other filters match exactly.
        """
        _require_aware("since", since)
        _require_aware("until", until)
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset at least 0")
        conditions: list[ColumnElement[bool]] = []
        if since is not None:
            conditions.append(col(AuditEntry.at) >= since)
        if until is not None:
            conditions.append(col(AuditEntry.at) < until)
        if key_id is not None:
            conditions.append(col(AuditEntry.key_id) == key_id)
        if session is not None:
            conditions.append(col(AuditEntry.session) == session)
        if action is not None:
            conditions.append(col(AuditEntry.action) == action)
        if outcome is not None:
            conditions.append(col(AuditEntry.outcome) == outcome)

        def work(db: Session) -> tuple[list[AuditEntry], int]:
            total = db.exec(select(func.count()).select_from(AuditEntry).where(*conditions)).one()
            statement = (
                select(AuditEntry)
                .where(*conditions)
                .order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc())
                .offset(offset)
                .limit(limit)
            )
            return list(db.exec(statement).all()), int(total)

        return await self.database.run(work, readonly=True)


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {value!r}")


_INSERT = insert(cast(Table, AuditEntry.__table__))  # type: ignore[attr-defined]


def _insert(connection: Connection, batch: list[AuditRecord]) -> None:
    # The table on a plain connection, not the entity in an ORM session: the ORM's
    # bookkeeping cost more than the insert, and every mutating request makes a row.
    connection.execute(_INSERT, [entry.row() for entry in batch])


def _delete_before(db: Session, cutoff: datetime) -> int:
    result = db.exec(delete(AuditEntry).where(col(AuditEntry.at) < cutoff))
    return int(result.rowcount)
