"""Settings routes (admin): ``GET /api/settings``; changes answer 501.

Settings are read once at boot from the environment and never change while the host
runs, so this API shows them and cannot change them: ``PUT`` and ``PATCH`` answer 501
instead of a false success. Every secret is masked in what ``GET`` shows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field
from pydantic.alias_generators import to_camel

from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Access, Scope, requires
from enginehost.core.http.errors import ApiError
from enginehost.core.http.models import CamelModel
from enginehost.core.settings import CONFIG_FILE_VARIABLE, ENV_PREFIX, Settings

__all__ = ["READ_ONLY_MESSAGE", "SettingsView", "router"]

router = APIRouter(tags=["settings"])

READ_ONLY_MESSAGE = (
    "settings cannot be changed through the API: they come from the environment "
    f"({ENV_PREFIX}* variables, a .env file, or the TOML file named by "
    f"{CONFIG_FILE_VARIABLE}) and apply when the host restarts"
)


class SettingsView(CamelModel):
    """The effective settings, secrets masked, and how they can be changed."""

    settings: dict[str, Any] = Field(
        description="Effective settings by camelCase name; engine blobs keep their own "
        "keys. Secrets are masked; database URLs show everything but the password."
    )
    source: Literal["environment"] = Field(
        "environment",
        description=f"Where settings come from: {ENV_PREFIX}* variables, .env, "
        f"{CONFIG_FILE_VARIABLE}.",
    )
    mutable: Literal[False] = Field(
        False, description="Always false: settings change only at a restart."
    )


def settings_view(settings: Settings) -> dict[str, Any]:
    """The ``settings`` object of ``GET /api/settings``."""
    return {to_camel(name): value for name, value in settings.redacted().items()}


_READ_ONLY_RESPONSE: dict[int | str, dict[str, Any]] = {
    501: {"description": "Always: settings come from the environment and apply at restart"}
}


@router.get(
    "/settings",
    summary="The effective settings (secrets masked)",
    response_model=SettingsView,
)
async def get_settings(
    request: Request,
    access: Annotated[Access, requires(Role.ADMIN, Scope.GLOBAL)],
) -> SettingsView:
    """The settings the host runs with, as read from its environment at boot.

    Top-level names are camelCase (``dataDir`` for ``ENGINEHOST_DATA_DIR``); engine
    config blobs keep the engine names and keys the operator wrote. Secrets (the admin
    key, the API key pepper, secret-named keys of engine blobs) are masked, and
    database URLs show everything but their password.
    """
    settings: Settings = request.app.state.host.settings
    return SettingsView(settings=settings_view(settings))


@router.put(
    "/settings",
    summary="Not supported: settings come from the environment",
    status_code=501,
    responses=_READ_ONLY_RESPONSE,
)
async def replace_settings(
    access: Annotated[Access, requires(Role.ADMIN, Scope.GLOBAL)],
) -> None:
    """Always 501 ``not_implemented``: settings change in the environment, at a restart.

    The request body is not read, so any body (or none) gets the same answer.
    """
    raise ApiError(501, READ_ONLY_MESSAGE, code="not_implemented")


@router.patch(
    "/settings",
    summary="Not supported: settings come from the environment",
    status_code=501,
    responses=_READ_ONLY_RESPONSE,
)
async def change_settings(
    access: Annotated[Access, requires(Role.ADMIN, Scope.GLOBAL)],
) -> None:
    """Always 501 ``not_implemented``, like ``PUT``."""
    raise ApiError(501, READ_ONLY_MESSAGE, code="not_implemented")
