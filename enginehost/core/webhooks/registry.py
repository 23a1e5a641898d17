"""Webhook registrations: create, read, change and delete, each in one transaction.

Values are checked at the edge, by the request models below (a 422 naming the field,
as every API validation error does), then once more here for what needs the network:
the URL's host is resolved and refused when it points at the host's own loopback,
private networks, link-local or cloud metadata addresses, unless the operator's
allow-list (``ENGINEHOST_WEBHOOK_ALLOWED_HOSTS``) names it. Deliveries are guarded
again when they connect (a name can resolve differently later); this check is for a
clear error at registration rather than a dead letter hours later.

``secret`` and ``headers`` are write-only: they are stored for deliveries and never
appear in an answer, an error message or a log line. Answers say only whether a
secret is set and which header names are.

The in-memory :class:`~enginehost.core.webhooks.matching.WebhookIndex` the outbox
matches events against is changed only once a change has committed (a rolled back
write never reaches it), with the snapshot built inside the transaction from exactly
what was written.

Webhooks handed back are detached model instances with every column loaded.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Collection
from functools import partial
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import anyio
from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, col, delete, or_, select

from enginehost.core.db.after_commit import after_commit
from enginehost.core.db.database import Database
from enginehost.core.db.lookups import searchable
from enginehost.core.engine import MessageType, utc_now
from enginehost.core.errors import FieldError, ServiceError
from enginehost.core.http.models import RequestModel
from enginehost.core.net.guard import AddressPolicy, parse_address
from enginehost.core.sessions.store import SessionNotFoundError
from enginehost.core.webhooks.catalogue import ALL_EVENTS, EVENT_TYPES
from enginehost.core.webhooks.delivery import is_reserved_header
from enginehost.core.webhooks.matching import WebhookFilters, WebhookIndex, WebhookSnapshot
from enginehost.core.webhooks.models import HEADER_VALUE_MAX, URL_MAX, WebhookRecord

__all__ = [
    "HEADERS_MAX",
    "HEADER_NAME_MAX",
    "ID_MAX",
    "RESOLVE_TIMEOUT",
    "RETRY_COUNT_MAX",
    "RETRY_SECONDS_MAX",
    "SECRET_MAX",
    "SECRET_MIN",
    "NothingToUpdateError",
    "WebhookCreate",
    "WebhookError",
    "WebhookNotFoundError",
    "WebhookRegistry",
    "WebhookRetryPolicy",
    "WebhookUpdate",
    "WebhookValidationError",
]

ID_MAX: Final = 36
SECRET_MIN: Final = 16
"""An HMAC key much shorter than this can be guessed offline from one signed delivery
(the body and its signature are all an attacker needs): then anyone can forge events."""
SECRET_MAX: Final = 512
HEADERS_MAX: Final = 20
HEADER_NAME_MAX: Final = 100
RETRY_COUNT_MAX: Final = 100
RETRY_SECONDS_MAX: Final = 86400.0
RESOLVE_TIMEOUT: Final = 5.0
"""Seconds a registration waits for the URL's host to resolve."""
ALLOW_LIST_SETTING: Final = "ENGINEHOST_WEBHOOK_ALLOWED_HOSTS"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 header name characters
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_MESSAGE_TYPES = frozenset(kind.value for kind in MessageType)
_FOREIGN_KEY_VIOLATION = "23503"


# --------------------------------------------------------------------------- errors


class WebhookError(ServiceError):
    """Base class: a caller's mistake about webhooks (never a bug in the host)."""


class WebhookNotFoundError(WebhookError):
    """No webhook with that id, or not one the caller may reach that way."""

    status_code = 404
    default_code = "webhook_not_found"


class WebhookValidationError(WebhookError, FieldError):
    """A value is not acceptable; ``field`` says which (``url``, ``events``, ...)."""


class NothingToUpdateError(WebhookError):
    """A change that names no field."""

    status_code = 422
    default_code = "nothing_to_update"


# ------------------------------------------------------------------- field checks


