"""The message store: every message of every session, each call one transaction.

The store is engine-neutral (it never calls an engine); the session manager feeds it
what the API sends and what engines report. Races are decided by the database:

* **Idempotency.** :meth:`MessageStore.create_pending` inserts; a violation of the
  unique (session_id, idempotency_key) index means the key was used, and the existing
  row is read in a new transaction and returned with ``created=False``.
* **Re-fired events.** :meth:`~MessageStore.store_inbound` and
  :meth:`~MessageStore.store_own` insert; a violation of the unique
  (session_id, message_id) index means the event was stored already.
* **The echo race.** An engine may report our own send back as an own-message echo
  *before* the send path stores the engine id it got. The echo is then a row of its
  own, and storing the id on the pending row violates the unique index: inside the same
  transaction (a savepoint), :meth:`~MessageStore.mark_sent` merges the two: the pending
  row keeps its id and idempotency key, takes the better status of both, and the echo
  row is deleted. In the other order the echo's insert hits the index and
  :meth:`~MessageStore.store_own` returns the stored row: one row either way.
* **Early acks.** An ack can name an engine id no row carries yet. It is kept in
  ``early_acks`` (the furthest status only) and applied when a send or an own message
  stores that id. Both sides first *claim* the ``early_acks`` row of the id with an
  upsert (which waits for a concurrent claimant on PostgreSQL, SQLite has one writer at
  a time anyway), so an ack and the storing of its id never miss each other.

Status moves forward only (see :func:`advance`): pending → sent → delivered → read;
``failed`` is reachable from pending and sent only (an ack of delivered or read proves
the message arrived, so a later failure report is ignored) and is final.

Records handed back are detached model instances with every column loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, and_, col, delete, func, or_, select, update

from enginehost.core.db.database import Database
from enginehost.core.engine import AckStatus, EngineMessage, MessageType, utc_now
from enginehost.core.errors import FieldError, ServiceError
from enginehost.core.messages.models import (
    CHAT_ID_MAX,
    IDEMPOTENCY_KEY_MAX,
    MESSAGE_ID_MAX,
    SESSION_ID_MAX,
    UNIQUE_IDEMPOTENCY_INDEX,
    UNIQUE_MESSAGE_ID_INDEX,
    EarlyAck,
    MessageDirection,
    MessageRecord,
    new_id,
)

__all__ = [
    "HISTORY_LIMIT_MAX",
    "RAW_MAX_BYTES",
    "STALE_PENDING_REASON",
    "InvalidCursorError",
    "MessageError",
    "MessageIdConflictError",
    "MessageNotFoundError",
    "MessageStore",
    "MessageValidationError",
    "advance",
]

T = TypeVar("T")

HISTORY_LIMIT_MAX: Final = 500
STALE_PENDING_REASON: Final = "the host stopped before the send completed"
RAW_MAX_BYTES: Final = 16 * 1024
"""Engine extras larger than this (as JSON) are not kept: only a note of their size."""

_BATCH_ROWS = 500  # rows per INSERT statement: well under both backends' parameter caps
_CURSOR_MAX = 512
_UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = "UNIQUE constraint failed: "
_INDEX_COLUMNS = {
    UNIQUE_MESSAGE_ID_INDEX: "messages.session_id, messages.message_id",
    UNIQUE_IDEMPOTENCY_INDEX: "messages.session_id, messages.idempotency_key",
}
_READ_ATTEMPTS = 3

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


class _Conflict(Exception):
    """Raised inside a unit of work to roll it back when an insert hit a unique index."""


# ------------------------------------------------------------------------------ status

_RANK: Final = {
    AckStatus.PENDING: 0,
    AckStatus.SENT: 1,
    AckStatus.DELIVERED: 2,
    AckStatus.READ: 3,
}


def advance(current: str, new: str) -> str:
    """The status after ``new`` is reported for a message at ``current``: forward only.

    pending → sent → delivered → read, never back. ``failed`` is final, and is taken
    only from pending or sent: after delivered or read the message evidently arrived,
    so a failure report changes nothing.
    """
    if current == AckStatus.FAILED:
        return AckStatus.FAILED.value
    if new == AckStatus.FAILED:
        return AckStatus.FAILED.value if current in (AckStatus.PENDING, AckStatus.SENT) else current
    if new not in _RANK or current not in _RANK:
        return current
    return new if _RANK[AckStatus(new)] > _RANK[AckStatus(current)] else current


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


def _searchable(*values: object) -> bool:
    """False when a lookup value can match no row (and would upset PostgreSQL)."""
    return all(isinstance(v, str) and 0 < len(v) <= 200 and "\x00" not in v for v in values)


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
    if len(text.encode()) > RAW_MAX_BYTES:
        return {"truncated": True, "bytes": len(text.encode())}
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


def _violates(exc: IntegrityError, index: str) -> bool:
    """Whether ``exc`` is a violation of the unique index ``index``, and only that."""
    original = exc.orig
    diag = getattr(original, "diag", None)
    if diag is not None:  # PostgreSQL (psycopg): the server names the index.
        return (
            getattr(original, "sqlstate", None) == _UNIQUE_VIOLATION
            and getattr(diag, "constraint_name", None) == index
        )
    message = str(original)
    return message.endswith(_SQLITE_UNIQUE + _INDEX_COLUMNS[index]) or index in message


def _insert(backend: str, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``..._do_update``."""
    return (postgresql.insert if backend == "postgresql" else sqlite.insert)(table)


