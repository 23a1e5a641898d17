"""The audit trail of the API: recording middleware and ``GET /api/audit`` (admin).

Every mutating call (POST, PUT, PATCH, DELETE) and every failed authentication (a 401
on any method) is recorded once its status is known: when, which key (id, prefix, role;
the presented prefix on a failure), which session, the action as the route's path
template (``POST /api/sessions/{sessionId}/templates``: ids and names stay out of it),
the status code, the client address and, for a failed authentication, the reason.
Never a request body or a secret. Recording only fills an in-memory buffer (see
:class:`~enginehost.core.audit.service.AuditLog`); it cannot fail or slow the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enginehost.core.audit.service import AuditLog
from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Scope as AccessScope
from enginehost.core.http.auth import requires
from enginehost.core.logging import get_logger

__all__ = ["AuditEntryOut", "AuditMiddleware", "AuditPage", "install_audit", "router"]

router = APIRouter(tags=["audit"])
log = get_logger("enginehost.audit")

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Beyond any real log, and inside every backend's integer range.
OFFSET_MAX = 2**31 - 1
LIMIT_MAX = 500


# ------------------------------------------------------------------------- recording


class AuditMiddleware:
    """Pure ASGI middleware: records without touching the body or the response stream."""

    def __init__(self, app: ASGIApp, host: FastAPI) -> None:
        self.app = app
        self.host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Shared with every Request made for this call: the auth dependency writes here.
        state = scope.setdefault("state", {})
        status: int | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            if status is None:
                status = 500  # the server error handler outside answers 500
            raise
        finally:
            if status is not None:
                self._record(scope, state, status)

    def _record(self, scope: Scope, state: Any, status: int) -> None:
        try:
            method = str(scope.get("method", ""))
            if method not in MUTATING_METHODS and status != 401:
                return
            audit: AuditLog = self.host.state.host.audit
            values = state if isinstance(state, Mapping) else {}
            principal = values.get("principal")
            client = scope.get("client")
            if principal is not None:
                key_id, prefix, role = principal.key_id, principal.prefix, principal.role.value
            else:
                key_id, prefix, role = None, values.get("auth_prefix"), None
            audit.record(
                action=f"{method} {action_path(scope)}",
                outcome=status,
                key_id=key_id,
                key_prefix=prefix,
                role=role,
                session=values.get("audit_session"),
                client=client[0] if client else None,
                detail=values.get("auth_failure") if status == 401 else None,
            )
        except Exception as exc:
            log.error("audit.record_failed", error=str(exc) or type(exc).__name__)


def action_path(scope: Scope) -> str:
    """The path template of the route that handled the call, else the raw path.

    The route knows its own template (``/sessions/{sessionId}``) but not the prefixes of
    the routers it was included in: those are what the raw path has before the part the
    route matched.
    """
    path = str(scope.get("path", ""))
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return path
    if ":path}" not in str(getattr(route, "path", "")):
        # Each parameter matches one segment: the route matched as many as it has.
        segments = path.split("/")
        depth = template.count("/")
        if len(segments) <= depth:
            return path
        return "/".join(segments[: len(segments) - depth]) + template
    params = scope.get("path_params") or {}
    convertors = getattr(route, "param_convertors", None) or {}
    try:
        rendered = template.format(
            **{
                name: convertors[name].to_string(value) if name in convertors else str(value)
                for name, value in params.items()
            }
        )
    except (KeyError, IndexError, ValueError, AssertionError):
        return path
    if not path.endswith(rendered):
        return path
    return path[: len(path) - len(rendered)] + template


def install_audit(app: FastAPI) -> None:
    """Record every mutating call and every failed authentication."""
    app.add_middleware(AuditMiddleware, host=app)


# --------------------------------------------------------------------------- reading


class _CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        from_attributes=True,
    )


class AuditEntryOut(_CamelModel):
    """One audit entry."""

    id: int
    at: datetime = Field(description="When the call ended (UTC).")
    key_id: str | None = Field(description="The key's id; null for a failed authentication.")
    key_prefix: str | None = Field(
        description="The key's prefix (for a failed authentication: of the key presented)."
    )
    role: str | None = Field(description="The key's role.")
    session: str | None = Field(description="The session's name, for session routes.")
    action: str = Field(description="Method and route template, e.g. `DELETE /api/x/{id}`.")
    outcome: int = Field(description="The HTTP status code of the answer.")
    client: str | None = Field(description="The client's address.")
    detail: str | None = Field(description="Why an authentication failed.")


class AuditPage(_CamelModel):
    """A page of audit entries, newest first."""

    entries: list[AuditEntryOut]
    total: int = Field(description="Entries matching the filters, over all pages.")
    limit: int
    offset: int


@router.get(
    "/audit",
    summary="The audit log: mutating calls and failed authentications",
    description=(
        "Entries newest first. Every POST, PUT, PATCH and DELETE is recorded, and every "
        "failed authentication (401) on any method. Entries are written in the background "
        "and appear here within a fraction of a second of the call."
    ),
    response_model=AuditPage,
    response_model_by_alias=True,
    dependencies=[requires(Role.ADMIN, AccessScope.GLOBAL)],
)
async def list_audit(
    request: Request,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Only entries at or after this time (ISO 8601 with a zone)."),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(description="Only entries before this time (ISO 8601 with a zone)."),
    ] = None,
    key_id: Annotated[
        str | None, Query(alias="keyId", max_length=36, description="Only this key's calls.")
    ] = None,
    session: Annotated[
        str | None, Query(max_length=100, description="Only calls on this session (name).")
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=100, description="Only this action, e.g. `POST /api/audit`."),
    ] = None,
    outcome: Annotated[
        int | None, Query(ge=100, le=599, description="Only calls that ended with this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX, description="Page size.")] = 50,
    offset: Annotated[
        int, Query(ge=0, le=OFFSET_MAX, description="Entries to skip (newest first).")
    ] = 0,
) -> AuditPage:
    audit: AuditLog = request.app.state.host.audit
    entries, total = await audit.query(
        since=since,
        until=until,
        key_id=key_id,
        session=session,
        action=action,
        outcome=outcome,
        limit=limit,
        offset=offset,
    )
    return AuditPage(
        entries=[AuditEntryOut.model_validate(entry) for entry in entries],
        total=total,
        limit=limit,
        offset=offset,
    )
