"""``GET /metrics``: the host's Prometheus metrics (see :mod:`enginehost.core.metrics`).

Mounted at the root, not under ``/api``: scrapers expect ``/metrics``, and it is not
part of the OpenWA-compatible API. It is in the API document all the same, as the
health routes are, so the document lists everything the host answers.

Who may scrape: whoever sends ``Authorization: Bearer <ENGINEHOST_METRICS_TOKEN>``
when that setting is set (a secret for the scraper alone, so Prometheus needs no API
key), or any admin API key that is not limited to sessions. Metrics describe the whole
host, so they are not for lesser keys. Everything else is refused as on every other
route: 401 without a valid key, 403 for a key of a lower role.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import State

from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Rule, Scope, authorize, bearer_token
from enginehost.core.metrics import CONTENT_TYPE, DeliveryStatistics, HostMetrics

__all__ = ["RULE", "host_metrics", "presents_metrics_token", "router"]

_ROLE, _SCOPE = Role.ADMIN, Scope.GLOBAL
RULE = Rule(role=_ROLE, scope=_SCOPE)
"""What the route documents, and enforces for API keys (the token is the other way in)."""


def presents_metrics_token(request: Request) -> bool:
    """Whether ``request`` carries the configured metrics token as its bearer token.

    Compared in constant time, as bytes (``hmac.compare_digest`` refuses str with
    non-ASCII characters, and a header may hold any). Never true when no token is set,
    nor for an empty one.
    """
    configured = request.app.state.host.settings.metrics_token
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected:
        return False
    credentials = bearer_token(request)
    if credentials is None:
        return False
    return hmac.compare_digest(credentials.encode(), expected.encode())


def _metrics_access() -> Any:
    """The route's dependency: the metrics token, or an admin key (see the module doc)."""

    async def dependency(request: Request) -> None:
        if presents_metrics_token(request):
            return
        # Not the token: whatever was sent is judged as an API key, with the same 401
        # and 403 answers (and audit of failures) as every other route.
        await authorize(request, _ROLE, _SCOPE)

    dependency.rule = RULE  # type: ignore[attr-defined]
    return Depends(dependency)


router = APIRouter(tags=["metrics"], dependencies=[_metrics_access()])


def host_metrics(app: Any) -> HostMetrics:
    """The app's :class:`HostMetrics`: the host's own when its state has one, else one
    made on first use and kept on the app.

    One made here only sees scrape-time numbers and the process; its bus counters stay
    at zero, since nothing runs :meth:`HostMetrics.run` for it.
    """
    found = getattr(app.state.host, "metrics", None)
    if isinstance(found, HostMetrics):
        return found
    state: State = app.state
    made = getattr(state, "metrics", None)
    if not isinstance(made, HostMetrics):
        made = HostMetrics(version=app.state.host.version)
        state.metrics = made
    return made


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The host's metrics in the Prometheus text format (version 0.0.4). "
    "A scraper may instead send `Authorization: Bearer <token>` with the token of the "
    "`ENGINEHOST_METRICS_TOKEN` setting. See docs/metrics.md for every metric.",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics, one sample a line.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    host = request.app.state.host
    deliveries: DeliveryStatistics | None = getattr(host, "deliveries", None)
    body = await host_metrics(request.app).render(
        host.sessions, deliveries=deliveries, engines=host.plugins.engines
    )
    return Response(body, media_type=CONTENT_TYPE)
