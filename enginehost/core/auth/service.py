"""API keys: create, list, revoke, rotate, delete, authenticate, and the first admin key.

Everything that must hold across concurrent calls is decided inside one transaction of
the main database: the last active admin key can never be revoked or deleted, even by
two admins revoking each other at the same moment.
"""

from __future__ import annotations

import hmac
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sqlmodel import Session, col, select

from enginehost.core.auth.keys import (
    MIN_SECRET_LENGTH,
    generate_secret,
    hash_secret,
    secret_prefix,
    write_private_file,
)
from enginehost.core.auth.models import ApiKey
from enginehost.core.auth.roles import Role
from enginehost.core.db.database import Database
from enginehost.core.engine import utc_now
from enginehost.core.errors import FieldError, ServiceError
from enginehost.core.logging import get_logger

__all__ = [
    "ADMIN_KEY_FILE",
    "ApiKeyError",
    "ApiKeyService",
    "ApiKeyValidationError",
    "AuthenticationError",
    "Principal",
]

log = get_logger("enginehost.auth")

ADMIN_KEY_FILE = "admin-api-key"
INITIAL_ADMIN_NAME = "initial admin"
ENV_ADMIN_NAME = "admin (ENGINEHOST_ADMIN_KEY)"

# last_used_at is written at most this often per key: a busy key must not turn every
# request into a write on the main database.
LAST_USED_INTERVAL = 60.0
# How long a successful authentication is remembered in this process. Revocation,
# rotation and deletion here forget it at once; another node's take effect within this.
CACHE_SECONDS = 2.0


class ApiKeyError(ServiceError):
    """A key operation the caller asked for cannot be done; ``status_code`` says why."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message, code, status_code=status_code)


class ApiKeyValidationError(ApiKeyError, FieldError):
    """A value given for a key is not acceptable (422, naming the field)."""

    def __init__(self, field: str, problem: str) -> None:
        FieldError.__init__(self, field, problem)


class AuthenticationError(Exception):
    """The presented key is not accepted; ``reason`` is for the audit log."""

    def __init__(self, reason: str, prefix: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.prefix = prefix


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's identity, role and session scope."""

    key_id: str
    prefix: str
    name: str
    role: Role
    sessions: frozenset[str] | None
    """Session names the key is limited to; ``None`` means every session."""

    @property
    def scoped(self) -> bool:
        return self.sessions is not None

    def may_see(self, session_name: str) -> bool:
        return self.sessions is None or session_name in self.sessions


def _principal(key: ApiKey) -> Principal:
    return Principal(
        key_id=key.id,
        prefix=key.prefix,
        name=key.name,
        role=Role(key.role),
        sessions=frozenset(key.sessions) if key.sessions is not None else None,
    )


