"""The message store: every message of every session.

The store is engine-neutral (it never calls an engine); the session manager feeds it
what the API sends and what engines report.

**Writes are grouped.** Every write goes through one
:class:`~enginehost.core.db.group_commit.GroupCommit` queue: whatever is waiting when
the database is free runs as one transaction, in arrival order. A send's pending row,
its engine echo, its id and its acks are each a small operation, so under load dozens
of them share a commit, and one operation never runs beside another: read-then-write
logic below needs no locks and has no races with the store's other writes. (The
daemon is the only writer of the data database's messages.) The hot statements are
built once in SQLAlchemy Core; records handed back are detached and read-only.

Races with the outside world are decided by unique indexes:

* **Idempotency.** :meth:`MessageStore.create_pending` inserts with ``ON CONFLICT DO
  NOTHING`` on the unique (session_id, idempotency_key) index; no row inserted means the
  key was used, and the first request's row is returned with ``created=False``.
* **Re-fired events.** :meth:`~MessageStore.store_inbound` and
  :meth:`~MessageStore.store_own` insert the same way on the unique
  (session_id, message_id) index: no row inserted means the event was stored already.
* **The echo race.** An engine may report our own send back as an own-message echo
  *before* the send path stores the engine id it got. The session manager holds such
  echoes until the send is recorded (:mod:`enginehost.core.sessions.echoes`), so the
  echo's insert normally hits the index and :meth:`~MessageStore.store_own` returns the
  stored row. When an echo is stored first all the same (it was not held), it is a
  row of its own: :meth:`~MessageStore.mark_sent` finds it and merges the two (the
  pending row keeps its id and idempotency key and takes the better status of both;
  the echo row is deleted). One row either way.
* **Early acks.** An ack can name an engine id no row carries yet. It is kept in
  ``early_acks`` (the furthest status only) and applied when a send or an own message
  stores that id.

Status moves forward only (see :mod:`.status`): pending → sent → delivered → read;
``failed`` is reachable from pending and sent only and is final. An ack that cannot
move a message the store wrote recently is settled from memory
(:class:`~enginehost.core.messages.status.KnownStatus`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

import sqlalchemy as sa
from sqlalchemy import Table, bindparam, case
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import configure_mappers
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, and_, col, func, or_, select

from enginehost.core.db.database import Database
from enginehost.core.db.direct import DirectStatement
from enginehost.core.db.group_commit import GroupCommit
from enginehost.core.db.lookups import dialect_insert, searchable
from enginehost.core.engine import AckStatus, EngineMessage, MessageType, utc_now
from enginehost.core.errors import FieldError, ServiceError
from enginehost.core.messages.events import MessageEvents
from enginehost.core.messages.models import (
    CHAT_ID_MAX,
    IDEMPOTENCY_KEY_MAX,
    MESSAGE_ID_MAX,
    SESSION_ID_MAX,
    EarlyAck,
    MessageDirection,
    MessageRecord,
    new_id,
)
from enginehost.core.messages.status import AckedMessage, KnownStatus, advance

if TYPE_CHECKING:
    from enginehost.core.events import EventBus
    from enginehost.core.webhooks.outbox import Outbox

__all__ = [
    "HISTORY_LIMIT_MAX",
    "RAW_MAX_BYTES",
    "STALE_PENDING_REASON",
    "AckedMessage",
    "InvalidCursorError",
    "MessageError",
    "MessageIdConflictError",
    "MessageNotFoundError",
    "MessageStore",
    "MessageValidationError",
    "advance",
]

HISTORY_LIMIT_MAX: Final = 500
STALE_PENDING_REASON: Final = "the host stopped before the send completed"
RAW_MAX_BYTES: Final = 16 * 1024
"""Engine extras larger than this (as JSON) are not kept: only a note of their size."""

_CURSOR_MAX = 512

_MESSAGES = cast(Table, MessageRecord.__table__)  # type: ignore[attr-defined]
_EARLY_ACKS = cast(Table, EarlyAck.__table__)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ errors


class MessageError(ServiceError):
    """Base class: a caller's mistake about messages."""


class MessageNotFoundError(MessageError):
    status_code = 404
    default_code = "message_not_found"


class MessageValidationError(MessageError, FieldError):
    """A value given to the store is not acceptable; ``field`` says which."""


class InvalidCursorError(MessageError):
    status_code = 422
    default_code = "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("the cursor is malformed: pass back the nextCursor of a previous page")


class MessageIdConflictError(MessageError):
    """:meth:`MessageStore.mark_sent` named another engine id than the one stored."""

    status_code = 409
    default_code = "message_id_conflict"

    def __init__(self, record_id: str, stored: str, given: str) -> None:
        super().__init__(
            f"message {record_id!r} already has the engine id {stored!r}, not {given!r}"
        )


