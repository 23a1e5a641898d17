"""Template routes: ``/api/sessions/{sessionId}/templates``.

The contract's CRUD (OpenWA's shape, camelCase JSON) plus an enginehost extension,
``POST .../templates/{templateId}/render``, that previews a template's text.

``{sessionId}`` is the session's id or its name; templates are stored under the
session's id, so both spellings reach the same templates. Reads and the render preview
need a viewer key; create, update and delete need an operator key. A key limited to
other sessions gets 404, as if the session did not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from enginehost.core.http.auth import Access, SessionOperator, SessionViewer
from enginehost.core.http.errors import ApiError
from enginehost.core.http.models import CamelModel, RequestModel, Responses
from enginehost.core.templates.errors import TemplateNotFoundError
from enginehost.core.templates.models import BODY_MAX, HEADER_FOOTER_MAX, ID_MAX, NAME_MAX, Template
from enginehost.core.templates.service import TemplateService

__all__ = [
    "RenderRequest",
    "RenderResult",
    "TemplateCreate",
    "TemplateOut",
    "TemplateUpdate",
    "router",
]


router = APIRouter(tags=["templates"])


_UPDATABLE = ("name", "body", "header", "footer")
_NOT_NULL = ("name", "body")


# ------------------------------------------------------------------------------ models


class TemplateOut(CamelModel):
    """A stored template."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The template's id (a UUID).")
    session_id: str = Field(description="The id of the session the template belongs to.")
    name: str = Field(description="Unique within the session.")
    body: str = Field(description="Text with `{{ variable }}` placeholders.")
    header: str | None = Field(None, description="Rendered before the body.")
    footer: str | None = Field(None, description="Rendered after the body.")
    created_at: datetime
    updated_at: datetime


class TemplateCreate(RequestModel):
    """A new template."""

    name: str = Field(
        max_length=NAME_MAX,
        description="Unique within the session; surrounding whitespace is removed.",
        examples=["order-confirmation"],
    )
    body: str = Field(
        max_length=BODY_MAX,
        description="Text with `{{ variable }}` placeholders (`\\{{` for a literal `{{`).",
        examples=["Hi {{ customer }}, your order {{ orderId }} has shipped."],
    )
    header: str | None = Field(
        None, max_length=HEADER_FOOTER_MAX, description="Optional text before the body."
    )
    footer: str | None = Field(
        None, max_length=HEADER_FOOTER_MAX, description="Optional text after the body."
    )


class TemplateUpdate(RequestModel):
    """The fields to change; absent fields stay as they are. ``null`` clears a header or
    footer (``name`` and ``body`` cannot be null)."""

    name: str | None = Field(None, max_length=NAME_MAX)
    body: str | None = Field(None, max_length=BODY_MAX)
    header: str | None = Field(None, max_length=HEADER_FOOTER_MAX)
    footer: str | None = Field(None, max_length=HEADER_FOOTER_MAX)


class RenderRequest(RequestModel):
    """The variables to render a template with."""

    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Values by placeholder name: text, numbers or booleans.",
        examples=[{"customer": "Ada", "orderId": 42}],
    )


class RenderResult(CamelModel):
    """A rendered template: header, body and footer joined by a blank line."""

    text: str
    bytes: int = Field(description="The size of `text` in UTF-8 bytes.")


# ----------------------------------------------------------------------------- helpers

TemplateId = Annotated[str, Path(alias="templateId", description="The template's id.")]


def _service(request: Request) -> TemplateService:
    service: TemplateService | None = request.app.state.host.templates
    if service is None:
        raise ApiError(503, "templates are not available on this host", code="unavailable")
    return service


def _session_id(access: Access) -> str:
    return access.require_session().id


def _check_id(access: Access, template_id: str) -> None:
    """A template id that cannot exist is simply not found (no database query)."""
    if len(template_id) > ID_MAX:
        shown = template_id[:ID_MAX] + "..."
        raise TemplateNotFoundError(f"no template {shown!r} in session {_session_id(access)!r}")


def _out(template: Template) -> TemplateOut:
    return TemplateOut.model_validate(template)


_NOT_FOUND: Responses = {
    404: {"description": "No such session or template (or not visible to the key)"}
}
_INVALID: Responses = {422: {"description": "A field is invalid; `errors` names each one"}}


