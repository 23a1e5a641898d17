"""The base of every error a host service raises for a caller's mistake.

A :class:`ServiceError` carries what the API answers with — an HTTP status, a stable
machine-readable code, a message and extra details for the error body — so routes let
it propagate and one handler turns it into the error model. Services stay free of HTTP
otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["FieldError", "ServiceError", "error_summary", "shortened"]


class ServiceError(Exception):
    """A request a service cannot carry out because of the caller (never a host bug)."""

    status_code: int = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, code: str | None = None, *, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.code: str = code or self.default_code
        if status_code is not None:
            self.status_code = status_code

    @property
    def extra(self) -> dict[str, Any]:
        """Details for the error body beyond ``statusCode``/``message``/``code``."""
        return {}

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the answer should carry (a ``Retry-After``, say)."""
        return {}


class FieldError(ServiceError):
    """A value the caller gave is not acceptable: 422, naming the field like the API's
    own validation errors do (``errors: [{path, message}]``)."""

    status_code = 422
    default_code = "validation_failed"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    @property
    def extra(self) -> dict[str, Any]:
        return {"errors": [{"path": self.field, "message": self.problem}]}


def shortened(text: str, limit: int = 500) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to ``limit``
    characters with "..." (for logs and error messages that quote someone else)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_summary(exc: BaseException, limit: int = 500) -> str:
    """What ``exc`` says, :func:`shortened`; its type's name when it says nothing."""
    return shortened(str(exc), limit) or type(exc).__name__
