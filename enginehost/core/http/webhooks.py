"""Webhook routes: per session, global (admin), test deliveries and dead letters.

``/api/sessions/{sessionId}/webhooks`` is the contract's CRUD plus ``.../test``; the
session is named by its id or its name, and webhooks are stored under its id. Reads need
a viewer key, changes and test deliveries an operator key, and a key limited to other
sessions gets 404 as if the session did not exist.

``/api/webhooks`` reaches every webhook the key may see by id alone: an admin sees all,
global ones included; other keys see the webhooks of their sessions only (a global one,
or one of a session they may not see, is 404 to a session-limited key and 403 to an
unlimited non-admin key). Creating a global webhook, which receives the events of every
session, and anything about dead letters needs an admin key.

Answers never carry a webhook's ``secret`` or header values: ``hasSecret`` and
``headerNames`` say what is set. Test deliveries and dead letters are the delivery
dispatcher's (``host.deliveries``); without it those routes answer 503.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import Field, model_validator

from enginehost.core.auth.roles import Role
from enginehost.core.http.audit import OFFSET_MAX
from enginehost.core.http.auth import Access, Scope, SessionOperator, SessionViewer, requires
from enginehost.core.http.errors import ApiError
from enginehost.core.http.models import CamelModel, RequestModel, Responses
from enginehost.core.sessions.store import SessionNotFoundError, SessionStore
from enginehost.core.webhooks.delivery import AttemptOutcome
from enginehost.core.webhooks.matching import WebhookFilters
from enginehost.core.webhooks.models import DeadLetterRecord, WebhookRecord
from enginehost.core.webhooks.registry import (
    ID_MAX,
    WebhookCreate,
    WebhookNotFoundError,
    WebhookRegistry,
    WebhookUpdate,
)

__all__ = [
    "DeadLetterOut",
    "DeadLetterPage",
    "Deliveries",
    "RedriveRequest",
    "RedriveResult",
    "RetryPolicyOut",
    "WebhookOut",
    "WebhookTestResult",
    "router",
]

router = APIRouter(tags=["webhooks"])

DEAD_LETTER_LIMIT_MAX = 500
REDRIVE_IDS_MAX = 1000
# Beyond any real table, and inside every backend's integer range.


class Deliveries(Protocol):
    """What these routes need of the delivery dispatcher."""

    async def send_test(self, webhook: WebhookRecord) -> AttemptOutcome: ...

    async def dead_letters(
        self, *, webhook_id: str | None, session_id: str | None, limit: int, offset: int
    ) -> tuple[list[DeadLetterRecord], int]: ...

    async def redrive(self, *, ids: list[str] | None, webhook_id: str | None) -> int: ...


# ------------------------------------------------------------------------------ models


class RetryPolicyOut(CamelModel):
    """A webhook's own retry delays; null fields: the host's settings."""

    base_seconds: float | None
    cap_seconds: float | None


class WebhookOut(CamelModel):
    """A webhook, without its write-only secret and header values."""

    id: str = Field(description="The webhook's id (a UUID).")
    session_id: str | None = Field(
        description="The id of its session; null for a global webhook (every session's events)."
    )
    url: str
    events: list[str] = Field(description='Event names, or `["*"]` for every event.')
    filters: WebhookFilters = Field(description="Null fields do not filter.")
    active: bool
    retry_count: int | None = Field(
        description="Retries after the first attempt; null: the host's setting."
    )
    retry_policy: RetryPolicyOut | None = Field(
        description="Retry delay overrides; null: the host's settings."
    )
    has_secret: bool = Field(
        description="Whether deliveries are signed (the secret is never shown)."
    )
    header_names: list[str] = Field(
        description="The extra headers' names (values are never shown)."
    )
    created_at: datetime
    updated_at: datetime


class WebhookTestResult(CamelModel):
    """How a test delivery went."""

    delivered: bool = Field(description="Whether the receiver took it (a 2xx answer).")
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    error: str | None = Field(description="Why it was not delivered.")
    duration_ms: float = Field(description="How long the attempt took.")
    response_excerpt: str = Field(description="The start of the receiver's answer.")
    retryable: bool = Field(description="Whether a real delivery would be retried after this.")


class DeadLetterOut(CamelModel):
    """A delivery whose attempts ran out."""

    id: str = Field(description="Its delivery id (`X-OpenWA-Delivery-Id`).")
    webhook_id: str
    session_id: str | None
    event: str
    idempotency_key: str
    attempts: int
    last_error: str | None
    last_status: int | None = Field(description="The receiver's last HTTP status, if any.")
    created_at: datetime
    dead_at: datetime
    payload: Any = Field(description="The body that was sent, as JSON.")


class DeadLetterPage(CamelModel):
    """A page of dead letters, newest first."""

    dead_letters: list[DeadLetterOut]
    total: int = Field(description="Dead letters matching the filters, over all pages.")
    limit: int
    offset: int


DeliveryId = Annotated[str, Field(min_length=1, max_length=ID_MAX)]


class RedriveRequest(RequestModel):
    """Which dead letters to deliver again: ``ids`` and/or a ``webhookId`` (both: those
    ids of that webhook), or ``all: true`` alone."""

    ids: list[DeliveryId] | None = Field(None, min_length=1, max_length=REDRIVE_IDS_MAX)
    webhook_id: str | None = Field(None, min_length=1, max_length=ID_MAX)
    all: bool = Field(False, description="Every dead letter.")

    @model_validator(mode="after")
    def _one_choice(self) -> RedriveRequest:
        chosen = self.ids is not None or self.webhook_id is not None
        if self.all and chosen:
            raise ValueError("give all: true alone, or ids and/or webhookId")
        if not self.all and not chosen:
            raise ValueError("give ids, webhookId, or all: true")
        return self


class RedriveResult(CamelModel):
    redriven: int = Field(description="Dead letters put back into the outbox.")


# ----------------------------------------------------------------------------- helpers

WebhookId = Annotated[str, Path(alias="webhookId", description="The webhook's id.")]

GlobalViewer = Annotated[Access, requires(Role.VIEWER, Scope.ANY)]
GlobalOperator = Annotated[Access, requires(Role.OPERATOR, Scope.ANY)]
Admin = Annotated[Access, requires(Role.ADMIN, Scope.GLOBAL)]


def _registry(request: Request) -> WebhookRegistry:
    registry: WebhookRegistry | None = getattr(request.app.state.host, "webhooks", None)
    if registry is None:
        raise ApiError(503, "webhooks are not available on this host", code="unavailable")
    return registry


def _deliveries(request: Request) -> Deliveries:
    deliveries: Deliveries | None = getattr(request.app.state.host, "deliveries", None)
    if deliveries is None:
        raise ApiError(503, "webhook delivery is not running", code="unavailable")
    return deliveries


def _check_id(webhook_id: str) -> None:
    """An id that cannot exist is simply not found (no database query)."""
    if len(webhook_id) > ID_MAX:
        raise WebhookNotFoundError(f"no webhook {webhook_id[:ID_MAX] + '...'!r}")


def _session_id(access: Access) -> str:
    return access.require_session().id


async def _reachable(request: Request, access: Access, webhook_id: str) -> WebhookRecord:
    """The webhook ``webhook_id`` if the caller may reach it through ``/webhooks/{id}``."""
    _check_id(webhook_id)
    record = await _registry(request).find(webhook_id)
    principal = access.principal
    hidden = WebhookNotFoundError(f"no webhook {webhook_id!r}")
    if record.session_id is None:
        if principal.scoped:
            raise hidden  # the same answer as a missing one: nothing leaks
        if not principal.role.allows(Role.ADMIN):
            raise ApiError(
                403,
                f"global webhooks need role admin; the key has role {principal.role.value}",
                code="forbidden_role",
            )
        return record
    sessions: SessionStore = request.app.state.host.sessions
    try:
        session = await sessions.resolve(record.session_id)
    except SessionNotFoundError:
        raise hidden from None  # deleted meanwhile (its webhooks go with it)
    if not principal.may_see(session.name):
        raise hidden
    request.state.audit_session = session.name
    return record


def webhook_out(record: WebhookRecord) -> WebhookOut:
    """The API's view of a webhook: never its secret nor its header values."""
    retry = None
    if record.retry_base is not None or record.retry_cap is not None:
        retry = RetryPolicyOut(base_seconds=record.retry_base, cap_seconds=record.retry_cap)
    return WebhookOut(
        id=record.id,
        session_id=record.session_id,
        url=record.url,
        events=list(record.events),
        filters=WebhookFilters.model_validate(record.filters or {}),
        active=record.active,
        retry_count=record.retry_count,
        retry_policy=retry,
        has_secret=bool(record.secret),
        header_names=sorted(record.headers or {}, key=str.lower),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


async def _test(request: Request, record: WebhookRecord) -> WebhookTestResult:
    outcome = await _deliveries(request).send_test(record)
    return WebhookTestResult(
        delivered=outcome.delivered,
        status_code=outcome.status,
        error=outcome.error,
        duration_ms=round(outcome.duration * 1000, 1),
        response_excerpt=outcome.response_excerpt,
        retryable=outcome.retryable,
    )


def _payload(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body  # written by the host as JSON; shown as text rather than lost


def dead_letter_out(record: DeadLetterRecord) -> DeadLetterOut:
    return DeadLetterOut(
        id=record.id,
        webhook_id=record.webhook_id,
        session_id=record.session_id,
        event=record.event,
        idempotency_key=record.idempotency_key,
        attempts=record.attempts,
        last_error=record.last_error,
        last_status=record.last_status,
        created_at=record.created_at,
        dead_at=record.dead_at,
        payload=_payload(record.body),
    )


_NOT_FOUND: Responses = {
    404: {"description": "No such session or webhook (or not visible to the key)"}
}
_INVALID: Responses = {
    422: {
        "description": "A field is invalid (`errors` names each one), including a URL whose "
        "host does not resolve or resolves to a private address"
    }
}
_UPDATE_ERRORS: Responses = {
    **_NOT_FOUND,
    422: {"description": "A field is invalid, or the body names no field to change"},
}
_TEST_ERRORS: Responses = {
    **_NOT_FOUND,
    503: {"description": "Webhook delivery is not running on this host"},
}
_GLOBAL_ONLY_ADMIN = (
    " Global webhooks (`sessionId` null) need role admin; a session-limited key reaches "
    "only the webhooks of its sessions."
)


# ---------------------------------------------------------------- per-session routes


@router.get(
    "/sessions/{sessionId}/webhooks",
    summary="List a session's webhooks",
    response_model=list[WebhookOut],
    responses=_NOT_FOUND,
)
async def list_session_webhooks(request: Request, access: SessionViewer) -> list[WebhookOut]:
    """Every webhook of the session, oldest first (global webhooks are not listed)."""
    records = await _registry(request).list([_session_id(access)], include_global=False)
    return [webhook_out(record) for record in records]


@router.post(
    "/sessions/{sessionId}/webhooks",
    summary="Register a webhook for a session",
    status_code=201,
    response_model=WebhookOut,
    responses={**_NOT_FOUND, **_INVALID},
)
async def create_session_webhook(
    request: Request, payload: WebhookCreate, access: SessionOperator
) -> WebhookOut:
    """A new webhook receiving the session's events (``secret`` and ``headers`` are
    write-only)."""
    record = await _registry(request).create(_session_id(access), payload)
    return webhook_out(record)


@router.get(
    "/sessions/{sessionId}/webhooks/{webhookId}",
    summary="Get a session's webhook",
    response_model=WebhookOut,
    responses=_NOT_FOUND,
)
async def get_session_webhook(
    request: Request, webhook_id: WebhookId, access: SessionViewer
) -> WebhookOut:
    _check_id(webhook_id)
    return webhook_out(await _registry(request).get(webhook_id, _session_id(access)))


@router.put(
    "/sessions/{sessionId}/webhooks/{webhookId}",
    summary="Change a session's webhook",
    response_model=WebhookOut,
    responses=_UPDATE_ERRORS,
)
async def update_session_webhook(
    request: Request, webhook_id: WebhookId, payload: WebhookUpdate, access: SessionOperator
) -> WebhookOut:
    """Only the fields given change. ``secret``/``headers``: absent keeps them, null
    removes them, a value replaces them."""
    _check_id(webhook_id)
    record = await _registry(request).update(webhook_id, _session_id(access), payload)
    return webhook_out(record)


@router.delete(
    "/sessions/{sessionId}/webhooks/{webhookId}",
    summary="Delete a session's webhook",
    status_code=204,
    response_class=Response,
    responses=_NOT_FOUND,
)
async def delete_session_webhook(
    request: Request, webhook_id: WebhookId, access: SessionOperator
) -> Response:
    """Delete the webhook, with the deliveries it still had to make."""
    _check_id(webhook_id)
    session_id = _session_id(access)
    if not await _registry(request).delete(webhook_id, session_id):
        raise WebhookNotFoundError(f"no webhook {webhook_id!r} in session {session_id!r}")
    return Response(status_code=204)


@router.post(
    "/sessions/{sessionId}/webhooks/{webhookId}/test",
    summary="Send a test delivery to a session's webhook",
    response_model=WebhookTestResult,
    responses=_TEST_ERRORS,
)
async def test_session_webhook(
    request: Request, webhook_id: WebhookId, access: SessionOperator
) -> WebhookTestResult:
    """POST one `webhook.test` event to the webhook now (once: no retry, not queued),
    active or not, and say how it went."""
    _check_id(webhook_id)
    record = await _registry(request).get(webhook_id, _session_id(access))
    return await _test(request, record)


# -------------------------------------------------------------- routes across sessions


@router.get(
    "/webhooks", summary="List every webhook the key may see", response_model=list[WebhookOut]
)
async def list_webhooks(request: Request, access: GlobalViewer) -> list[WebhookOut]:
    """An admin key sees every webhook, global ones included; another key the webhooks
    of the sessions it may see."""
    principal = access.principal
    registry = _registry(request)
    if principal.scoped:
        sessions: SessionStore = request.app.state.host.sessions
        visible = [record.id for record in await sessions.list(principal.sessions)]
        records = await registry.list(visible, include_global=False)
    else:
        records = await registry.list(include_global=principal.role.allows(Role.ADMIN))
    return [webhook_out(record) for record in records]


@router.post(
    "/webhooks",
    summary="Register a global webhook (every session's events)",
    status_code=201,
    response_model=WebhookOut,
    responses=_INVALID,
)
async def create_global_webhook(
    request: Request, payload: WebhookCreate, access: Admin
) -> WebhookOut:
    """A new webhook receiving the events of every session, present and future."""
    return webhook_out(await _registry(request).create(None, payload))


# Declared before /webhooks/{webhookId}: a literal path is matched in order.
@router.get(
    "/webhooks/dead-letters",
    summary="List dead letters (deliveries whose attempts ran out)",
    response_model=DeadLetterPage,
    responses={503: {"description": "Webhook delivery is not running on this host"}},
)
async def list_dead_letters(
    request: Request,
    access: Admin,
    webhook_id: Annotated[
        str | None, Query(alias="webhookId", max_length=ID_MAX, description="Only this webhook's.")
    ] = None,
    session_id: Annotated[
        str | None,
        Query(alias="sessionId", max_length=100, description="Only this session's (id or name)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=DEAD_LETTER_LIMIT_MAX, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX, description="Entries to skip.")] = 0,
) -> DeadLetterPage:
    """Newest first, with the body each one would have delivered."""
    deliveries = _deliveries(request)
    if session_id is not None:
        sessions: SessionStore = request.app.state.host.sessions
        # A session gone has no dead letters left: then the raw value finds none.
        with contextlib.suppress(SessionNotFoundError):
            session_id = (await sessions.resolve(session_id)).id
    records, total = await deliveries.dead_letters(
        webhook_id=webhook_id, session_id=session_id, limit=limit, offset=offset
    )
    return DeadLetterPage(
        dead_letters=[dead_letter_out(record) for record in records],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/webhooks/dead-letters/redrive",
    summary="Deliver dead letters again",
    response_model=RedriveResult,
    responses={
        **_INVALID,
        503: {"description": "Webhook delivery is not running on this host"},
    },
)
async def redrive_dead_letters(
    request: Request, payload: RedriveRequest, access: Admin
) -> RedriveResult:
    """Put the chosen dead letters back into the outbox: the same body and idempotency
    key (receivers can drop what they already took), attempts counted from zero."""
    count = await _deliveries(request).redrive(ids=payload.ids, webhook_id=payload.webhook_id)
    return RedriveResult(redriven=count)


@router.get(
    "/webhooks/{webhookId}",
    summary="Get a webhook",
    description=_GLOBAL_ONLY_ADMIN,
    response_model=WebhookOut,
    responses=_NOT_FOUND,
)
async def get_webhook(request: Request, webhook_id: WebhookId, access: GlobalViewer) -> WebhookOut:
    return webhook_out(await _reachable(request, access, webhook_id))


@router.put(
    "/webhooks/{webhookId}",
    summary="Change a webhook",
    description="Only the fields given change. `secret`/`headers`: absent keeps them, null "
    "removes them, a value replaces them." + _GLOBAL_ONLY_ADMIN,
    response_model=WebhookOut,
    responses=_UPDATE_ERRORS,
)
async def update_webhook(
    request: Request, webhook_id: WebhookId, payload: WebhookUpdate, access: GlobalOperator
) -> WebhookOut:
    record = await _reachable(request, access, webhook_id)
    # A webhook never changes owner, so the owner read above still holds.
    updated = await _registry(request).update(webhook_id, record.session_id, payload)
    return webhook_out(updated)


@router.delete(
    "/webhooks/{webhookId}",
    summary="Delete a webhook",
    description="Deletes it with the deliveries it still had to make." + _GLOBAL_ONLY_ADMIN,
    status_code=204,
    response_class=Response,
    responses=_NOT_FOUND,
)
async def delete_webhook(
    request: Request, webhook_id: WebhookId, access: GlobalOperator
) -> Response:
    record = await _reachable(request, access, webhook_id)
    if not await _registry(request).delete(webhook_id, record.session_id):
        raise WebhookNotFoundError(f"no webhook {webhook_id!r}")
    return Response(status_code=204)


@router.post(
    "/webhooks/{webhookId}/test",
    summary="Send a test delivery to a webhook",
    description="POSTs one `webhook.test` event now (once: no retry, not queued), active "
    "or not." + _GLOBAL_ONLY_ADMIN,
    response_model=WebhookTestResult,
    responses=_TEST_ERRORS,
)
async def test_webhook(
    request: Request, webhook_id: WebhookId, access: GlobalOperator
) -> WebhookTestResult:
    return await _test(request, await _reachable(request, access, webhook_id))
