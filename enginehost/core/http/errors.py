"""The API's error model: OpenWA's body plus a stable machine-readable ``code``.

Every error answer is ``{"statusCode", "error", "message", "code"}`` (clients read
``message``); validation errors add ``errors``: one ``{"path", "message"}`` per problem.
A user's mistake is a 4xx that says what was wrong; only a bug in the host is a 500,
and its body reveals nothing internal.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from enginehost.core.logging import get_logger

__all__ = ["ApiError", "error_body", "install_error_handlers"]

log = get_logger("enginehost.http")

# Codes for errors raised by the framework rather than by our routes.
_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from a route to answer with the error model."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code or _DEFAULT_CODES.get(status_code, "error")
        self.extra = extra or {}
        self.headers = headers


def error_body(
    status_code: int, message: str, *, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON body of an error answer."""
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    return {
        "statusCode": status_code,
        "error": phrase,
        "message": message,
        "code": code or _DEFAULT_CODES.get(status_code, "error"),
        **extra,
    }


def _validation_path(location: tuple[Any, ...]) -> str:
    # ("body", "chatId") -> "chatId"; ("query", "limit") -> "query.limit"
    parts = [str(part) for part in location]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.status_code, exc.message, code=exc.code, **exc.extra),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code in (404, 405) and message == HTTPStatus(exc.status_code).phrase:
        # The framework's own "no such route" answer: say which request had none.
        message = f"Cannot {request.method} {request.url.path}"
    return JSONResponse(
        error_body(exc.status_code, message),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"path": _validation_path(tuple(error.get("loc", ()))), "message": error.get("msg", "")}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{p['path']}: {p['message']}" for p in problems) or "invalid request"
    return JSONResponse(error_body(422, summary, errors=problems), status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "http.unhandled_error",
        method=request.method,
        path=request.url.path,
        error=str(exc),
        exc_info=exc,
    )
    return JSONResponse(error_body(500, "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can produce through the error model."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
