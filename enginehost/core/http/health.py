"""Public health routes: ``/api/health``, ``/api/health/live``, ``/api/health/ready``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel import Session

from enginehost.core.db import Databases
from enginehost.core.engine import utc_now
from enginehost.core.http.auth import public
from enginehost.core.http.errors import error_body
from enginehost.core.logging import get_logger
from enginehost.core.plugins import status_counts

router = APIRouter(tags=["health"], dependencies=[public()])
log = get_logger("enginehost.health")

# A readiness probe must answer quickly even when a database hangs.
_PING_TIMEOUT = 2.0


def _iso(moment: datetime) -> str:
    """UTC with a ``Z``, as JavaScript's toISOString and the API's models write it."""
    return moment.isoformat().replace("+00:00", "Z")


def _state(request: Request) -> Any:
    return request.app.state.host


@router.get("/health", summary="Overall health")
async def health(request: Request) -> dict[str, Any]:
    """``{status, timestamp}`` as in the contract, plus the version, uptime and plugin counts."""
    state = _state(request)
    now = utc_now()
    return {
        "status": "ok",
        "timestamp": _iso(now),
        "version": state.version,
        "uptimeSeconds": round((now - state.started_at).total_seconds(), 3),
        "plugins": status_counts(state.plugins.snapshot()),
    }


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, Any]:
    return {"status": "ok", "timestamp": _iso(utc_now())}


@router.get(
    "/health/ready",
    summary="Readiness: booted, databases answering, not shutting down (503 otherwise)",
    responses={503: {"description": "Starting or shutting down"}},
)
async def ready(request: Request) -> Any:
    state = _state(request)
    if state.ready and not state.shutting_down:
        unreachable = await _unreachable_databases(state.databases)
        if not unreachable:
            return {"status": "ready", "timestamp": _iso(utc_now())}
        # Public route: name the database's role, never its address.
        message = f"the {' and '.join(unreachable)} database is unreachable"
        body = error_body(503, message, code="database_unavailable", status="degraded")
        return JSONResponse(body, status_code=503)
    status = "shutting_down" if state.shutting_down else "starting"
    body = error_body(503, f"enginehost is {status.replace('_', ' ')}", code=status, status=status)
    return JSONResponse(body, status_code=503)


async def _unreachable_databases(databases: Databases | None) -> list[str]:
    if databases is None:
        return []
    unreachable = []
    for database in databases:
        try:
            with anyio.fail_after(_PING_TIMEOUT):
                await database.run(_ping)
        except Exception as exc:  # any failure to answer means not ready
            log.warning("health.database_unreachable", database=database.role.value, error=str(exc))
            unreachable.append(database.role.value)
    return unreachable


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))
