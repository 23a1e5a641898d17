"""Reading and writing session rows (no lifecycle: that belongs to the session manager).

A session is addressed by its id or, as an enginehost extension of the contract, by its
name; :meth:`SessionStore.resolve` accepts either.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select

from enginehost.core.db.database import Database
from enginehost.core.engine import utc_now
from enginehost.core.errors import ServiceError
from enginehost.core.sessions.models import NAME_MAX, SessionRecord

__all__ = [
    "SessionExistsError",
    "SessionNameError",
    "SessionNotFoundError",
    "SessionStore",
    "shown",
]

# Names appear in URLs and logs: letters, digits and . _ - only.
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$")


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


class SessionStore:
    """Session rows in the data database."""

    def __init__(self, database: Database) -> None:
        self._database = database

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

        return await self._database.run(work)

    async def resolve(self, key: str) -> SessionRecord:
        """The session whose id or name is ``key``."""
        if not _could_name_a_session(key):
            # Longer than any id or name, or holding NUL (which PostgreSQL refuses in
            # text): no such session, and no need to ask the database.
            raise SessionNotFoundError(key)

        def work(session: Session) -> SessionRecord | None:
            statement = select(SessionRecord).where(
                or_(col(SessionRecord.id) == key, col(SessionRecord.name) == key)
            )
            # An id match wins over a name that happens to equal another session's id.
            rows = session.exec(statement).all()
            return next((r for r in rows if r.id == key), rows[0] if rows else None)

        record = await self._database.run(work, readonly=True)
        if record is None:
            raise SessionNotFoundError(key)
        return record

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
            return record, previous

        return await self._database.run(work)

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

        return await self._database.run(work)

    async def delete(self, session_id: str) -> bool:
        """Delete a session row; False when there was none (deleting twice is fine)."""

        def work(session: Session) -> bool:
            record = session.get(SessionRecord, session_id)
            if record is None:
                return False
            session.delete(record)
            return True

        return await self._database.run(work)

    async def reset_in_flight(self, statuses: frozenset[str], reason: str) -> int:
        """At boot: every session left in a live-only status becomes ``disconnected``."""

        def work(session: Session) -> int:
            rows = session.exec(
                select(SessionRecord).where(col(SessionRecord.status).in_(sorted(statuses)))
            ).all()
            now = utc_now()
            for record in rows:
                entry = {"status": "disconnected", "at": now.isoformat(), "reason": reason}
                record.status_history = [*record.status_history, entry][-20:]
                record.status = "disconnected"
                record.reconnect_attempt = 0
                record.updated_at = now
                session.add(record)
            return len(rows)

        return await self._database.run(work)
