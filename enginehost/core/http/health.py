"""Public health routes: ``/api/health``, ``/api/health/live``, ``/api/health/ready``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from enginehost.core.engine import utc_now
from enginehost.core.http.errors import error_body
from enginehost.core.plugins import status_counts

router = APIRouter(tags=["health"])


def _state(request: Request) -> Any:
    return request.app.state.host


@router.get("/health", summary="Overall health")
async def health(request: Request) -> dict[str, Any]:
    """``{status, timestamp}`` as in the contract, plus the version, uptime and plugin counts."""
    state = _state(request)
    now = utc_now()
    return {
        "status": "ok",
        "timestamp": now.isoformat(),
        "version": state.version,
        "uptimeSeconds": round((now - state.started_at).total_seconds(), 3),
        "plugins": status_counts(state.plugins.snapshot()),
    }


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, Any]:
    return {"status": "ok", "timestamp": utc_now().isoformat()}


@router.get(
    "/health/ready",
    summary="Readiness: booted and not shutting down (503 otherwise)",
    responses={503: {"description": "Starting or shutting down"}},
)
async def ready(request: Request) -> Any:
    state = _state(request)
    if state.ready and not state.shutting_down:
        return {"status": "ready", "timestamp": utc_now().isoformat()}
    status = "shutting_down" if state.shutting_down else "starting"
    body = error_body(503, f"enginehost is {status.replace('_', ' ')}", code=status, status=status)
    return JSONResponse(body, status_code=503)
