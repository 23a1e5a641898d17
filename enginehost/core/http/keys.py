"""API key routes (admin): ``/api/auth/api-keys``.

A key's secret appears in exactly two answers: creating the key and rotating it. Every
other answer describes the key by its id, name, visible prefix, role and times; the
stored hash never leaves the database. Revoking, rotating or deleting a key takes effect
at once in this process (the service forgets its cached authentication).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import AwareDatetime, ConfigDict, Field

from enginehost.core.auth.models import ApiKey
from enginehost.core.auth.roles import Role
from enginehost.core.auth.service import ApiKeyService
from enginehost.core.engine import utc_now
from enginehost.core.http.auth import Access, Scope, requires
from enginehost.core.http.models import CamelModel

__all__ = ["ApiKeyCreate", "ApiKeyOut", "ApiKeyWithSecret", "key_out", "router"]

router = APIRouter(tags=["api keys"])

_ADMIN = requires(Role.ADMIN, Scope.GLOBAL)

KeyId = Annotated[str, Path(alias="id", description="The key's id (from create or list).")]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No key with this id"}}
_LAST_ADMIN: dict[int | str, dict[str, Any]] = {
    409: {"description": "The last active admin key cannot be revoked or deleted"}
}


class ApiKeyOut(CamelModel):
    """An API key as the API shows it: never its secret, never its hash."""

    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    role: Role
    sessions: list[str] | None = Field(
        description="Session names the key is limited to; null means every session."
    )
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="When the key last authenticated (written at most once a minute)."
    )
    revoked_at: datetime | None
    active: bool = Field(description="Neither revoked nor expired.")


class ApiKeyWithSecret(ApiKeyOut):
    """A key with its secret: only the answers to create and rotate carry it."""

    key: str = Field(description="The secret. Shown only in this answer; store it now.")


class ApiKeyCreate(CamelModel):
    """A new key: its role, optional session scope and optional expiry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: Role
    sessions: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        description=(
            "Limit the key to these session names (not with role admin); omit for every session."
        ),
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working: ISO 8601 with a timezone."
    )


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def key_out(key: ApiKey, now: datetime | None = None) -> ApiKeyOut:
    """The public description of ``key`` (times in UTC, as the database returns them)."""
    now = now or utc_now()
    active = key.revoked_at is None and (key.expires_at is None or key.expires_at > now)
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        role=Role(key.role),
        sessions=list(key.sessions) if key.sessions is not None else None,
        expires_at=_utc(key.expires_at),
        created_at=key.created_at.astimezone(UTC),
        last_used_at=_utc(key.last_used_at),
        revoked_at=_utc(key.revoked_at),
        active=active,
    )


def _with_secret(key: ApiKey, secret: str) -> ApiKeyWithSecret:
    return ApiKeyWithSecret(**key_out(key).model_dump(), key=secret)


def _service(request: Request) -> ApiKeyService:
    service: ApiKeyService = request.app.state.host.keys
    return service


@router.get(
    "/auth/api-keys",
    summary="List API keys",
    response_model=list[ApiKeyOut],
)
async def list_keys(request: Request, access: Access = _ADMIN) -> list[ApiKeyOut]:
    """Every key, oldest first, revoked and expired ones included (see `active`)."""
    now = utc_now()
    return [key_out(key, now) for key in await _service(request).list()]


@router.post(
    "/auth/api-keys",
    summary="Create an API key",
    status_code=201,
    response_model=ApiKeyWithSecret,
)
async def create_key(
    request: Request, body: ApiKeyCreate, access: Access = _ADMIN
) -> ApiKeyWithSecret:
    """Create a key; the answer's `key` is its secret, shown only this once."""
    key, secret = await _service(request).create(
        name=body.name,
        role=body.role.value,
        sessions=body.sessions,
        expires_at=body.expires_at,
    )
    return _with_secret(key, secret)


@router.post(
    "/auth/api-keys/{id}/revoke",
    summary="Revoke an API key",
    response_model=ApiKeyOut,
    responses={**_NOT_FOUND, **_LAST_ADMIN},
)
async def revoke_key(request: Request, key_id: KeyId, access: Access = _ADMIN) -> ApiKeyOut:
    """Revoke a key (again: no change); it stops working at once."""
    key = await _service(request).revoke(key_id)
    return key_out(key)


@router.post(
    "/auth/api-keys/{id}/rotate",
    summary="Rotate an API key's secret",
    response_model=ApiKeyWithSecret,
    responses={
        **_NOT_FOUND,
        409: {"description": "A revoked or expired key cannot be rotated"},
    },
)
async def rotate_key(request: Request, key_id: KeyId, access: Access = _ADMIN) -> ApiKeyWithSecret:
    """A new secret for an active key (in `key`, shown only this once); the old one stops
    working at once. Id, name, role, scope and expiry stay."""
    key, secret = await _service(request).rotate(key_id)
    return _with_secret(key, secret)


@router.delete(
    "/auth/api-keys/{id}",
    summary="Delete an API key",
    status_code=204,
    response_class=Response,
    responses={**_NOT_FOUND, **_LAST_ADMIN},
)
async def delete_key(request: Request, key_id: KeyId, access: Access = _ADMIN) -> Response:
    """Delete a key for good (revoking keeps it listed); it stops working at once."""
    await _service(request).delete(key_id)
    return Response(status_code=204)