def _by_id(session: Session, record_id: str, *, lock: bool = False) -> MessageRecord | None:
    if not _searchable(record_id):
        return None
    statement = select(MessageRecord).where(col(MessageRecord.id) == record_id)
    if lock:
        statement = statement.with_for_update()
    return session.exec(statement.execution_options(populate_existing=True)).first()


def _by_message_id(
    session: Session, session_id: str, message_id: str, *, lock: bool = False
) -> MessageRecord | None:
    if not _searchable(session_id, message_id):
        return None
    statement = select(MessageRecord).where(
        col(MessageRecord.session_id) == session_id, col(MessageRecord.message_id) == message_id
    )
    if lock:
        statement = statement.with_for_update()
    return session.exec(statement.execution_options(populate_existing=True)).first()


def _by_idempotency_key(session: Session, session_id: str, key: str) -> MessageRecord | None:
    return session.exec(
        select(MessageRecord).where(
            col(MessageRecord.session_id) == session_id,
            col(MessageRecord.idempotency_key) == key,
        )
    ).first()


def _set(session: Session, record_id: str, **values: Any) -> None:
    session.exec(
        update(MessageRecord)
        .where(col(MessageRecord.id) == record_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _claim_early_ack(
    session: Session, backend: str, session_id: str, message_id: str, status: str
) -> str:
    """Insert ``early_acks`` (session_id, message_id) or lock the row there; its status.

    The upsert waits for a concurrent transaction that inserted the same key (PostgreSQL),
    so two transactions about one engine id take turns here: that is what makes an ack
    and the storing of its id see each other. Returns the stored status when the row
    existed, else ``status`` (what was inserted).
    """
    # On conflict the stored status is set back to itself: that locks the row, and
    # RETURNING then yields the stored value.
    statement = (
        _insert(backend, _EARLY_ACKS)
        .values(session_id=session_id, message_id=message_id, status=status, at=utc_now())
        .on_conflict_do_update(
            index_elements=["session_id", "message_id"],
            set_={"status": _EARLY_ACKS.c.status},
        )
        .returning(_EARLY_ACKS.c.status)
    )
    stored: str = session.exec(statement).scalar_one()
    return stored


def _drop_early_ack(session: Session, session_id: str, message_id: str) -> None:
    session.exec(
        delete(EarlyAck).where(
            col(EarlyAck.session_id) == session_id, col(EarlyAck.message_id) == message_id
        )
    )


def _take_early_ack(session: Session, backend: str, session_id: str, message_id: str) -> str:
    """Claim and remove the early ack of ``message_id``: its status, ``pending`` if none."""
    status = _claim_early_ack(session, backend, session_id, message_id, AckStatus.PENDING.value)
    _drop_early_ack(session, session_id, message_id)
    return status


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


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------- store


class MessageStore:
    """The messages of every session, in the data database."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._backend = database.backend

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
        record = MessageRecord(
            session_id=_text("session_id", session_id, SESSION_ID_MAX),
            chat_id=_text("chat_id", chat_id, CHAT_ID_MAX),
            direction=MessageDirection.OUTGOING.value,
            type=_message_type(type),
            status=AckStatus.PENDING.value,
            body=_body(body),
            from_me=True,
            has_media=bool(has_media),
            quoted_message_id=_optional_text(
                "quoted_message_id", quoted_message_id, MESSAGE_ID_MAX
            ),
            idempotency_key=_optional_text("idempotency_key", idempotency_key, IDEMPOTENCY_KEY_MAX),
            timestamp=now,
            created_at=now,
            updated_at=now,
        )

        def work(session: Session) -> MessageRecord:
            session.add(record)
            try:
                session.flush()
            except IntegrityError as exc:
                if _violates(exc, UNIQUE_IDEMPOTENCY_INDEX):
                    raise _Conflict from None
                raise
            return record

        def existing(session: Session) -> MessageRecord | None:
            assert idempotency_key is not None
            return _by_idempotency_key(session, session_id, idempotency_key)

        return await self._insert_or_read(work, existing)

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
        backend = self._backend

        def work(session: Session) -> MessageRecord:
            record = _by_id(session, record_id, lock=True)
            if record is None:
                raise _not_found(record_id)
            if record.message_id is not None:
                if record.message_id != message_id:
                    raise MessageIdConflictError(record_id, record.message_id, message_id)
                return record
            early = _take_early_ack(session, backend, record.session_id, message_id)
            values: dict[str, Any] = {
                "message_id": message_id,
                "status": advance(advance(record.status, AckStatus.SENT), early),
                "timestamp": timestamp,
                "updated_at": max(utc_now(), record.created_at),
            }

            def merge_echo(echo: MessageRecord) -> None:
                values["status"] = advance(values["status"], echo.status)
                values["idempotency_key"] = record.idempotency_key or echo.idempotency_key
                values["raw"] = record.raw or echo.raw
                values["quoted_message_id"] = record.quoted_message_id or echo.quoted_message_id
                session.exec(delete(MessageRecord).where(col(MessageRecord.id) == echo.id))

            # Engines usually echo a send before it returns: look for the echo first, so
            # the common case merges without a failed statement and a savepoint rollback.
            echo = _by_message_id(session, record.session_id, message_id, lock=True)
            if echo is not None:
                merge_echo(echo)
                _set(session, record.id, **values)
            else:
                try:
                    with session.begin_nested():
                        _set(session, record.id, **values)
                except IntegrityError as exc:
                    # The echo was stored between the look-up and the update.
                    if not _violates(exc, UNIQUE_MESSAGE_ID_INDEX):
                        raise
                    echo = _by_message_id(session, record.session_id, message_id, lock=True)
                    if echo is not None:
                        merge_echo(echo)
                    _set(session, record.id, **values)
            stored = _by_id(session, record.id)
            assert stored is not None
            return stored

        return await self._database.run(work)

    async def mark_failed(self, record_id: str, reason: str) -> MessageRecord:
        """Fail a pending send with ``reason``. A row past pending is returned unchanged
        (a send that reached the server did not fail; failed is final)."""
        reason = _body(reason) or "failed"

        def work(session: Session) -> MessageRecord:
            record = _by_id(session, record_id, lock=True)
            if record is None:
                raise _not_found(record_id)
            if record.status != AckStatus.PENDING:
                return record
            _set(
                session,
                record.id,
                status=AckStatus.FAILED.value,
                failure_reason=reason,
                updated_at=max(utc_now(), record.created_at),
            )
            stored = _by_id(session, record.id)
            assert stored is not None
            return stored

        return await self._database.run(work)

    async def fail_stale_pending(self, reason: str = STALE_PENDING_REASON) -> int:
        """At boot: every pending send (of any session) fails with ``reason``; the count."""

        def work(session: Session) -> int:
            result = session.exec(
                update(MessageRecord)
                .where(col(MessageRecord.status) == AckStatus.PENDING.value)
                .values(status=AckStatus.FAILED.value, failure_reason=reason, updated_at=utc_now())
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)

        return await self._database.run(work)

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
        backend = self._backend

        def work(session: Session) -> MessageRecord:
            if values["from_me"]:
                early = _take_early_ack(session, backend, session_id, values["message_id"])
                values["status"] = advance(values["status"], early)
            record = MessageRecord(**values)
            session.add(record)
            try:
                session.flush()
            except IntegrityError as exc:
                if _violates(exc, UNIQUE_MESSAGE_ID_INDEX):
                    raise _Conflict from None
                raise
            return record

        def existing(session: Session) -> MessageRecord | None:
            return _by_message_id(session, session_id, values["message_id"])

        return await self._insert_or_read(work, existing)

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
        for session_id, message in items:
            values = _engine_values(session_id, message, own=False)
            rows.setdefault((session_id, values["message_id"]), values)
        if not rows:
            return set()
        # One cached statement executed over all rows ("insertmanyvalues"): compiling a
        # multi-row VALUES statement per batch cost more than the inserts themselves.
        statement = (
            _insert(self._backend, _MESSAGES)
            .on_conflict_do_nothing(index_elements=["session_id", "message_id"])
            .returning(_MESSAGES.c.session_id, _MESSAGES.c.message_id, _MESSAGES.c.from_me)
        )

        def work(session: Session) -> set[tuple[str, str]]:
            result = session.connection().execute(statement, list(rows.values()))
            inserted = [(row[0], row[1], row[2]) for row in result.all()]
            own_by_session: dict[str, list[str]] = {}
            for session_id, message_id, from_me in inserted:
                if from_me:
                    own_by_session.setdefault(session_id, []).append(message_id)
            for session_id, own in own_by_session.items():
                for ids in _chunks(own, _BATCH_ROWS):
                    _apply_early_acks(session, session_id, ids)
            return {(session_id, message_id) for session_id, message_id, _ in inserted}

        return await self._database.run(work)

    async def apply_ack(
        self, session_id: str, message_id: str, status: AckStatus | str
    ) -> MessageRecord | None:
        """Apply an ack, forward only (see :func:`advance`); the row, or ``None`` when no
        row has ``message_id`` yet: the ack is then kept (the furthest one) and applied
        when the id is stored. A ``pending`` ack changes nothing."""
        try:
            wanted = AckStatus(status).value
        except ValueError:
            raise MessageValidationError("status", f"not an ack status: {status!r}") from None
        if not _searchable(session_id, message_id):
            return None
        backend = self._backend

        def work(session: Session) -> MessageRecord | None:
            record = _by_message_id(session, session_id, message_id, lock=True)
            if record is None:
                if wanted == AckStatus.PENDING:
                    return None
                stored = _claim_early_ack(session, backend, session_id, message_id, wanted)
                furthest = advance(stored, wanted)
                # Checked again after the claim: a send that stored the id meanwhile has
                # committed by now (it held the claim), and this transaction sees it.
                record = _by_message_id(session, session_id, message_id, lock=True)
                if record is None:
                    if furthest != stored:
                        session.exec(
                            update(EarlyAck)
                            .where(
                                col(EarlyAck.session_id) == session_id,
                                col(EarlyAck.message_id) == message_id,
                            )
                            .values(status=furthest, at=utc_now())
                        )
                    return None
                _drop_early_ack(session, session_id, message_id)
                new = advance(record.status, furthest)
            else:
                new = advance(record.status, wanted)
            if new == record.status:
                return record
            _set(session, record.id, status=new, updated_at=max(utc_now(), record.created_at))
            return _by_id(session, record.id)

        return await self._database.run(work)

    async def prune_early_acks(self, older_than: timedelta = timedelta(days=1)) -> int:
        """Forget early acks kept longer than ``older_than`` (their message never came)."""
        cutoff = utc_now() - older_than

        def work(session: Session) -> int:
            result = session.exec(delete(EarlyAck).where(col(EarlyAck.at) < cutoff))
            return int(result.rowcount)

        return await self._database.run(work)

    # ----------------------------------------------------------------------- reads

    async def get(self, session_id: str, record_id: str) -> MessageRecord:
        """The message ``record_id`` of ``session_id``, or :class:`MessageNotFoundError`."""

        def work(session: Session) -> MessageRecord | None:
            record = _by_id(session, record_id)
            return record if record is not None and record.session_id == session_id else None

        record = await self._database.run(work, readonly=True)
        if record is None:
            raise _not_found(record_id, session_id)
        return record

    async def by_message_id(self, session_id: str, message_id: str) -> MessageRecord:
        """The message with the engine id ``message_id`` in ``session_id``."""

        def work(session: Session) -> MessageRecord | None:
            return _by_message_id(session, session_id, message_id)

        record = await self._database.run(work, readonly=True)
        if record is None:
            raise _not_found(message_id, session_id)
        return record

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

    # --------------------------------------------------------------------- helpers

    async def _insert_or_read(
        self,
        insert: Callable[[Session], MessageRecord],
        existing: Callable[[Session], MessageRecord | None],
    ) -> tuple[MessageRecord, bool]:
        """Run ``insert``; when it hit its unique index, read the row that won instead
        (in a new transaction, which sees the winner: it has committed by then)."""
        for _ in range(_READ_ATTEMPTS):
            try:
                return await self._database.run(insert), True
            except _Conflict:
                pass
            found = await self._database.run(existing, readonly=True)
            if found is not None:
                return found, False
        raise RuntimeError("a conflicting message row vanished repeatedly")  # pragma: no cover


def _apply_early_acks(session: Session, session_id: str, message_ids: Sequence[str]) -> None:
    """Apply and remove the early acks of freshly inserted rows (batch path)."""
    acks = session.exec(
        select(EarlyAck).where(
            col(EarlyAck.session_id) == session_id, col(EarlyAck.message_id).in_(message_ids)
        )
    ).all()
    for ack in acks:
        record = _by_message_id(session, session_id, ack.message_id, lock=True)
        if record is not None:
            new = advance(record.status, ack.status)
            if new != record.status:
                _set(session, record.id, status=new, updated_at=utc_now())
        _drop_early_ack(session, session_id, ack.message_id)


def _not_found(key: str, session_id: str | None = None) -> MessageNotFoundError:
    where = "" if session_id is None else f" in session {session_id!r}"
    return MessageNotFoundError(f"no message {key!r}{where}")
