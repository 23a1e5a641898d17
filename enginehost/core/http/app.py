"""The FastAPI application: built from the host's state, no globals.

Routes added here follow the public contract (``/api`` prefix, camelCase JSON, the
error model of :mod:`enginehost.core.http.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from enginehost.core.audit.service import AuditLog
from enginehost.core.auth.service import ApiKeyService
from enginehost.core.db import Databases
from enginehost.core.engine import utc_now
from enginehost.core.events import EventBus
from enginehost.core.http import (
    audit,
    catalogue,
    events,
    health,
    keys,
    messages,
    metrics,
    plugins,
    sessions,
    settings,
    templates,
    webhooks,
)
from enginehost.core.http.errors import install_error_handlers
from enginehost.core.http.fast_path import install_fast_path
from enginehost.core.http.middleware import install_middleware
from enginehost.core.http.openapi import install_openapi
from enginehost.core.messages.send import SendService
from enginehost.core.metrics import HostMetrics
from enginehost.core.plugins import PluginHost
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import Settings
from enginehost.core.templates.service import TemplateService
from enginehost.core.webhooks.dispatcher import Dispatcher
from enginehost.core.webhooks.registry import WebhookRegistry

__all__ = ["AppState", "create_app"]


@dataclass(slots=True)
class AppState:
    """What the routes read: the plugin host and the daemon's lifecycle flags."""

    plugins: PluginHost
    version: str
    keys: ApiKeyService
    sessions: SessionStore
    settings: Settings
    audit: AuditLog
    bus: EventBus
    manager: SessionManager
    send: SendService
    databases: Databases | None = None
    templates: TemplateService | None = None
    metrics: HostMetrics | None = None
    webhooks: WebhookRegistry | None = None
    deliveries: Dispatcher | None = None
    """The webhook dispatcher (None where webhooks are not delivered, as in some tests)."""
    started_at: datetime = field(default_factory=utc_now)
    ready: bool = False
    """True once the host finished booting; False again as soon as shutdown begins."""
    shutting_down: bool = False


def create_app(state: AppState) -> FastAPI:
    """The HTTP application for one host."""
    app = FastAPI(
        title="enginehost",
        version=state.version,
        description="WhatsApp engine host with an OpenWA-compatible REST API.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.host = state
    install_error_handlers(app)
    install_fast_path(app)  # innermost: just outside the routing, inside the guards
    install_middleware(app)
    audit.install_audit(app)
    for module in _MATCHED_IN_ORDER:
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(metrics.router)  # where Prometheus looks: /metrics, not under /api
    install_openapi(app, path_order=_documented_paths())
    return app


API_PREFIX = "/api"
# FastAPI tries included routers one after the other for every request, so the busiest
# come first (sends and session reads: about 35 µs less per request than in reading
# order). No path of one router can match a route of another, so the order changes
# nothing else; the API document keeps the reading order below.
_DOCUMENTED_IN_ORDER = (
    health,
    plugins,
    keys,
    settings,
    audit,
    templates,
    sessions,
    messages,
    catalogue,  # before the webhook routes: /webhooks/events is not a webhook id
    webhooks,
    events,
)
_BUSIEST = (messages, sessions, templates)
_MATCHED_IN_ORDER = _BUSIEST + tuple(m for m in _DOCUMENTED_IN_ORDER if m not in _BUSIEST)


def _documented_paths() -> list[str]:
    paths: dict[str, None] = {}
    for module in _DOCUMENTED_IN_ORDER:
        for route in module.router.routes:
            paths[API_PREFIX + str(getattr(route, "path", ""))] = None
    return list(paths)


def host_state(app: Any) -> AppState:
    """The :class:`AppState` of an app made by :func:`create_app`."""
    state: AppState = app.state.host
    return state
