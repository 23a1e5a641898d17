"""``GET /api/plugins``: the same data as ``enginehost plugins list --json``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Scope, requires
from enginehost.core.http.errors import ApiError
from enginehost.core.plugins import hook_names

router = APIRouter(tags=["plugins"], dependencies=[requires(Role.VIEWER, Scope.ANY)])


@router.get("/plugins", summary="Installed plugins, their engines and statuses")
async def list_plugins(
    request: Request,
    hook: str | None = Query(None, description="Only plugins implementing this hook."),
) -> dict[str, Any]:
    if hook is not None and hook not in hook_names():
        raise ApiError(
            400,
            f"unknown hook {hook!r}; known hooks: {', '.join(hook_names())}",
            code="unknown_hook",
        )
    snapshot: dict[str, Any] = request.app.state.host.plugins.snapshot(hook)
    return snapshot
