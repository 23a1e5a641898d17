"""Reading and writing session rows (no lifecycle: that belongs to the session manager).

A session is addressed by its id or, as an enginehost extension of the contract, by its
name; :meth:`SessionStore.resolve` accepts either.

Every REST request naming a session, and every send, resolves it first, so the store
keeps a copy of each row it has seen in memory and answers :meth:`SessionStore.resolve`
from there: no database work and no thread hop. That is sound because the daemon is the
only writer of the sessions table and every write goes through this store, which
updates the copy once the write's transaction is over (:class:`_RowCache` has the rules
that keep it coherent when reads and writes overlap).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import JSON
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapper
from sqlmodel import Session, col, or_, select

from enginehost.core.db.after_commit import after_commit
from enginehost.core.db.database import Database
from enginehost.core.engine import utc_now
from enginehost.core.errors import ServiceError
from enginehost.core.sessions.models import NAME_MAX, SessionRecord
from enginehost.core.webhooks.catalogue import session_status_payload

if TYPE_CHECKING:
    from enginehost.core.webhooks.outbox import Outbox

__all__ = [
    "SessionExistsError",
    "SessionNameError",
    "SessionNotFoundError",
    "SessionStore",
    "shown",
]

T = TypeVar("T")

# Names appear in URLs and logs: letters, digits and . _ - only.
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$")

# Session ids are UUIDs (``models._new_id``). A name may look like one too, and then an
# id match must win over it (as in resolve's query), so such keys are never answered
# by name from memory.
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

_MAPPER: Mapper[SessionRecord] = sa_inspect(SessionRecord)
_COLUMNS = tuple(attribute.key for attribute in _MAPPER.column_attrs)
# Kept in memory as JSON text: a quarter of the memory of the parsed objects (a status
# history runs to 20 entries), and parsing it is about as fast as copying them, which
# each caller needs anyway.
_JSON_COLUMNS = frozenset(
    attribute.key
    for attribute in _MAPPER.column_attrs
    if isinstance(attribute.columns[0].type, JSON)
)


def _could_name_a_session(key: str) -> bool:
    return 0 < len(key) <= NAME_MAX and "\x00" not in key


def shown(key: str, limit: int = 64) -> str:
    """``key`` quoted for a message, shortened when long (messages echo user input)."""
    return repr(key if len(key) <= limit else key[:limit] + "…")


class SessionNotFoundError(ServiceError):
    """No session has that id or name (or the caller may not see it)."""

    status_code = 404
    default_code = "session_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"session {shown(key)} not found")


class SessionExistsError(ServiceError):
    status_code = 409
    default_code = "session_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"a session named {name!r} already exists")


class SessionNameError(ServiceError):
    status_code = 422
    default_code = "validation_failed"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid session name {shown(name)}: 1-{NAME_MAX} letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )

    @property
    def extra(self) -> dict[str, Any]:
        return {"errors": [{"path": "name", "message": self.message}]}


# ---------------------------------------------------------------------------- the cache


def _row_of(record: SessionRecord) -> dict[str, Any]:
    """The column values of ``record``, sharing no mutable object with it: JSON columns
    as JSON text, the others are immutable (strings, numbers, datetimes, None)."""
    row: dict[str, Any] = {}
    for key in _COLUMNS:
        value = getattr(record, key)
        row[key] = json.dumps(value) if key in _JSON_COLUMNS else value
    return row


def _record_of(row: dict[str, Any]) -> SessionRecord:
    """A new record holding a copy of ``row``: callers may change it freely.

    Built the way the ORM builds a loaded row (an instance with its state, values set
    directly): going through ``SessionRecord(...)`` costs many times the copy itself,
    and this runs on every look-up.
    """
    record = _MAPPER.class_manager.new_instance()
    values = record.__dict__
    values.update(row)
    for key in _JSON_COLUMNS:
        values[key] = json.loads(row[key])
    return record


class _RowCache:
    """Copies of session rows by id (and by name), and the rule for when to trust one.

    The store calls :meth:`begin` before each read or write that may bring a row back
    and :meth:`end` after it. A write that has finished calls :meth:`wrote` (or
    :meth:`deleted`, :meth:`wrote_any`), which drops the session's copy. A row that
    came back is only kept (:meth:`keep`) if no write of its session finished since the
    operation that read or wrote it began: such a write may have committed after that
    row was read, and whichever of two overlapping operations comes back last cannot
    tell whether its row is the older one. So an overlap costs one more database read,
    never a stale answer: once every write has come back, a copy in memory equals the
    database row.

    The clock counts finished writes. ``_finished`` (the clock when each session's last
    write finished) only matters to operations in flight, so it is emptied whenever
    none is; it never holds more than the sessions written meanwhile.
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}
        self._ids_by_name: dict[str, str] = {}
        self._clock = 0
        self._finished: dict[str, int] = {}
        self._finished_any = 0
        """The clock when the last delete, or write of sessions not named, finished."""
        self._in_flight = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> SessionRecord | None:
        """A copy of the row whose id or name is ``key``, if one is cached."""
        row = self._rows.get(key)
        if row is None:
            if _UUID.match(key):
                return None  # perhaps the id of a session not cached: ask the database
            session_id = self._ids_by_name.get(key)
            if session_id is None:
                return None
            row = self._rows[session_id]
        return _record_of(row)

    def begin(self) -> int:
        """Note an operation starting; returns the clock to pass to :meth:`keep`."""
        self._in_flight += 1
        return self._clock

    def end(self) -> None:
        """Note an operation ending (whether or not it kept a row)."""
        self._in_flight -= 1
        if not self._in_flight:
            self._finished.clear()  # no operation left that began before these writes

    def fresh(self, session_id: str, since: int) -> bool:
        """Whether no write of ``session_id`` finished after clock ``since``."""
        return self._finished_any <= since and self._finished.get(session_id, 0) <= since

    def keep(self, record: SessionRecord, since: int) -> None:
        """Cache ``record`` (read or written by an operation begun at ``since``), unless a
        write of that session finished meanwhile."""
        if self.fresh(record.id, since):
            self._store(_row_of(record))

    def wrote(self, session_id: str, record: SessionRecord | None = None, since: int = 0) -> None:
        """A write of ``session_id`` (begun at ``since``) is over, committed or not.

        ``record`` is the row it committed: cached if fresh. The freshness test comes
        before this write's own tick, which would otherwise fail it.
        """
        fresh = record is not None and self.fresh(session_id, since)
        self._clock += 1
        self._finished[session_id] = self._clock
        self._drop(session_id)
        if fresh and record is not None:
            self._store(_row_of(record))

    def deleted(self, session_id: str) -> None:
        """A delete of ``session_id`` is over, committed or not: drop its copy.

        It counts as a write of every session (deletes are rare), so that nothing in
        flight brings the row back and ``_finished`` need not remember a gone id.
        """
        self._clock += 1
        self._finished_any = self._clock
        self._drop(session_id)
        self._finished.pop(session_id, None)

    def wrote_any(self) -> None:
        """A write of sessions not known in advance is over: drop every copy."""
        self._clock += 1
        self._finished_any = self._clock
        self._rows.clear()
        self._ids_by_name.clear()

    def forget(self, session_id: str) -> None:
        """The database has no such session: drop any copy (nothing was written)."""
        self._drop(session_id)

    def _store(self, row: dict[str, Any]) -> None:
        session_id, name = row["id"], row["name"]
        self._drop(session_id)  # its old name may differ
        self._rows[session_id] = row
        self._ids_by_name[name] = session_id

    def _drop(self, session_id: str) -> None:
        row = self._rows.pop(session_id, None)
        if row is not None and self._ids_by_name.get(row["name"]) == session_id:
            del self._ids_by_name[row["name"]]


