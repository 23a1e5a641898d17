"""One daemon per data database: an exclusive lock held for the daemon's life.

The host's write paths rely on being the only writer of its data database: the message
store's write queue decides races between writes without database locks, and the
session cache trusts the store's own writes. A second daemon pointed at the same
database would break both, and silently; so the daemon takes an exclusive lock at boot
and refuses to start without it:

* SQLite: an advisory lock (``flock``) on ``<database file>.lock`` beside the file,
  which also names the process holding it;
* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``), keyed by the
  database, its schema search path and the role, on a connection kept for the daemon's
  life (the server releases it when that connection ends, crash included).

Offline commands (``enginehost db …``, ``enginehost keys …``) do not take it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from enginehost.core.db.database import Database
from enginehost.core.db.errors import DatabaseError, DatabaseUnavailableError

__all__ = ["DatabaseInUseError", "exclusive_writer"]


class DatabaseInUseError(DatabaseError):
    """Another daemon holds the database's writer lock."""


@contextmanager
def exclusive_writer(database: Database) -> Iterator[None]:
    """Hold ``database``'s writer lock for the ``with`` body, or raise
    :class:`DatabaseInUseError` at once when another daemon holds it."""
    path = database.target.sqlite_path
    if database.target.backend == "sqlite":
        if path is None or str(path) == ":memory:":
            yield  # a private in-memory database: nobody else can open it
            return
        with _file_lock(database, path):
            yield
    else:
        with _advisory_lock(database):
            yield


@contextmanager
def _file_lock(database: Database, path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the lock file {lock_path} of the {database.role.value} database "
            f"({exc.strerror}); set {database.target.setting} or fix the directory's permissions"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            raise DatabaseInUseError(
                f"the {database.role.value} database {path} is in use by another enginehost "
                f"daemon (pid {holder}); one daemon per database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_key(database: Database) -> int:
    url = database.target.url
    options = str(url.query.get("options", ""))
    identity = f"enginehost:{database.role.value}:{url.host}:{url.port}:{url.database}:{options}"
    return int.from_bytes(
        hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big", signed=True
    )


@contextmanager
def _advisory_lock(database: Database) -> Iterator[None]:
    key = _lock_key(database)
    with database.translate_errors():
        connection = database.engine.connect()
    try:
        with database.translate_errors():
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            locked = bool(taken.scalar())
            connection.commit()
        if not locked:
            raise DatabaseInUseError(
                f"the {database.role.value} database {database.target.describe()} is in use by "
                "another enginehost daemon; one daemon per database"
            )
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
            except Exception:
                # Closed rather than pooled: the server drops the lock with the session.
                connection.invalidate()
    finally:
        connection.close()
