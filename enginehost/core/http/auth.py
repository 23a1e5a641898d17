"""Who may call which route: every route declares exactly one access rule.

Routes declare their rule with a dependency: ``dependencies=[public()]`` or a parameter
``access: Access = requires(Role.OPERATOR, Scope.SESSION)``. A test walks every route of
the app and fails for one without a rule, so a route added later cannot be open by
accident.

Keys come in ``X-API-Key`` or ``Authorization: Bearer <key>``, never in the query
string. The checks, in order: no or unknown key → 401; role too low → 403; a key
limited to sessions on a route for all sessions → 403; a session that does not exist,
or that the key may not see → 404 (the same answer, so names do not leak).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from enginehost.core.auth.roles import Role
from enginehost.core.auth.service import ApiKeyService, AuthenticationError, Principal
from enginehost.core.http.errors import ApiError
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.store import SessionNotFoundError, SessionStore

__all__ = [
    "Access",
    "Rule",
    "Scope",
    "SessionOperator",
    "SessionViewer",
    "api_routes",
    "authorize",
    "bearer_token",
    "public",
    "requires",
    "route_rule",
]


class Scope(enum.StrEnum):
    SESSION = "session"
    """The route acts on one session, named by its ``{sessionId}`` path segment."""
    ANY = "any"
    """A route across sessions that session-limited keys may use (answers are filtered)."""
    GLOBAL = "global"
    """A route across sessions that session-limited keys may not use."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A route's access rule; ``role`` None means public."""

    role: Role | None
    scope: Scope | None = None

    def describe(self) -> str:
        if self.role is None:
            return "Public: no API key needed."
        scope = {
            Scope.SESSION: "; a session-limited key only for its own sessions (others: 404)",
            Scope.ANY: "; a session-limited key sees only its own sessions",
            Scope.GLOBAL: "; not with a session-limited key",
        }[self.scope or Scope.GLOBAL]
        return f"Requires an API key with role `{self.role.value}` or higher{scope}."


@dataclass(frozen=True, slots=True)
class Access:
    """What an authorized route gets: the caller, and the session for session routes."""

    principal: Principal
    session: SessionRecord | None = None

    def require_session(self) -> SessionRecord:
        assert self.session is not None, "only session-scoped routes have a session"
        return self.session


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, message, code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="api"'}
    )


def presented_key(request: Request) -> str | None:
    """The key the request carries: ``X-API-Key``, else ``Authorization: Bearer <key>``.

    Read here rather than through FastAPI's ``APIKeyHeader``/``HTTPBearer`` dependencies:
    the same rules (an empty value is no key; the scheme is case-insensitive; the first
    header of a name counts), without two sub-dependencies to solve on every request. The
    OpenAPI document declares both schemes itself (:mod:`enginehost.core.http.openapi`).
    """
    headers = request.headers
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key
    return bearer_token(request)


def bearer_token(request: Request) -> str | None:
    """The credentials of ``Authorization: Bearer <credentials>`` (scheme in any case),
    or None when there are none."""
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not (scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


async def _authenticate(request: Request) -> Principal:
    secret = presented_key(request)
    if not secret:
        request.state.auth_failure = "no API key"
        raise _unauthorized("an API key is required (X-API-Key or Authorization: Bearer)")
    keys: ApiKeyService = request.app.state.host.keys
    try:
        principal = await keys.authenticate(secret)
    except AuthenticationError as exc:
        request.state.auth_failure = exc.reason
        request.state.auth_prefix = exc.prefix
        raise _unauthorized(f"invalid API key: {exc.reason}") from None
    request.state.principal = principal
    return principal


def requires(role: Role, scope: Scope, *, missing_ok: bool = False) -> Any:
    """The dependency of a route that needs a key with ``role`` (see the module doc).

    ``missing_ok`` (session routes only, for idempotent deletes): a session that does not
    exist gives ``Access.session = None`` instead of 404 — when the key could see a
    session of that name, so a limited key still learns nothing about other names.
    """
    rule = Rule(role=role, scope=scope)

    async def dependency(request: Request) -> Access:
        return await authorize(request, role, scope)

    async def session_dependency(
        request: Request,
        session_id: Annotated[str, Path(alias="sessionId", description=_SESSION_ID_DOC)],
    ) -> Access:
        return await authorize(request, role, scope, session_id, missing_ok)

    # Session routes declare {sessionId} here, once, for every route (and OpenAPI).
    chosen: Any = session_dependency if scope is Scope.SESSION else dependency
    chosen.rule = rule
    return Depends(chosen)


_SESSION_ID_DOC = "The session's id, or (an enginehost extension) its name."

SessionOperator = Annotated[Access, requires(Role.OPERATOR, Scope.SESSION)]
"""A route parameter: the caller may operate the ``{sessionId}`` session."""
SessionViewer = Annotated[Access, requires(Role.VIEWER, Scope.SESSION)]
"""A route parameter: the caller may read the ``{sessionId}`` session."""


async def authorize(
    request: Request,
    role: Role,
    scope: Scope,
    session_key: str | None = None,
    missing_ok: bool = False,
) -> Access:
    """The checks of :func:`requires` (see the module doc): the caller's access, or the
    refusal raised (401, 403 or 404)."""
    principal = await _authenticate(request)
    if not principal.role.allows(role):
        raise ApiError(
            403,
            f"this route needs role {role.value}; the key has role {principal.role.value}",
            code="forbidden_role",
        )
    if scope is Scope.GLOBAL and principal.scoped:
        raise ApiError(
            403, "a key limited to sessions cannot use this route", code="forbidden_scope"
        )
    if session_key is None:
        return Access(principal=principal)
    store: SessionStore = request.app.state.host.sessions
    try:
        record = await store.resolve(session_key)
    except SessionNotFoundError:
        if missing_ok and principal.may_see(session_key):
            return Access(principal=principal)
        raise  # 404
    if not principal.may_see(record.name):
        # The same answer as a missing session, so a key never learns other names.
        raise SessionNotFoundError(session_key)
    request.state.audit_session = record.name
    return Access(principal=principal, session=record)


def public() -> Any:
    """The dependency of a route anyone may call (health checks)."""

    async def dependency() -> None:
        return None

    dependency.rule = Rule(role=None)  # type: ignore[attr-defined]
    return Depends(dependency)


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route of ``app``, with the dependencies of the routers it was included
    through (``app.routes`` alone holds included routers, not their routes)."""
    return [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def route_rule(route: Any) -> Rule | None:
    """The rule a route (an :func:`api_routes` entry) declared; None when it declared none
    (a bug the tests catch)."""
    rules: list[Rule] = []
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dependant = pending.pop()
        rule = getattr(dependant.call, "rule", None)
        if isinstance(rule, Rule):
            rules.append(rule)
        pending.extend(dependant.dependencies)
    if len(rules) > 1:
        raise RuntimeError(f"route {getattr(route, 'path', route)} declares several rules")
    return rules[0] if rules else None