# One cache per open database, shared by every store over it (a test, or a benchmark,
# may make several): the rules above hold as long as every write of the table made
# through that database object goes through one of them.
# ---------------------------------------------------------------------------- the store


class SessionStore:
    """Session rows in the data database, looked up from memory (see the module doc)."""

    def __init__(self, database: Database, *, outbox: Outbox | None = None) -> None:
        self._database = database
        self._cache = database.shared("sessions.cache", _RowCache)
        self._outbox = outbox

    def cached_name(self, session_id: str) -> str | None:
        """The name of ``session_id`` if its row is cached (no database work: for event
        payloads built inside other writers' transactions)."""
        row = self._cache._rows.get(session_id)
        return None if row is None else str(row["name"])

    async def create(
        self, name: str, *, engine: str, config: dict[str, Any] | None = None
    ) -> SessionRecord:
        """A new session row; the unique index on ``name`` decides a duplicate."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise SessionNameError(name)
        record = SessionRecord(name=name, engine=engine, config=dict(config or {}))

        def work(session: Session) -> SessionRecord:
            session.add(record)
            try:
                session.flush()
            except IntegrityError:
                raise SessionExistsError(name) from None
            return record

        since = self._cache.begin()
        try:
            created = await self._database.run(work)
            # A new id: nothing to drop, but someone may have written it already.
            self._cache.keep(created, since)
            return created
        finally:
            self._cache.end()

    async def resolve(self, key: str) -> SessionRecord:
        """The session whose id or name is ``key`` (a copy: callers may change it)."""
        if not _could_name_a_session(key):
            # Longer than any id or name, or holding NUL (which PostgreSQL refuses in
            # text): no such session, and no need to ask the database.
            raise SessionNotFoundError(key)
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        def work(session: Session) -> SessionRecord | None:
            statement = select(SessionRecord).where(
                or_(col(SessionRecord.id) == key, col(SessionRecord.name) == key)
            )
            # An id match wins over a name that happens to equal another session's id.
            rows = session.exec(statement).all()
            return next((r for r in rows if r.id == key), rows[0] if rows else None)

        since = self._cache.begin()
        try:
            record = await self._database.run(work, readonly=True)
            if record is None:
                raise SessionNotFoundError(key)
            self._cache.keep(record, since)
            return record
        finally:
            self._cache.end()

    async def list(self, names: frozenset[str] | None = None) -> list[SessionRecord]:
        """Every session (or only those named in ``names``), oldest first."""

        def work(session: Session) -> list[SessionRecord]:
            statement = select(SessionRecord).order_by(
                col(SessionRecord.created_at), col(SessionRecord.id)
            )
            if names is not None:
                statement = statement.where(col(SessionRecord.name).in_(sorted(names)))
            return list(session.exec(statement).all())

        return await self._database.run(work, readonly=True)

    async def transition(
        self,
        session_id: str,
        status: str,
        *,
        reason: str | None = None,
        history_limit: int = 20,
        **changes: Any,
    ) -> tuple[SessionRecord, str | None]:
        """Move a session to ``status`` (recorded in its history with time and reason),
        applying ``changes`` in the same transaction; returns the row and the old status."""

        def work(session: Session) -> tuple[SessionRecord, str | None]:
            record = session.get(SessionRecord, session_id)
            if record is None:
                raise SessionNotFoundError(session_id)
            previous = record.status
            now = utc_now()
            if previous != status or reason:
                entry = {"status": status, "at": now.isoformat(), "reason": reason}
                record.status_history = [*record.status_history, entry][-history_limit:]
            record.status = status
            for field, value in changes.items():
                setattr(record, field, value)
            record.updated_at = now
            session.add(record)
            if outbox is not None and previous != status:
                # Written with the status itself (see enginehost.core.webhooks.outbox).
                outbox.stage(
                    session,
                    "session.status",
                    session_id,
                    lambda: session_status_payload(
                        session_name=record.name,
                        engine=record.engine,
                        status=status,
                        previous=previous,
                        reason=reason,
                    ),
                )
            return record, previous

        outbox = self._outbox
        return await self._write(session_id, work, lambda result: result[0])

    async def update(self, session_id: str, **changes: Any) -> SessionRecord:
        """Apply ``changes`` to a session row (bumps ``updated_at``)."""

        def work(session: Session) -> SessionRecord:
            record = session.get(SessionRecord, session_id)
            if record is None:
                raise SessionNotFoundError(session_id)
            for field, value in changes.items():
                setattr(record, field, value)
            record.updated_at = utc_now()
            session.add(record)
            return record

        return await self._write(session_id, work, lambda record: record)

    async def _write(
        self,
        session_id: str,
        work: Callable[[Session], T],
        written: Callable[[T], SessionRecord],
    ) -> T:
        """Run ``work``, a write of one session, and bring the cache up to date with it
        (``written`` picks the committed row out of its result)."""
        since = self._cache.begin()
        try:
            result = await self._database.run(work)
        except SessionNotFoundError:
            self._cache.forget(session_id)
            raise
        except BaseException:
            # It may have committed (a commit can fail late): assume it did.
            self._cache.wrote(session_id)
            raise
        else:
            self._cache.wrote(session_id, written(result), since)
            return result
        finally:
            self._cache.end()

    async def delete(self, session_id: str) -> bool:
        """Delete a session row; False when there was none (deleting twice is fine)."""

        outbox = self._outbox

        def work(session: Session) -> bool:
            record = session.get(SessionRecord, session_id)
            if record is None:
                return False
            session.delete(record)
            if outbox is not None:
                # The database deletes the session's webhooks with it; so must the index.
                after_commit(session, lambda: outbox.index.remove_session(session_id))
            return True

        try:
            return await self._database.run(work)
        finally:
            self._cache.deleted(session_id)

    async def reset_in_flight(
        self, statuses: frozenset[str], reason: str, *, history_limit: int = 20
    ) -> int:
        """At boot: every session left in a live-only status becomes ``disconnected``
        (its status history keeps the last ``history_limit`` transitions, as for any)."""

        outbox = self._outbox

        def work(session: Session) -> int:
            rows = session.exec(
                select(SessionRecord).where(col(SessionRecord.status).in_(sorted(statuses)))
            ).all()
            now = utc_now()
            announced: list[tuple[str, str | None, Any, str]] = []
            for record in rows:
                announced.append(
                    (
                        "session.status",
                        record.id,
                        session_status_payload(
                            session_name=record.name,
                            engine=record.engine,
                            status="disconnected",
                            previous=record.status,
                            reason=reason,
                        ),
                        "",
                    )
                )
                entry = {"status": "disconnected", "at": now.isoformat(), "reason": reason}
                record.status_history = [*record.status_history, entry][-history_limit:]
                record.status = "disconnected"
                record.reconnect_attempt = 0
                record.updated_at = now
                session.add(record)
            if outbox is not None:
                # Receivers learn of the disconnects the host's death caused.
                outbox.stage_many(session, announced)
            return len(rows)

        try:
            return await self._database.run(work)
        finally:
            self._cache.wrote_any()