def _active(key: ApiKey, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def _validate_new_key(
    name: str, role: str, sessions: Sequence[str] | None, expires_at: datetime | None
) -> tuple[str, Role, list[str] | None]:
    clean_name = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(clean_name) <= 100:
        raise ApiKeyValidationError("name", "1 to 100 characters")
    try:
        clean_role = Role(role)
    except ValueError:
        raise ApiKeyValidationError("role", f"one of {', '.join(r.value for r in Role)}") from None
    scope: list[str] | None = None
    if sessions is not None:
        scope = sorted({s.strip() for s in sessions if isinstance(s, str) and s.strip()})
        if not scope:
            raise ApiKeyValidationError("sessions", "name at least one session, or omit it")
        if clean_role is Role.ADMIN:
            raise ApiKeyValidationError(
                "sessions", "an admin key cannot be limited to sessions (admin routes are global)"
            )
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ApiKeyValidationError("expiresAt", "include a timezone")
        if expires_at <= utc_now():
            raise ApiKeyValidationError("expiresAt", "must be in the future")
    return clean_name, clean_role, scope


class ApiKeyService:
    """API keys in the main database."""

    def __init__(self, database: Database, pepper: bytes) -> None:
        self._database = database
        self._pepper = pepper
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._last_touch: dict[str, float] = {}

    # ------------------------------------------------------------------ management

    async def create(
        self,
        *,
        name: str,
        role: str,
        sessions: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        secret: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once; only its hash is kept)."""
        clean_name, clean_role, scope = _validate_new_key(name, role, sessions, expires_at)
        secret = secret or generate_secret()
        key = ApiKey(
            id=_new_id(),
            name=clean_name,
            prefix=secret_prefix(secret),
            key_hash=hash_secret(secret, self._pepper),
            role=clean_role.value,
            sessions=scope,
            expires_at=expires_at,
        )

        def work(session: Session) -> ApiKey:
            session.add(key)
            session.flush()
            return key

        return await self._database.run(work), secret

    async def list(self) -> list[ApiKey]:
        def work(session: Session) -> list[ApiKey]:
            statement = select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id))
            return list(session.exec(statement).all())

        return await self._database.run(work, readonly=True)

    async def get(self, key_id: str) -> ApiKey:
        def work(session: Session) -> ApiKey | None:
            return session.get(ApiKey, key_id)

        key = await self._database.run(work, readonly=True)
        if key is None:
            raise ApiKeyError(404, "api_key_not_found", f"API key {key_id!r} not found")
        return key

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); the last active admin key cannot be revoked (409)."""

        def work(session: Session) -> ApiKey:
            key = _lock_for_removal(session, key_id)
            if key.revoked_at is None:
                _refuse_if_last_admin(session, key, "revoked")
                key.revoked_at = utc_now()
                session.add(key)
            return key

        key = await self._database.run(work)
        self._forget(key.id)
        return key

    async def rotate(self, key_id: str) -> tuple[ApiKey, str]:
        """A new secret for an active key; the old one stops working at once."""
        secret = generate_secret()

        def work(session: Session) -> ApiKey:
            key = _locked(session, key_id)
            if not _active(key, utc_now()):
                raise ApiKeyError(
                    409, "api_key_inactive", "a revoked or expired key cannot be rotated"
                )
            key.prefix = secret_prefix(secret)
            key.key_hash = hash_secret(secret, self._pepper)
            session.add(key)
            return key

        key = await self._database.run(work)
        self._forget(key.id)
        return key, secret

    async def delete(self, key_id: str) -> None:
        """Delete a key; the last active admin key cannot be deleted (409)."""

        def work(session: Session) -> None:
            key = _lock_for_removal(session, key_id)
            _refuse_if_last_admin(session, key, "deleted")
            session.delete(key)

        await self._database.run(work)
        self._forget(key_id)

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, secret: str) -> Principal:
        """The principal for ``secret``, or :class:`AuthenticationError`.

        Candidates are found by the visible prefix, then their stored hash is compared
        with the presented key's in constant time.
        """
        if not secret or len(secret) < MIN_SECRET_LENGTH or len(secret) > 512:
            raise AuthenticationError("malformed API key")
        presented = hash_secret(secret, self._pepper)
        cached = self._cache.get(presented)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        prefix = secret_prefix(secret)

        def work(session: Session) -> list[ApiKey]:
            return list(session.exec(select(ApiKey).where(col(ApiKey.prefix) == prefix)).all())

        candidates = await self._database.run(work, readonly=True)
        match = None
        for candidate in candidates:
            if hmac.compare_digest(candidate.key_hash, presented):
                match = candidate
        if match is None:
            raise AuthenticationError("unknown API key", prefix)
        if match.revoked_at is not None:
            raise AuthenticationError("API key revoked", prefix)
        if match.expires_at is not None and match.expires_at <= utc_now():
            raise AuthenticationError("API key expired", prefix)
        principal = _principal(match)
        remember = CACHE_SECONDS
        if match.expires_at is not None:  # never remember a key past its expiry
            remember = min(remember, (match.expires_at - utc_now()).total_seconds())
        self._cache[presented] = (principal, time.monotonic() + remember)
        await self._touch(match.id)
        return principal

    async def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        if now - self._last_touch.get(key_id, float("-inf")) < LAST_USED_INTERVAL:
            return
        self._last_touch[key_id] = now

        def work(session: Session) -> None:
            key = session.get(ApiKey, key_id)
            if key is not None:
                key.last_used_at = utc_now()
                session.add(key)

        try:
            await self._database.run(work)
        except Exception as exc:  # bookkeeping must never fail the request
            log.warning("auth.last_used_write_failed", key_id=key_id, error=str(exc))

    def _forget(self, key_id: str) -> None:
        for presented, (principal, _) in list(self._cache.items()):
            if principal.key_id == key_id:
                del self._cache[presented]

    # ------------------------------------------------------------------ first boot

    async def ensure_admin_key(
        self, data_dir: Path, configured: str | None, console: TextIO | None = None
    ) -> None:
        """Make sure an admin can get in.

        * ``ENGINEHOST_ADMIN_KEY`` set: that key is accepted (created if missing).
        * Otherwise, with no key at all: one admin key is generated, written to
          ``<data dir>/admin-api-key`` (mode 0600) and shown once on an interactive
          console. Never logged.
        * Later boots log only the initial admin key's prefix.
        """
        console = console if console is not None else sys.stderr
        if configured is not None:
            await self._ensure_configured_admin(configured)
            return
        keys = await self.list()
        now = utc_now()
        if any(k.role == Role.ADMIN.value and _active(k, now) for k in keys):
            initial = next((k for k in keys if k.name == INITIAL_ADMIN_NAME), None)
            if initial is not None and _active(initial, now):
                log.info(
                    "auth.initial_admin_key",
                    prefix=initial.prefix,
                    file=str(data_dir / ADMIN_KEY_FILE),
                )
            return
        # No admin can get in (a fresh host, only other roles made offline, or every
        # admin key expired or revoked): make one.
        key, secret = await self.create(name=INITIAL_ADMIN_NAME, role=Role.ADMIN.value)
        path = data_dir / ADMIN_KEY_FILE
        write_private_file(path, secret + "\n")
        log.warning("auth.initial_admin_key_created", prefix=key.prefix, file=str(path))
        if console.isatty():
            print(
                f"\nenginehost: created the first admin API key (also in {path}, mode 0600):\n"
                f"\n    {secret}\n\nIt is shown only this once.\n",
                file=console,
                flush=True,
            )

    async def _ensure_configured_admin(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ApiKeyValidationError(
                "ENGINEHOST_ADMIN_KEY", f"must be at least {MIN_SECRET_LENGTH} characters"
            )
        presented = hash_secret(secret, self._pepper)

        def work(session: Session) -> ApiKey | None:
            statement = select(ApiKey).where(col(ApiKey.key_hash) == presented)
            return session.exec(statement).first()

        existing = await self._database.run(work, readonly=True)
        if existing is None:
            key, _ = await self.create(name=ENV_ADMIN_NAME, role=Role.ADMIN.value, secret=secret)
            log.info("auth.configured_admin_key_added", prefix=key.prefix)
        elif not _active(existing, utc_now()):
            log.warning("auth.configured_admin_key_inactive", prefix=existing.prefix)


def _new_id() -> str:
    from uuid import uuid4

    return str(uuid4())


def _locked(session: Session, key_id: str) -> ApiKey:
    key = session.exec(select(ApiKey).where(col(ApiKey.id) == key_id).with_for_update()).first()
    if key is None:
        raise ApiKeyError(404, "api_key_not_found", f"API key {key_id!r} not found")
    return key


def _lock_for_removal(session: Session, key_id: str) -> ApiKey:
    """The key, locked; for an admin key, every admin key locked, in id order.

    Two removals of different admin keys must not each see the other remain, and must
    not deadlock: both lock the same rows in the same order (roles never change).
    """
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ApiKeyError(404, "api_key_not_found", f"API key {key_id!r} not found")
    if key.role != Role.ADMIN.value:
        return _locked(session, key_id)
    session.exec(
        select(ApiKey)
        .where(col(ApiKey.role) == Role.ADMIN.value)
        .order_by(col(ApiKey.id))
        .with_for_update()
    ).all()
    session.refresh(key)
    return key


def _refuse_if_last_admin(session: Session, key: ApiKey, verb: str) -> None:
    """Raise 409 if ``key`` is the last active admin (admins already locked)."""
    now = utc_now()
    if key.role != Role.ADMIN.value or not _active(key, now):
        return
    admins: Iterable[ApiKey] = session.exec(
        select(ApiKey).where(col(ApiKey.role) == Role.ADMIN.value)
    ).all()
    others = [a for a in admins if a.id != key.id and _active(a, now)]
    if not others:
        raise ApiKeyError(
            409,
            "last_admin_key",
            f"the last active admin key cannot be {verb}; create another admin key first",
        )
