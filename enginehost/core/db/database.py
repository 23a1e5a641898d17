"""One open database: a SQLAlchemy engine set up for its backend, and transactional work.

Work runs as plain functions over a :class:`sqlmodel.Session`, each in one transaction,
in a worker thread (:meth:`Database.run`): the event loop never blocks on a disk or a
socket, and a unit of work that touches many rows commits all of them or none.

SQLite is opened in WAL mode (read-only work, ``readonly=True``, runs beside the one
writer), with a busy timeout and foreign keys on; PostgreSQL through psycopg 3 with a
bounded connection pool.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

from enginehost.core.db.after_commit import AfterCommit, collecting, run_callbacks
from enginehost.core.db.errors import DatabaseBusyError, DatabaseUnavailableError
from enginehost.core.db.urls import DatabaseRole, DatabaseTarget
from enginehost.core.logging import get_logger
from enginehost.core.settings import Settings

__all__ = ["Database"]

T = TypeVar("T")

log = get_logger("enginehost.db")

# SQLite readers that may run beside the one writer (WAL mode lets them).
_SQLITE_READERS = 4

# Whether the transaction being begun in this thread is read-only (see Database.run_sync).
_read_only: ContextVar[bool] = ContextVar("enginehost_db_read_only", default=False)


@contextmanager
def _transaction_kind(readonly: bool) -> Iterator[None]:
    """Mark the transactions begun in this block as read-only or not."""
    token = _read_only.set(readonly)
    try:
        yield
    finally:
        _read_only.reset(token)


class Database:
    """A database playing one role (``main`` or ``data``)."""

    def __init__(self, target: DatabaseTarget, settings: Settings) -> None:
        self.target = target
        self.role: DatabaseRole = target.role
        self.engine: Engine = _create_engine(target, settings)
        # Never more threads waiting on the pool than it can serve at once. SQLite takes
        # one writer at a time anyway; in WAL mode readers run beside it.
        pooled = settings.db_pool_size + settings.db_max_overflow
        sqlite = target.backend == "sqlite"
        self._writers = anyio.CapacityLimiter(1 if sqlite else pooled)
        self._readers = anyio.CapacityLimiter(_SQLITE_READERS if sqlite else pooled)
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """The one object for ``key`` on this database, made by ``factory`` at first use:
        for state every user of the database must share (a write queue, say), which
        lives and dies with it."""
        if key not in self._shared:
            self._shared[key] = factory()
        value: T = self._shared[key]
        return value

    @property
    def backend(self) -> str:
        return self.target.backend

    def check(self) -> None:
        """Open a connection and run a trivial query; raise a clear error if that fails."""
        path = self.target.sqlite_path
        if path is not None:
            _prepare_sqlite_directory(path, self.target)
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        """An error for ``exc`` that names this database's setting (or file)."""
        reason = _driver_message(exc)
        path = self.target.sqlite_path
        if path is not None:
            reason += _full_disk_hint(path.parent)
            return DatabaseUnavailableError(
                f"cannot use the {self.role} database file {path} (set {self.target.setting} "
                f"or ENGINEHOST_DATA_DIR to change it): {reason}"
            )
        return DatabaseUnavailableError(
            f"cannot connect to the {self.role} database {self.target.describe()} "
            f"(from {self.target.setting}): {reason}"
        )

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn operational driver errors into :class:`DatabaseBusyError` (a lock or
        serialization conflict: worth retrying) or :class:`DatabaseUnavailableError`
        (server gone, disk full, file unusable), each with a clear message."""
        try:
            yield
        except OperationalError as exc:
            if _is_conflict(exc):
                raise DatabaseBusyError(
                    f"the {self.role} database is busy: {_driver_message(exc)}"
                ) from exc
            raise self.unavailable(exc) from exc

    def session(self) -> Session:
        """A new session (not thread-safe: use it from one thread, then close it)."""
        return Session(self.engine, expire_on_commit=False)

    def run_sync(self, work: Callable[..., T], *args: Any, readonly: bool = False) -> T:
        """Run ``work(session, *args)`` in one transaction, in the calling thread.

        ``readonly`` work on SQLite starts a deferred transaction, which takes no write
        lock (any other transaction takes it at BEGIN, see ``_create_engine``).
        """
        with (
            _transaction_kind(readonly),
            self.translate_errors(),
            self.session() as session,
            session.begin(),
        ):
            return work(session, *args)

    async def run(self, work: Callable[..., T], *args: Any, readonly: bool = False) -> T:
        """Run ``work(session, *args)`` in one transaction, in a worker thread; then the
        callbacks it registered with :func:`~enginehost.core.db.after_commit.after_commit`."""
        committed: list[AfterCommit] = []

        def collected(session: Session, *args: Any) -> T:
            with collecting(session, committed):
                return work(session, *args)

        result = await anyio.to_thread.run_sync(
            partial(self.run_sync, collected, *args, readonly=readonly),
            limiter=self._limiter(readonly),
        )
        run_callbacks(committed)
        return result

    def run_connection_sync(self, work: Callable[[Connection], T], *, readonly: bool = False) -> T:
        """Like :meth:`run_sync`, over a Core :class:`~sqlalchemy.engine.Connection`
        instead of an ORM session: for hot paths, where the session's bookkeeping per
        transaction costs more than their few statements."""
        with (
            _transaction_kind(readonly),
            self.translate_errors(),
            self.engine.begin() as connection,
        ):
            return work(connection)

    async def run_connection(self, work: Callable[[Connection], T], *, readonly: bool = False) -> T:
        """:meth:`run_connection_sync` in a worker thread, then the callbacks registered
        with :func:`~enginehost.core.db.after_commit.after_commit` (see :meth:`run`)."""
        committed: list[AfterCommit] = []

        def collected(connection: Connection) -> T:
            with collecting(connection, committed):
                return work(connection)

        result = await anyio.to_thread.run_sync(
            partial(self.run_connection_sync, collected, readonly=readonly),
            limiter=self._limiter(readonly),
        )
        run_callbacks(committed)
        return result

    def _limiter(self, readonly: bool) -> anyio.CapacityLimiter:
        return self._readers if readonly else self._writers

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _create_engine(target: DatabaseTarget, settings: Settings) -> Engine:
    if target.backend == "sqlite":
        busy_ms = int(settings.sqlite_busy_timeout * 1000)
        engine = create_engine(
            target.url,
            # Pooled, not a connection per use: closing the last connection to a WAL
            # database checkpoints and deletes the log, which made every write pay for
            # a checkpoint (measured: single-row inserts several times slower).
            poolclass=QueuePool,
            pool_size=_SQLITE_READERS + 1,
            max_overflow=_SQLITE_READERS + 1,
            connect_args={"timeout": settings.sqlite_busy_timeout, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _configure_sqlite(dbapi_connection: sqlite3.Connection, _: Any) -> None:
            # pysqlite's own transaction handling is switched off so that SQLAlchemy's
            # BEGIN is the one that counts (needed for correct transactional DDL too).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            # Writers take the write lock at BEGIN: a transaction that reads then writes
            # cannot then fail half-way with "database is locked" (the busy timeout
            # applies at BEGIN instead). Read-only work needs no lock.
            connection.exec_driver_sql("BEGIN" if _read_only.get() else "BEGIN IMMEDIATE")

        return engine
    # Timestamps are compared and returned in UTC whatever the server's default; options
    # already in the URL (a search_path, say) are kept, but a timezone there is
    # overridden on purpose: the host's timestamp handling assumes UTC sessions.
    options = " ".join(filter(None, [str(target.url.query.get("options", "")), "-c timezone=UTC"]))
    return create_engine(
        target.url.difference_update_query(["options"]),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, int(settings.db_connect_timeout)),
            "application_name": f"enginehost-{target.role}",
            "options": options,
        },
    )


def _prepare_sqlite_directory(path: Path, target: DatabaseTarget) -> None:
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the directory {directory} for the {target.role} database "
            f"(set {target.setting} or ENGINEHOST_DATA_DIR): {exc.strerror}"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnavailableError(
            f"the directory {directory} of the {target.role} database is not writable "
            f"(set {target.setting} or ENGINEHOST_DATA_DIR to a writable place)"
        )


# SQLSTATEs of conflicts between transactions: serialization failure, deadlock, lock not
# available, query cancelled (a lock or statement timeout). Retrying may succeed.
_POSTGRES_CONFLICTS = {"40001", "40P01", "55P03", "57014"}


def _is_conflict(exc: OperationalError) -> bool:
    original = exc.orig
    if isinstance(original, sqlite3.OperationalError):
        return "locked" in str(original) or "busy" in str(original)
    return getattr(original, "sqlstate", None) in _POSTGRES_CONFLICTS


# Below this much free space, a failing SQLite write is blamed on a full file system.
_NEARLY_FULL_BYTES = 1024 * 1024


def _full_disk_hint(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    if free >= _NEARLY_FULL_BYTES:
        return ""
    return f" (the file system holding {directory} is full: {free // 1024} KiB free)"


def _driver_message(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split()) or type(original).__name__