# -------------------------------------------------------------------------- validation


def _text(field: str, value: object, maximum: int) -> str:
    if not isinstance(value, str):
        raise MessageValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value or len(value) > maximum:
        raise MessageValidationError(field, f"must be 1 to {maximum} characters, got {len(value)}")
    if "\x00" in value:
        raise MessageValidationError(field, "must not contain NUL characters")
    return value


def _optional_text(field: str, value: object, maximum: int) -> str | None:
    return None if value is None else _text(field, value, maximum)


def _body(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageValidationError("body", f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise MessageValidationError("body", "must not contain NUL characters")
    return value


def _message_type(value: object) -> str:
    try:
        return MessageType(str(value)).value
    except ValueError:
        allowed = ", ".join(t.value for t in MessageType)
        raise MessageValidationError("type", f"must be one of {allowed}") from None


def _aware(field: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise MessageValidationError(field, "must be a timezone-aware datetime")
    return value


# A lookup value that can match no row (see searchable): ids and engine ids fit 200.
_searchable = partial(searchable, max_length=200)


def _engine_id(field: str, value: object, maximum: int) -> str:
    # Engine-reported values are not a caller's mistake: a bad one is a plugin bug.
    if not isinstance(value, str) or not value or len(value) > maximum or "\x00" in value:
        raise ValueError(f"engine message {field} must be 1 to {maximum} characters: {value!r}")
    return value


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")  # PostgreSQL refuses NUL in JSON text
    if isinstance(value, dict):
        return {_clean_json(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _raw(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """Engine extras as plain JSON, or a note of their size when they are not small."""
    if not raw:
        return None
    text = json.dumps(dict(raw), default=str)
    size = len(text.encode())
    if size > RAW_MAX_BYTES:
        return {"truncated": True, "bytes": size}
    cleaned: dict[str, Any] = _clean_json(json.loads(text))
    return cleaned


def _engine_values(session_id: str, message: EngineMessage, *, own: bool) -> dict[str, Any]:
    """The full column values of a row for ``message`` (no column left to defaults)."""
    _engine_id("session_id", session_id, SESSION_ID_MAX)
    timestamp = message.timestamp
    if not isinstance(timestamp, datetime) or timestamp.tzinfo is None:
        raise ValueError(f"engine message timestamp must be timezone-aware: {timestamp!r}")
    from_me = own or message.from_me
    now = utc_now()
    quoted = message.quoted_message_id
    return {
        "id": new_id(),
        "session_id": session_id,
        "chat_id": _engine_id("chat_id", message.chat_id, CHAT_ID_MAX),
        "message_id": _engine_id("message_id", message.message_id, MESSAGE_ID_MAX),
        "direction": (MessageDirection.OUTGOING if from_me else MessageDirection.INCOMING).value,
        "type": MessageType(message.type).value,
        # An own message exists on the server (sent); an incoming one reached us.
        "status": (AckStatus.SENT if from_me else AckStatus.DELIVERED).value,
        "body": None if message.body is None else message.body.replace("\x00", "\ufffd"),
        "from_me": from_me,
        "has_media": bool(message.has_media),
        "quoted_message_id": (
            None if quoted is None else _engine_id("quoted_message_id", quoted, MESSAGE_ID_MAX)
        ),
        "failure_reason": None,
        "idempotency_key": None,
        "timestamp": timestamp,
        "created_at": now,
        "updated_at": now,
        "raw": _raw(message.raw),
    }


# ------------------------------------------------------------------------------ cursor


def _encode_cursor(record: MessageRecord) -> str:
    payload = json.dumps({"t": record.timestamp.isoformat(), "i": record.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(cursor: object) -> tuple[datetime, str]:
    if not isinstance(cursor, str) or not cursor or len(cursor) > _CURSOR_MAX:
        raise InvalidCursorError()
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        payload = json.loads(raw.decode())
        if not isinstance(payload, dict) or set(payload) != {"t", "i"}:
            raise ValueError("unexpected shape")
        at, record_id = payload["t"], payload["i"]
        if not isinstance(at, str) or not isinstance(record_id, str):
            raise ValueError("unexpected types")
        timestamp = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursorError() from None
    if timestamp.tzinfo is None or not _searchable(record_id) or len(record_id) > 36:
        raise InvalidCursorError()
    return timestamp, record_id


# ----------------------------------------------------------------------- database work


def _record(row: Mapping[str, Any]) -> MessageRecord:
    """A detached, read-only record from a result row of every column.

    Built with ``model_construct``: the ORM constructor's bookkeeping cost ten times as
    much, for records that are only read (setting an attribute raises).
    """
    return MessageRecord.model_construct(**row)


def _one(row: dict[str, Any] | None) -> dict[str, Any]:
    """A row a statement must have returned (it was found in this transaction)."""
    if row is None:
        raise RuntimeError("a message row vanished inside its transaction")
    return row


def _later(now: datetime, created_at: datetime) -> datetime:
    # updated_at never precedes created_at, even when the clock steps back.
    return max(now, created_at)


class _Statements:
    """The write path's statements, compiled once per database and run on the driver's
    cursor (see :mod:`enginehost.core.db.direct`: SQLAlchemy's per-execution work cost
    several times what the statements do)."""

    def __init__(self, backend: str, dialect: Dialect) -> None:
        m, e = _MESSAGES, _EARLY_ACKS
        every = list(m.c)
        names = [c.key for c in every]

        def direct(
            statement: Any, columns: Sequence[Any] = (), keys: Sequence[str] | None = None
        ) -> DirectStatement:
            return DirectStatement(statement, dialect, columns=columns, column_keys=keys)

        in_session = m.c.session_id == bindparam("session_id")
        self.by_id = direct(sa.select(m).where(m.c.id == bindparam("record_id")), every)
        self.by_message_id = direct(
            sa.select(m).where(in_session, m.c.message_id == bindparam("message_id")), every
        )
        self.by_idempotency_key = direct(
            sa.select(m).where(in_session, m.c.idempotency_key == bindparam("idempotency_key")),
            every,
        )
        self.insert = direct(m.insert(), keys=names)
        # Executed over many rows at once ("insertmanyvalues", through SQLAlchemy: one
        # cached statement; a multi-row VALUES compiled per batch cost more than the
        # inserts). Not direct: its RETURNING spans several statements.
        self.insert_many = (
            dialect_insert(backend, m)
            .on_conflict_do_nothing(index_elements=["session_id", "message_id"])
            .returning(m.c.session_id, m.c.message_id, m.c.from_me)
        )

        def insert_unless_taken(*unique: str) -> DirectStatement:
            # No row back: the unique index ``unique`` already has the new row's values.
            statement = dialect_insert(backend, m).on_conflict_do_nothing(
                index_elements=list(unique)
            )
            return direct(statement.returning(m.c.id), [m.c.id], names)

        self.insert_keyed = insert_unless_taken("session_id", "idempotency_key")
        self.insert_engine = insert_unless_taken("session_id", "message_id")

        def update(*keys: str) -> DirectStatement:
            # SET takes the parameters named by ``keys``; record_id names the row
            # (parameters of an UPDATE may not share a column's name).
            statement = sa.update(m).where(m.c.id == bindparam("record_id")).returning(*m.c)
            return direct(statement, every, keys)

        self.mark_sent = update(
            "message_id",
            "status",
            "timestamp",
            "updated_at",
            "idempotency_key",
            "raw",
            "quoted_message_id",
        )
        # mark_sent in one statement for the usual case: the row is pending without an
        # id, no other row of its session has the id (an echo stored first), and its
        # status moves to sent (a failed row stays failed). No row back: the full path.
        echo = m.alias("echo")
        now = bindparam("now", type_=m.c.updated_at.type)
        later = case((m.c.created_at > now, m.c.created_at), else_=now)  # see _later()
        self.mark_sent_plain = direct(
            sa.update(m)
            .where(
                m.c.id == bindparam("record_id"),
                m.c.message_id.is_(None),
                ~sa.exists().where(
                    echo.c.session_id == m.c.session_id,
                    echo.c.message_id == bindparam("new_message_id"),
                ),
            )
            .values(
                message_id=bindparam("new_message_id"),
                status=case(
                    (m.c.status == AckStatus.PENDING.value, AckStatus.SENT.value),
                    else_=m.c.status,
                ),
                timestamp=bindparam("new_timestamp", type_=m.c.timestamp.type),
                updated_at=later,
            )
            .returning(*m.c),
            every,
        )
        self.mark_failed = update("status", "failure_reason", "updated_at")
        self.set_status = update("status")
        self.delete = direct(sa.delete(m).where(m.c.id == bindparam("record_id")))
        early_key = (
            e.c.session_id == bindparam("session_id"),
            e.c.message_id == bindparam("message_id"),
        )
        self.take_early_ack = direct(
            sa.delete(e).where(*early_key).returning(e.c.status), [e.c.status]
        )
        # What mark_sent needs of the pending row and of an echo (the full rows cost
        # their timestamps' and JSON's conversion for nothing).
        for_sent = [
            m.c.id,
            m.c.session_id,
            m.c.message_id,
            m.c.status,
            m.c.created_at,
            m.c.idempotency_key,
            m.c.raw,
            m.c.quoted_message_id,
        ]
        self.pending_for_sent = direct(
            sa.select(*for_sent).where(m.c.id == bindparam("record_id")), for_sent
        )
        for_merge = [m.c.id, m.c.status, m.c.idempotency_key, m.c.raw, m.c.quoted_message_id]
        self.echo_for_sent = direct(
            sa.select(*for_merge).where(in_session, m.c.message_id == bindparam("message_id")),
            for_merge,
        )
        self.status_by_message_id = direct(
            sa.select(m.c.id, m.c.status).where(
                in_session, m.c.message_id == bindparam("message_id")
            ),
            [m.c.id, m.c.status],
        )
        self.early_ack = direct(sa.select(e.c.status).where(*early_key), [e.c.status])
        self.early_ack_keys = direct(
            sa.select(e.c.session_id, e.c.message_id), [e.c.session_id, e.c.message_id]
        )
        keep = dialect_insert(backend, e)
        self.keep_early_ack = direct(
            keep.on_conflict_do_update(
                index_elements=["session_id", "message_id"],
                set_={"status": keep.excluded.status, "at": keep.excluded.at},
            ),
            keys=["session_id", "message_id", "status", "at"],
        )
        # One statement per ack in the common case: the row moves only from a status
        # the ack advances (see advance()); no row back means "not advanced" or "no
        # such row yet", told apart by a read only then.
        self.ack = {
            status: direct(
                sa.update(m)
                .where(
                    m.c.session_id == bindparam("key_session_id"),
                    m.c.message_id == bindparam("key_message_id"),
                    # Literal values: an IN of bound values is expanded per execution.
                    m.c.status.in_([sa.literal_column(f"'{s}'") for s in _advanced_by(status)]),
                )
                .values(status=status, updated_at=later)
                .returning(m.c.id, m.c.status, m.c.chat_id, m.c.from_me),
                [m.c.id, m.c.status, m.c.chat_id, m.c.from_me],
            )
            for status in _STATUSES
            if status != AckStatus.PENDING
        }


_STATUSES: Final = tuple(s.value for s in AckStatus)


def _advanced_by(status: str) -> list[str]:
    """The statuses an ack of ``status`` moves forward (to ``status``)."""
    return [s for s in _STATUSES if s != status and advance(s, status) == status]


class _EarlyAckIndex:
    """The (session, engine id) pairs that may have an early ack kept: a superset.

    Every stored engine id would otherwise cost a DELETE on ``early_acks`` to look for
    an ack that almost never came first. Loaded from the table at first use, then
    added to whenever an early ack is kept (a kept row rolled back stays in: a false
    "maybe" costs one statement, a missing one would lose an ack). Only the store's
    serialized writes use it.
    """

    def __init__(self) -> None:
        self._keys: set[tuple[str, str]] | None = None

    def may_have(self, connection: Connection, sql: _Statements, key: tuple[str, str]) -> bool:
        return key in self._loaded(connection, sql)

    def add(self, connection: Connection, sql: _Statements, key: tuple[str, str]) -> None:
        self._loaded(connection, sql).add(key)

    def _loaded(self, connection: Connection, sql: _Statements) -> set[tuple[str, str]]:
        if self._keys is None:
            rows = sql.early_ack_keys.rows(connection, {})
            self._keys = {(row["session_id"], row["message_id"]) for row in rows}
        return self._keys


@dataclass(frozen=True, slots=True)
class _Writer:
    """What every store of one database shares, so that its writes stay serialized."""

    writes: GroupCommit
    sql: _Statements
    early_acks: _EarlyAckIndex
    known: KnownStatus


def _writer_for(database: Database, max_batch: int) -> _Writer:
    return database.shared(
        "messages.writer",
        lambda: _Writer(
            GroupCommit(database, max_batch=max_batch, refusals=(MessageError,)),
            _Statements(database.backend, database.engine.dialect),
            _EarlyAckIndex(),
            KnownStatus(),
        ),
    )


def _take_early_ack(
    connection: Connection, writer: _Writer, session_id: str, message_id: str
) -> str | None:
    """Remove the early ack kept for ``message_id``: its status, None when there is none."""
    if not writer.early_acks.may_have(connection, writer.sql, (session_id, message_id)):
        return None
    row = writer.sql.take_early_ack.first(
        connection, {"session_id": session_id, "message_id": message_id}
    )
    return None if row is None else str(row["status"])


def _with_early_ack(
    connection: Connection, writer: _Writer, row: Mapping[str, Any]
) -> MessageRecord:
    """The record of ``row``, a row that has just got its engine id, moved forward by the
    early ack kept for that id, if any (and the early ack removed)."""
    early = _take_early_ack(connection, writer, row["session_id"], row["message_id"])
    status = row["status"] if early is None else advance(row["status"], early)
    if status == row["status"]:
        return _record(row)
    changes = {"record_id": row["id"], "status": status}
    return _record(_one(writer.sql.set_status.first(connection, changes)))


def _advance_row(
    connection: Connection, statements: _Statements, session_id: str, message_id: str, status: str
) -> dict[str, Any] | None:
    """Move the row of ``message_id`` forward to ``status``: its id and new status, or
    None when there is no such row or ``status`` would not move it (see :func:`advance`)."""
    return statements.ack[status].first(
        connection,
        {"key_session_id": session_id, "key_message_id": message_id, "now": utc_now()},
    )


def _history_conditions(
    session_id: str,
    chat_id: str | None,
    direction: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    from_me: bool | None,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [col(MessageRecord.session_id) == session_id]
    if chat_id is not None:
        conditions.append(col(MessageRecord.chat_id) == chat_id)
    if direction is not None:
        conditions.append(col(MessageRecord.direction) == direction)
    if status is not None:
        conditions.append(col(MessageRecord.status) == status)
    if since is not None:
        conditions.append(col(MessageRecord.timestamp) >= since)
    if until is not None:
        conditions.append(col(MessageRecord.timestamp) < until)
    if from_me is not None:
        conditions.append(col(MessageRecord.from_me) == from_me)
    return conditions


# ------------------------------------------------------------------------------- store


class MessageStore:
    """The messages of every session, in the data database.

    ``max_batch`` caps the operations per transaction of the database's write queue; the
    queue is shared, so the first store made for a database sets it.
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 256,
        outbox: Outbox | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self._database = database
        # message.* events: staged for webhooks with each change, published once committed.
        self._announce = MessageEvents(outbox, bus)
        # Stores of one database share its write queue (see the module docs).
        self._writer = _writer_for(database, max_batch)
        self._sql = self._writer.sql
        # Records built by _record() read through the ORM's attribute descriptors, which
        # work only once the mappers are configured (a first query would do it too).
        configure_mappers()
        self._writes = self._writer.writes

    @property
    def writes(self) -> GroupCommit:
        """The store's write queue (its counters show how writes were grouped)."""
        return self._writes

    # ------------------------------------------------------------------------ sends

    async def create_pending(
        self,
        session_id: str,
        *,
        chat_id: str,
        type: MessageType | str,
        body: str | None,
        has_media: bool = False,
        quoted_message_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[MessageRecord, bool]:
        """A pending outgoing message (no engine id yet) and whether it was created.

        With an ``idempotency_key`` the session already used, nothing is inserted: the
        row of the first request comes back with ``False`` (whatever its other fields).
        """
        now = utc_now()
        values: dict[str, Any] = {
            "id": new_id(),
            "session_id": _text("session_id", session_id, SESSION_ID_MAX),
            "chat_id": _text("chat_id", chat_id, CHAT_ID_MAX),
            "message_id": None,
            "direction": MessageDirection.OUTGOING.value,
            "type": _message_type(type),
            "status": AckStatus.PENDING.value,
            "body": _body(body),
            "from_me": True,
            "has_media": bool(has_media),
            "quoted_message_id": _optional_text(
                "quoted_message_id", quoted_message_id, MESSAGE_ID_MAX
            ),
            "failure_reason": None,
            "idempotency_key": _optional_text(
                "idempotency_key", idempotency_key, IDEMPOTENCY_KEY_MAX
            ),
            "timestamp": now,
            "created_at": now,
            "updated_at": now,
            "raw": None,
        }
        sql = self._sql

        def work(connection: Connection) -> tuple[MessageRecord, bool]:
            if values["idempotency_key"] is None:
                sql.insert.run(connection, values)
                return _record(values), True
            # The unique (session_id, idempotency_key) index decides: no row back means
            # the key was used, and the first request's row is the answer.
            if sql.insert_keyed.first(connection, values) is not None:
                return _record(values), True
            row = sql.by_idempotency_key.first(
                connection,
                {"session_id": values["session_id"], "idempotency_key": values["idempotency_key"]},
            )
            return _record(_one(row)), False

        return await self._writes.submit(work)

    async def mark_sent(
        self, record_id: str, *, message_id: str, timestamp: datetime
    ) -> MessageRecord:
        """Store the engine id of a send and move it to ``sent`` (forward only).

        A failed send stays failed but still gets the id, so its echo and acks do not
        make a second row. An own-message echo already stored under ``message_id`` is
        merged into this row (see the module docs); early acks of the id are applied.
        Calling it again with the same id changes nothing; with another id it is
        :class:`MessageIdConflictError`.
        """
        message_id = _text("message_id", message_id, MESSAGE_ID_MAX)
        timestamp = _aware("timestamp", timestamp)
        if not _searchable(record_id):
            raise _not_found(record_id)
        sql, writer = self._sql, self._writer
        plain = {
            "record_id": record_id,
            "new_message_id": message_id,
            "new_timestamp": timestamp,
            "now": utc_now(),
        }

        announce = self._announce

        def work(connection: Connection) -> MessageRecord:
            done = sql.mark_sent_plain.first(connection, plain)
            if done is not None:
                record = _with_early_ack(connection, writer, done)
                if record.status != AckStatus.FAILED:
                    announce.sent(connection, record)
                return record
            row = sql.pending_for_sent.first(connection, {"record_id": record_id})
            if row is None:
                raise _not_found(record_id)
            if row["message_id"] is not None:
                if row["message_id"] != message_id:
                    raise MessageIdConflictError(record_id, row["message_id"], message_id)
                return _record(_one(sql.by_id.first(connection, {"record_id": record_id})))
            status = advance(row["status"], AckStatus.SENT.value)
            early = _take_early_ack(connection, writer, row["session_id"], message_id)
            if early is not None:
                status = advance(status, early)
            values: dict[str, Any] = {
                "record_id": row["id"],
                "message_id": message_id,
                "timestamp": timestamp,
                "updated_at": _later(utc_now(), row["created_at"]),
                "idempotency_key": row["idempotency_key"],
                "raw": row["raw"],
                "quoted_message_id": row["quoted_message_id"],
            }
            # Engines usually echo a send before it returns: the echo is a row of its
            # own by now, merged into this one (which keeps its id and key).
            echo = sql.echo_for_sent.first(
                connection, {"session_id": row["session_id"], "message_id": message_id}
            )
            if echo is not None:
                status = advance(status, echo["status"])
                values["idempotency_key"] = row["idempotency_key"] or echo["idempotency_key"]
                values["raw"] = row["raw"] or echo["raw"]
                values["quoted_message_id"] = row["quoted_message_id"] or echo["quoted_message_id"]
                sql.delete.run(connection, {"record_id": echo["id"]})
            values["status"] = status
            record = _record(_one(sql.mark_sent.first(connection, values)))
            # A merged echo was announced when it was stored; a failed send stays failed
            # (its message.failed went out).
            if echo is None and record.status != AckStatus.FAILED:
                announce.sent(connection, record)
            return record

        record = await self._writes.submit(work)
        self._note(record)
        return record

    async def mark_failed(self, record_id: str, reason: str) -> MessageRecord:
        """Fail a pending send with ``reason``. A row past pending is returned unchanged
        (a send that reached the server did not fail; failed is final)."""
        reason = _body(reason) or "failed"
        if not _searchable(record_id):
            raise _not_found(record_id)
        sql, announce = self._sql, self._announce

        def work(connection: Connection) -> MessageRecord:
            row = sql.by_id.first(connection, {"record_id": record_id})
            if row is None:
                raise _not_found(record_id)
            if row["status"] != AckStatus.PENDING:
                return _record(row)
            changes = {
                "record_id": row["id"],
                "status": AckStatus.FAILED.value,
                "failure_reason": reason,
                "updated_at": _later(utc_now(), row["created_at"]),
            }
            record = _record(_one(sql.mark_failed.first(connection, changes)))
            announce.failed(connection, [record])
            return record

        # Nothing to remember for acks: a row it fails was pending, without an engine id.
        return await self._writes.submit(work)

    async def fail_stale_pending(self, reason: str = STALE_PENDING_REASON) -> int:
        """At boot: every pending send (of any session) fails with ``reason``; the count."""
        statement = (
            sa.update(_MESSAGES)
            .where(_MESSAGES.c.status == AckStatus.PENDING.value)
            .values(status=AckStatus.FAILED.value, failure_reason=reason, updated_at=utc_now())
            .returning(*_MESSAGES.c)
        )
        announce = self._announce

        def work(connection: Connection) -> int:
            failed = [_record(dict(row._mapping)) for row in connection.execute(statement)]
            announce.failed(connection, failed)
            return len(failed)

        return await self._writes.submit(work)

    # ----------------------------------------------------------------- engine events

    async def store_inbound(
        self, session_id: str, message: EngineMessage
    ) -> tuple[MessageRecord, bool]:
        """Store a message an engine reported; ``False`` (and the stored row) for a
        re-fired event. Direction follows ``message.from_me``."""
        return await self._store_one(session_id, message, own=False)

    async def store_own(
        self, session_id: str, message: EngineMessage
    ) -> tuple[MessageRecord, bool]:
        """Store an own message (sent from this host or another device of the account):
        outgoing, ``from_me``. When a send already stored this engine id, that row comes
        back with ``False``: an echo never duplicates a send."""
        return await self._store_one(session_id, message, own=True)

    async def _store_one(
        self, session_id: str, message: EngineMessage, *, own: bool
    ) -> tuple[MessageRecord, bool]:
        values = _engine_values(session_id, message, own=own)
        key = {"session_id": session_id, "message_id": values["message_id"]}
        sql, writer = self._sql, self._writer

        announce = self._announce

        def work(connection: Connection) -> tuple[MessageRecord, bool]:
            # The unique (session_id, message_id) index decides: no row back means the
            # id is stored already (a re-fired event, or a send's own echo).
            if sql.insert_engine.first(connection, values) is None:
                return _record(_one(sql.by_message_id.first(connection, key))), False
            if values["from_me"]:
                record = _with_early_ack(connection, writer, values)
            else:
                record = _record(values)
            if own:
                announce.sent(connection, record, sender=message.sender)
            else:
                announce.received(connection, [(values, message)])
            return record, True

        record, created = await self._writes.submit(work)
        self._note(record)
        return record, created

    def _note(self, record: MessageRecord) -> None:
        """Remember the committed status of an own message, for acks to come."""
        if record.from_me and record.message_id is not None:
            acked = AckedMessage(record.id, record.status)
            self._writer.known.note(record.session_id, record.message_id, acked)

    async def store_inbound_batch(self, session_id: str, messages: Iterable[EngineMessage]) -> int:
        """Store many engine messages of one session in one transaction; the number
        inserted (see :meth:`store_engine_messages`)."""
        inserted = await self.store_engine_messages([(session_id, m) for m in messages])
        return len(inserted)

    async def store_engine_messages(
        self, items: Sequence[tuple[str, EngineMessage]]
    ) -> set[tuple[str, str]]:
        """Store engine messages of any sessions in one transaction (a group commit).

        Returns the ``(session_id, message_id)`` pairs actually inserted: messages a
        session already has (or that repeat one earlier in the batch) are skipped, which
        is how a re-fired event stays harmless. Early acks of own messages are applied.
        """
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        messages: dict[tuple[str, str], EngineMessage] = {}
        for session_id, message in items:
            values = _engine_values(session_id, message, own=False)
            key = (session_id, values["message_id"])
            if key not in rows:
                rows[key], messages[key] = values, message
        if not rows:
            return set()
        sql, writer, announce = self._sql, self._writer, self._announce

        def work(connection: Connection) -> set[tuple[str, str]]:
            result = connection.execute(sql.insert_many, list(rows.values()))
            inserted = [(row[0], row[1], row[2]) for row in result.all()]
            for session_id, message_id, from_me in inserted:
                if from_me:
                    early = _take_early_ack(connection, writer, session_id, message_id)
                    if early is not None:
                        moved = _advance_row(connection, sql, session_id, message_id, early)
                        if moved is not None:
                            rows[(session_id, message_id)]["status"] = moved["status"]
            if announce.active:
                announce.received(
                    connection,
                    [(rows[(s, m)], messages[(s, m)]) for s, m, _ in inserted],
                )
            return {(session_id, message_id) for session_id, message_id, _ in inserted}

        return await self._writes.submit(work)

    async def apply_ack(
        self, session_id: str, message_id: str, status: AckStatus | str
    ) -> AckedMessage | None:
        """Apply an ack, forward only (see :func:`advance`): the message's record id and
        status after it, or ``None`` when no row has ``message_id`` yet: the ack is then
        kept (the furthest one) and applied when the id is stored. A ``pending`` ack
        changes nothing."""
        try:
            wanted = AckStatus(status).value
        except ValueError:
            raise MessageValidationError("status", f"not an ack status: {status!r}") from None
        if not _searchable(session_id, message_id):
            return None
        sql, writer = self._sql, self._writer
        settled = writer.known.settled(session_id, message_id, wanted)
        if settled is not None:
            return settled
        key = {"session_id": session_id, "message_id": message_id}

        announce = self._announce

        def work(connection: Connection) -> AckedMessage | None:
            if wanted != AckStatus.PENDING:
                row = _advance_row(connection, sql, session_id, message_id, wanted)
                if row is not None:
                    announce.ack(connection, session_id, message_id, row)
                    return AckedMessage(row["id"], row["status"])
            row = sql.status_by_message_id.first(connection, key)
            if row is not None:
                return AckedMessage(row["id"], row["status"])  # not moved forward
            if wanted == AckStatus.PENDING:
                return None
            found = sql.early_ack.first(connection, key)
            kept = None if found is None else found["status"]
            furthest = wanted if kept is None else advance(kept, wanted)
            if furthest != kept:
                writer.early_acks.add(connection, sql, (session_id, message_id))
                sql.keep_early_ack.run(connection, {**key, "status": furthest, "at": utc_now()})
            return None

        acked = await self._writes.submit(work)
        if acked is not None:
            writer.known.note(session_id, message_id, acked)
        return acked

    async def prune_early_acks(self, older_than: timedelta = timedelta(days=1)) -> int:
        """Forget early acks kept longer than ``older_than`` (their message never came)."""
        statement = sa.delete(_EARLY_ACKS).where(_EARLY_ACKS.c.at < utc_now() - older_than)

        def work(connection: Connection) -> int:
            # The early-ack index is left as it is: it may name ids no longer kept,
            # which costs a statement, never a missed ack (forgetting them here would,
            # were this batch rolled back).
            return int(connection.execute(statement).rowcount)

        return await self._writes.submit(work)

    # ----------------------------------------------------------------------- reads

    async def get(self, session_id: str, record_id: str) -> MessageRecord:
        """The message ``record_id`` of ``session_id``, or :class:`MessageNotFoundError`."""

        sql = self._sql

        def work(connection: Connection) -> MessageRecord | None:
            row = sql.by_id.first(connection, {"record_id": record_id})
            return _record(row) if row is not None and row["session_id"] == session_id else None

        searchable = _searchable(record_id)
        record = await self._database.run_connection(work, readonly=True) if searchable else None
        if record is None:
            raise _not_found(record_id, session_id)
        return record

    async def by_message_id(self, session_id: str, message_id: str) -> MessageRecord:
        """The message with the engine id ``message_id`` in ``session_id``."""

        sql = self._sql
        key = {"session_id": session_id, "message_id": message_id}

        def work(connection: Connection) -> MessageRecord | None:
            row = sql.by_message_id.first(connection, key)
            return None if row is None else _record(row)

        searchable = _searchable(session_id, message_id)
        record = await self._database.run_connection(work, readonly=True) if searchable else None
        if record is None:
            raise _not_found(message_id, session_id)
        return record

    async def body_of(self, session_id: str, message_id: str) -> str | None:
        """The stored body of engine message ``message_id`` (for engines, through
        :class:`~enginehost.core.services.MessageLookup`); ``None`` when unknown."""
        try:
            record = await self.by_message_id(session_id, message_id)
        except MessageNotFoundError:
            return None
        return record.body

    async def history(
        self,
        session_id: str,
        *,
        chat_id: str | None = None,
        direction: MessageDirection | str | None = None,
        status: AckStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        from_me: bool | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
    ) -> tuple[list[MessageRecord], int, str | None]:
        """A page of ``session_id``'s messages, newest first (by timestamp, then id).

        Filters: ``chat_id``, ``direction``, ``status``, ``from_me``, ``since``
        (inclusive) and ``until`` (exclusive). Returns the rows, the number of messages
        matching the filters (all pages), and a cursor for the next page (``None`` on
        the last). Passing the cursor back as ``after`` continues right after the last
        row returned, whatever was inserted meanwhile: keyset paging, so rows newer than
        the first page never shift later pages. ``offset`` skips rows after the cursor
        (or from the newest without one).
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise MessageValidationError("limit", "must be an integer")
        if not 1 <= limit <= HISTORY_LIMIT_MAX:
            raise MessageValidationError("limit", f"must be 1 to {HISTORY_LIMIT_MAX}, got {limit}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise MessageValidationError("offset", "must be a non-negative integer")
        if direction is not None:
            try:
                direction = MessageDirection(direction).value
            except ValueError:
                raise MessageValidationError("direction", "must be incoming or outgoing") from None
        if status is not None:
            try:
                status = AckStatus(status).value
            except ValueError:
                allowed = ", ".join(s.value for s in AckStatus)
                raise MessageValidationError("status", f"must be one of {allowed}") from None
        if since is not None:
            since = _aware("since", since)
        if until is not None:
            until = _aware("until", until)
        if from_me is not None and not isinstance(from_me, bool):
            raise MessageValidationError("from_me", "must be a boolean")
        position = None if after is None else _decode_cursor(after)
        if not _searchable(session_id) or (chat_id is not None and not _searchable(chat_id)):
            return [], 0, None
        conditions = _history_conditions(
            session_id, chat_id, direction, status, since, until, from_me
        )

        def work(session: Session) -> tuple[list[MessageRecord], int]:
            total = session.exec(
                select(func.count()).select_from(MessageRecord).where(*conditions)
            ).one()
            page = list(conditions)
            if position is not None:
                at, last_id = position
                page.append(
                    or_(
                        col(MessageRecord.timestamp) < at,
                        and_(col(MessageRecord.timestamp) == at, col(MessageRecord.id) < last_id),
                    )
                )
            rows = session.exec(
                select(MessageRecord)
                .where(*page)
                .order_by(col(MessageRecord.timestamp).desc(), col(MessageRecord.id).desc())
                .offset(offset)
                .limit(limit + 1)
            ).all()
            return list(rows), int(total)

        rows, total = await self._database.run(work, readonly=True)
        if len(rows) > limit:
            rows = rows[:limit]
            return rows, total, _encode_cursor(rows[-1])
        return rows, total, None


def _not_found(key: str, session_id: str | None = None) -> MessageNotFoundError:
    where = "" if session_id is None else f" in session {session_id!r}"
    return MessageNotFoundError(f"no message {key!r}{where}")
