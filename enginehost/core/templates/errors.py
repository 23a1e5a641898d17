r"""What can go wrong with templates: each error carries an HTTP status and a stable code.

They are :class:`~enginehost.core.errors.ServiceError`\ s: the API's error handler
answers with their status, code and details, so routes simply let them propagate.

``extra`` holds the machine-readable details of each case (the offending field, the
missing variable names, ...), ready to be merged into the error body.
"""

from __future__ import annotations

from typing import Any

from enginehost.core.errors import FieldError, ServiceError

__all__ = [
    "TemplateError",
    "TemplateNameTakenError",
    "TemplateNotFoundError",
    "TemplateRenderError",
    "TemplateValidationError",
]


class TemplateError(ServiceError):
    """Base class: a user's mistake about templates (never a bug in the host)."""


class TemplateNotFoundError(TemplateError):
    """No template with that id (or name) in that session."""

    status_code = 404
    default_code = "template_not_found"


class TemplateNameTakenError(TemplateError):
    """Another template of the same session already has this name."""

    status_code = 409
    default_code = "template_name_taken"

    def __init__(self, session_id: str, name: str) -> None:
        super().__init__(
            f"a template named {name!r} already exists in session {session_id!r}; "
            "template names are unique within a session"
        )
        self.session_id = session_id
        self.name = name

    @property
    def extra(self) -> dict[str, Any]:
        return {"name": self.name}


class TemplateValidationError(TemplateError, FieldError):
    """A value given to the template service is not acceptable; ``field`` says which."""


class TemplateRenderError(TemplateError):
    """A template cannot be rendered with the given variables.

    ``code`` is one of ``missing_variables`` (``missing`` lists every absent name,
    sorted), ``invalid_variable`` (``invalid`` lists the names whose value cannot be
    rendered, sorted) or ``too_large`` (``size`` and ``max_bytes`` in UTF-8 bytes).
    """

    status_code = 422
    default_code = "render_failed"

    def __init__(
        self,
        message: str,
        code: str,
        *,
        missing: list[str] | None = None,
        invalid: list[str] | None = None,
        size: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(message, code)
        self.missing: list[str] = list(missing or [])
        self.invalid: list[str] = list(invalid or [])
        self.size = size
        self.max_bytes = max_bytes

    @property
    def extra(self) -> dict[str, Any]:
        if self.code == "missing_variables":
            return {"missing": list(self.missing)}
        if self.code == "invalid_variable":
            return {"invalid": list(self.invalid)}
        if self.code == "too_large":
            return {"size": self.size, "maxBytes": self.max_bytes}
        return {}
