"""Database errors that say which setting or path to look at."""

from __future__ import annotations

__all__ = [
    "DatabaseBusyError",
    "DatabaseConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "SchemaError",
]


class DatabaseError(Exception):
    """Base class: something about a database stops the host; the message says what."""


class DatabaseConfigError(DatabaseError):
    """A database setting is malformed or contradicts another (names the setting)."""


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached or opened (names the setting or the path)."""


class DatabaseBusyError(DatabaseError):
    """A transaction lost a lock or serialization conflict (or timed out waiting for a
    lock); nothing was written, and retrying may succeed. The API answers 503."""


class SchemaError(DatabaseError):
    """The schema is behind the code, or at a revision the code does not know."""