def _invalid(message: str) -> PydanticCustomError:
    # A custom error rather than a ValueError: pydantic would prefix "Value error, ".
    return PydanticCustomError("invalid_value", message)


def _shown(value: str, limit: int = 64) -> str:
    """``value`` quoted for an error message, cut when long (it echoes the caller)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _check_url(value: str) -> str:
    # Never echo the URL: its query string or user info may hold a token.
    if any(char <= " " or char == "\x7f" for char in value):
        raise _invalid("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise _invalid("is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _invalid("must be an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise _invalid(
            "must not contain a user name or password: put credentials in `headers` "
            "(an Authorization header, say), which are never shown again"
        )
    if not parts.hostname:
        raise _invalid("must name a host")
    if port == 0:
        raise _invalid("port 0 cannot be connected to")
    return value


def _check_events(value: list[str]) -> list[str]:
    unique = list(dict.fromkeys(value))
    if ALL_EVENTS in unique:
        if len(unique) > 1:
            raise _invalid(f'"{ALL_EVENTS}" means every event: give it alone')
        return unique
    for event in unique:
        if event not in EVENT_TYPES:
            raise _invalid(
                f"unknown event {_shown(event)}; the events are {', '.join(EVENT_TYPES)}, "
                f'or "{ALL_EVENTS}" for every event'
            )
    return unique


def _check_secret(value: str) -> str:
    if "\x00" in value:
        raise _invalid("must not contain NUL characters")
    return value


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    # Messages name a header, never its value: values are write-only like the secret.
    seen: set[str] = set()
    for name, header_value in value.items():
        if len(name) > HEADER_NAME_MAX or not _TOKEN.fullmatch(name):
            raise _invalid(
                f"{_shown(name)} is not a header name: 1 to {HEADER_NAME_MAX} letters, "
                "digits or !#$%&'*+-.^_`|~"
            )
        if name.lower() in seen:
            raise _invalid(f"{name!r} is given twice (header names ignore case)")
        seen.add(name.lower())
        if is_reserved_header(name):
            raise _invalid(
                f"{name!r} is set by the host on every delivery and cannot be given "
                "(nor can any X-OpenWA-* or X-Enginehost-* header)"
            )
        if len(header_value) > HEADER_VALUE_MAX:
            raise _invalid(f"the value of {name!r} is over {HEADER_VALUE_MAX} characters")
        if not _PRINTABLE.fullmatch(header_value):
            raise _invalid(
                f"the value of {name!r} must be printable ASCII (no line breaks, tabs or "
                "other control characters)"
            )
    return value


def _check_filters(value: WebhookFilters) -> WebhookFilters:
    for chat_id in value.chat_ids or ():
        if not _PRINTABLE.fullmatch(chat_id):
            raise _invalid(f"chatIds: {_shown(chat_id)} must not contain control characters")
    for kind in value.message_types or ():
        if kind not in _MESSAGE_TYPES:
            raise _invalid(
                f"messageTypes: unknown type {_shown(kind)}; the types are "
                + ", ".join(sorted(_MESSAGE_TYPES))
            )
    return value


WebhookUrl = Annotated[
    str,
    Field(
        max_length=URL_MAX,
        description="Where deliveries are POSTed: an absolute http(s) URL without user "
        "or password. Its host must resolve to public addresses unless the host's "
        f"allow-list ({ALLOW_LIST_SETTING}) names it.",
        examples=["https://example.com/hooks/whatsapp"],
    ),
    AfterValidator(_check_url),
]
WebhookEvents = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=len(EVENT_TYPES) + 1,
        description=f'Event names to receive, or `["{ALL_EVENTS}"]` for every event '
        "(present and future). Repeats are dropped.",
        examples=[["message.received", "session.status"]],
    ),
    AfterValidator(_check_events),
]
WebhookSecret = Annotated[
    str,
    Field(
        min_length=SECRET_MIN,
        max_length=SECRET_MAX,
        description="Write-only. The HMAC-SHA256 key deliveries are signed with "
        f"(`X-OpenWA-Signature`). At least {SECRET_MIN} characters: a short key can be "
        "guessed from one signed delivery.",
    ),
    AfterValidator(_check_secret),
]
WebhookHeaders = Annotated[
    dict[str, str],
    Field(
        max_length=HEADERS_MAX,
        description="Write-only. Extra headers sent with every delivery (an "
        "`Authorization` for the receiver, say); answers list their names only. "
        "Names the host sets itself are refused.",
        examples=[{"Authorization": "Bearer <token>"}],
    ),
    AfterValidator(_check_headers),
]
Filters = Annotated[
    WebhookFilters,
    Field(description="Narrow message events; every filter given must match."),
    AfterValidator(_check_filters),
]
RetryCount = Annotated[
    int,
    Field(
        ge=0,
        le=RETRY_COUNT_MAX,
        description="Retries after a delivery's first attempt before it becomes a dead "
        "letter; null: the host's setting.",
    ),
]
RetrySeconds = Annotated[float, Field(gt=0, le=RETRY_SECONDS_MAX)]


class WebhookRetryPolicy(RequestModel):
    """Overrides of the host's retry delays for one webhook (null or absent: the host's)."""

    base_seconds: RetrySeconds | None = Field(
        None, description="The first delay before a retry (it doubles on each)."
    )
    cap_seconds: RetrySeconds | None = Field(None, description="The longest delay.")

    @model_validator(mode="after")
    def _base_within_cap(self) -> WebhookRetryPolicy:
        base, cap = self.base_seconds, self.cap_seconds
        if base is not None and cap is not None and base > cap:
            raise _invalid("baseSeconds must not be more than capSeconds")
        return self


class WebhookCreate(RequestModel):
    """A new webhook."""

    url: WebhookUrl
    events: WebhookEvents
    secret: WebhookSecret | None = None
    headers: WebhookHeaders | None = None
    filters: Filters | None = None
    retry_count: RetryCount | None = None
    retry_policy: WebhookRetryPolicy | None = Field(
        None, description="Retry delay overrides; null: the host's settings."
    )
    active: bool = Field(True, description="Whether events are delivered.")


class WebhookUpdate(RequestModel):
    """The fields to change; absent fields stay as they are. ``secret`` and ``headers``:
    absent keeps them, null removes them, a value replaces them. ``filters``,
    ``retryCount`` and ``retryPolicy``: null goes back to none / the host's settings."""

    url: WebhookUrl | None = None
    events: WebhookEvents | None = None
    secret: WebhookSecret | None = None
    headers: WebhookHeaders | None = None
    filters: Filters | None = None
    retry_count: RetryCount | None = None
    retry_policy: WebhookRetryPolicy | None = None
    active: bool | None = None

    @field_validator("url", "events", "active", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Runs only for fields given (defaults are not validated): null is refused.
        if value is None:
            raise _invalid("must not be null")
        return value


_UPDATABLE: Final = tuple(WebhookUpdate.model_fields)


# ----------------------------------------------------------------------- database work


# A lookup value that can match no row (see searchable).
_searchable = partial(searchable, max_length=ID_MAX)


def _owned_by(session_id: str | None) -> Any:
    column = col(WebhookRecord.session_id)
    return column.is_(None) if session_id is None else column == session_id


def _not_found(webhook_id: str, session_id: str | None) -> WebhookNotFoundError:
    shown = _shown(webhook_id, ID_MAX)
    if session_id is None:
        return WebhookNotFoundError(f"no global webhook {shown}")
    return WebhookNotFoundError(f"no webhook {shown} in session {_shown(session_id, ID_MAX)}")


def _find(
    session: Session, webhook_id: str, session_id: str | None, *, lock: bool = False
) -> WebhookRecord:
    if not _searchable(webhook_id):
        raise _not_found(webhook_id, session_id)
    statement = select(WebhookRecord).where(
        col(WebhookRecord.id) == webhook_id, _owned_by(session_id)
    )
    if lock:
        statement = statement.with_for_update()
    record = session.exec(statement).first()
    if record is None:
        raise _not_found(webhook_id, session_id)
    return record


def _is_missing_session(exc: IntegrityError) -> bool:
    original = exc.orig
    if getattr(original, "sqlstate", None) == _FOREIGN_KEY_VIOLATION:  # PostgreSQL
        return True
    return "FOREIGN KEY constraint failed" in str(original)  # SQLite


def _flush(session: Session, session_id: str | None) -> None:
    """Flush a webhook's insert or update; a session gone meanwhile is a 404.

    Errors leave without their SQL parameters: SQLAlchemy's message would quote the
    row, secret and header values included, into the error log.
    """
    try:
        session.flush()
    except IntegrityError as exc:
        if session_id is not None and _is_missing_session(exc):
            raise SessionNotFoundError(session_id) from None
        raise _refused(exc) from None
    except OperationalError:
        raise  # the database's trouble (a 503), reported without the statement
    except DBAPIError as exc:
        raise _refused(exc) from None


def _refused(exc: DBAPIError) -> RuntimeError:
    return RuntimeError(f"the database refused the webhook: {type(exc.orig).__name__}")


def _stored_filters(filters: WebhookFilters | None) -> dict[str, Any]:
    if filters is None:
        return {}
    return filters.model_dump(by_alias=True, exclude_none=True)


def _stored_retry(policy: WebhookRetryPolicy | None) -> tuple[float | None, float | None]:
    return (None, None) if policy is None else (policy.base_seconds, policy.cap_seconds)


# ---------------------------------------------------------------------------- service


class WebhookRegistry:
    """The webhooks of every session, and the global ones, in the data database."""

    def __init__(
        self,
        database: Database,
        index: WebhookIndex,
        *,
        policy: AddressPolicy,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self._database = database
        self.index = index
        self.policy = policy
        self._resolve_timeout = resolve_timeout

    async def check_url(self, url: str) -> None:
        """Refuse (422, field ``url``) a URL whose host does not resolve, or resolves to
        an address the policy refuses (one such address is enough, as at delivery)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            with anyio.fail_after(self._resolve_timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise WebhookValidationError(
                "url", f"{host!r} did not resolve within {self._resolve_timeout:g} s"
            ) from None
        except (OSError, UnicodeError):
            raise WebhookValidationError("url", f"{host!r} does not resolve") from None
        for info in infos:
            reason = self.policy.refusal(host, parse_address(str(info[4][0])))
            if reason is not None:
                raise WebhookValidationError(
                    "url",
                    f"{reason} (or reserved, multicast or a cloud metadata address); "
                    f"the host refuses to deliver there unless {ALLOW_LIST_SETTING} "
                    "allows it",
                )

    async def create(self, session_id: str | None, spec: WebhookCreate) -> WebhookRecord:
        """A new webhook of ``session_id`` (None: a global one, for every session's events)."""
        if session_id is not None and not _searchable(session_id):
            raise SessionNotFoundError(session_id)
        await self.check_url(spec.url)
        retry_base, retry_cap = _stored_retry(spec.retry_policy)
        now = utc_now()
        record = WebhookRecord(
            session_id=session_id,
            url=spec.url,
            events=list(spec.events),
            filters=_stored_filters(spec.filters),
            secret=spec.secret,
            headers=dict(spec.headers or {}),
            active=spec.active,
            retry_count=spec.retry_count,
            retry_base=retry_base,
            retry_cap=retry_cap,
            created_at=now,
            updated_at=now,
        )
        index = self.index

        def work(session: Session) -> WebhookRecord:
            session.add(record)
            _flush(session, session_id)
            snapshot = WebhookSnapshot.of(record)
            after_commit(session, lambda: index.put(snapshot))
            return record

        return await self._database.run(work)

    async def get(self, webhook_id: str, session_id: str | None) -> WebhookRecord:
        """The webhook ``webhook_id`` of ``session_id`` (None: a global one), else 404."""

        def work(session: Session) -> WebhookRecord:
            return _find(session, webhook_id, session_id)

        return await self._database.run(work, readonly=True)

    async def find(self, webhook_id: str) -> WebhookRecord:
        """The webhook ``webhook_id`` whoever owns it (the caller checks who may see it)."""

        def work(session: Session) -> WebhookRecord | None:
            if not _searchable(webhook_id):
                return None
            return session.get(WebhookRecord, webhook_id)

        record = await self._database.run(work, readonly=True)
        if record is None:
            raise WebhookNotFoundError(f"no webhook {_shown(webhook_id, ID_MAX)}")
        return record

    async def update(
        self, webhook_id: str, session_id: str | None, changes: WebhookUpdate
    ) -> WebhookRecord:
        """Change the fields given in ``changes`` (see :class:`WebhookUpdate`); 404 when
        ``webhook_id`` is not a webhook of ``session_id``. ``updatedAt`` always moves."""
        given = [name for name in _UPDATABLE if name in changes.model_fields_set]
        if not given:
            raise NothingToUpdateError(
                "nothing to update: give at least one of url, events, secret, headers, "
                "filters, retryCount, retryPolicy, active"
            )
        values: dict[str, Any] = {}
        for name in given:
            if name == "filters":
                values["filters"] = _stored_filters(changes.filters)
            elif name == "retry_policy":
                values["retry_base"], values["retry_cap"] = _stored_retry(changes.retry_policy)
            elif name == "headers":
                values["headers"] = dict(changes.headers or {})
            else:
                values[name] = getattr(changes, name)
        if changes.url is not None:
            await self.check_url(changes.url)
        index = self.index

        def work(session: Session) -> WebhookRecord:
            record = _find(session, webhook_id, session_id, lock=True)
            for name, value in values.items():
                setattr(record, name, value)
            record.updated_at = max(utc_now(), record.created_at)
            session.add(record)
            _flush(session, session_id)
            snapshot = WebhookSnapshot.of(record)
            after_commit(session, lambda: index.put(snapshot))
            return record

        return await self._database.run(work)

    async def delete(self, webhook_id: str, session_id: str | None) -> bool:
        """Delete the webhook (and, by the database's cascade, what it still had to
        deliver); False when ``session_id`` has no such webhook."""
        index = self.index

        def work(session: Session) -> bool:
            if not _searchable(webhook_id):
                return False
            result = session.exec(
                delete(WebhookRecord).where(
                    col(WebhookRecord.id) == webhook_id, _owned_by(session_id)
                )
            )
            if result.rowcount != 1:
                return False
            after_commit(session, lambda: index.remove(webhook_id))
            return True

        return await self._database.run(work)

    async def load_index(self) -> int:
        """Read every webhook into the index (at boot, before events flow); how many."""

        def work(session: Session) -> list[WebhookRecord]:
            return list(session.exec(select(WebhookRecord)).all())

        records = await self._database.run(work, readonly=True)
        self.index.load(records)
        return len(records)

    # Last: a method named ``list`` would shadow the builtin in annotations below it.
    async def list(
        self, session_ids: Collection[str] | None = None, *, include_global: bool
    ) -> list[WebhookRecord]:
        """The webhooks of ``session_ids`` (None: of every session), plus the global ones
        when ``include_global``; oldest first (ties: by id)."""
        wanted = None if session_ids is None else sorted(set(filter(_searchable, session_ids)))

        def work(session: Session) -> list[WebhookRecord]:
            statement = select(WebhookRecord)
            if wanted is None:
                if not include_global:
                    statement = statement.where(col(WebhookRecord.session_id).is_not(None))
            else:
                if not wanted and not include_global:
                    return []
                owned = col(WebhookRecord.session_id).in_(wanted)
                statement = statement.where(
                    or_(owned, _owned_by(None)) if include_global else owned
                )
            statement = statement.order_by(col(WebhookRecord.created_at), col(WebhookRecord.id))
            return [*session.exec(statement).all()]

        return await self._database.run(work, readonly=True)