# ------------------------------------------------------------------------------ routes


@router.get(
    "/sessions/{sessionId}/templates",
    summary="List a session's templates",
    response_model=list[TemplateOut],
    responses=_NOT_FOUND,
)
async def list_templates(
    request: Request,
    access: SessionViewer,
) -> list[TemplateOut]:
    """Every template of the session, oldest first."""
    templates = await _service(request).list(_session_id(access))
    return [_out(template) for template in templates]


@router.post(
    "/sessions/{sessionId}/templates",
    summary="Create a template",
    status_code=201,
    response_model=TemplateOut,
    responses={
        **_NOT_FOUND,
        409: {"description": "The session already has a template with this name"},
        **_INVALID,
    },
)
async def create_template(
    request: Request,
    payload: TemplateCreate,
    access: SessionOperator,
) -> TemplateOut:
    """A new template; its name must be unique within the session (409 otherwise)."""
    template = await _service(request).create(
        _session_id(access),
        name=payload.name,
        body=payload.body,
        header=payload.header,
        footer=payload.footer,
    )
    return _out(template)


@router.get(
    "/sessions/{sessionId}/templates/{templateId}",
    summary="Get a template",
    response_model=TemplateOut,
    responses=_NOT_FOUND,
)
async def get_template(
    request: Request,
    template_id: TemplateId,
    access: SessionViewer,
) -> TemplateOut:
    _check_id(access, template_id)
    template = await _service(request).get(_session_id(access), template_id)
    return _out(template)


@router.put(
    "/sessions/{sessionId}/templates/{templateId}",
    summary="Change a template",
    response_model=TemplateOut,
    responses={
        **_NOT_FOUND,
        409: {"description": "The new name is taken by another template of the session"},
        422: {"description": "A field is invalid, or the body names no field to change"},
    },
)
async def update_template(
    request: Request,
    template_id: TemplateId,
    payload: TemplateUpdate,
    access: SessionOperator,
) -> TemplateOut:
    """A partial update: only the fields given change (``updatedAt`` always moves).

    ``header`` and ``footer`` may be ``null`` to remove them; an empty object is 422.
    """
    given = [field for field in _UPDATABLE if field in payload.model_fields_set]
    if not given:
        raise ApiError(
            422,
            "nothing to update: give at least one of name, body, header, footer",
            code="nothing_to_update",
        )
    nulls = [field for field in _NOT_NULL if field in given and getattr(payload, field) is None]
    if nulls:
        problems = [{"path": field, "message": "must not be null"} for field in nulls]
        raise ApiError(
            422,
            "; ".join(f"{p['path']}: {p['message']}" for p in problems),
            code="validation_failed",
            extra={"errors": problems},
        )
    changes: dict[str, Any] = {field: getattr(payload, field) for field in given}
    _check_id(access, template_id)
    template = await _service(request).update(_session_id(access), template_id, **changes)
    return _out(template)


@router.delete(
    "/sessions/{sessionId}/templates/{templateId}",
    summary="Delete a template",
    status_code=204,
    response_class=Response,
    responses=_NOT_FOUND,
)
async def delete_template(
    request: Request,
    template_id: TemplateId,
    access: SessionOperator,
) -> Response:
    _check_id(access, template_id)
    await _service(request).delete(_session_id(access), template_id)
    return Response(status_code=204)


@router.post(
    "/sessions/{sessionId}/templates/{templateId}/render",
    summary="Preview a rendered template (enginehost extension)",
    response_model=RenderResult,
    responses={
        **_NOT_FOUND,
        422: {
            "description": "A variable is missing (`missing` lists them) or invalid "
            "(`invalid`), or the result is over the render cap (`too_large`)"
        },
    },
)
async def render_template(
    request: Request,
    template_id: TemplateId,
    payload: RenderRequest,
    access: SessionViewer,
) -> RenderResult:
    """The text the template renders to with ``variables``, and its size in UTF-8 bytes.

    A viewer key may call it although it is a POST: a preview changes nothing and sends
    nothing (sending a template is an operator's ``messages/send-template``). The text
    is never truncated: over the render cap is 422 ``too_large``.
    """
    _check_id(access, template_id)
    text = await _service(request).render(
        _session_id(access), template_id=template_id, variables=payload.variables
    )
    return RenderResult(text=text, bytes=len(text.encode("utf-8")))
