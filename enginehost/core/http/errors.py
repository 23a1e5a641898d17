"""The API's error model: OpenWA's body plus a stable machine-readable ``code``.

Every error answer is ``{"statusCode", "error", "message", "code"}`` (clients read
``message``); validation errors add ``errors``: one ``{"path", "message"}`` per problem.
A user's mistake is a 4xx that says what was wrong (malformed JSON is a 400 that says
where); a database outage is a 503 (``database_unavailable``, or ``database_busy`` with
``Retry-After``), neither the user's fault nor an opaque 500; only a bug in the host is a
500, and its body reveals nothing internal but a ``correlationId``: the request's
``X-Request-Id``, also on the ``http.unhandled_error`` log line.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from enginehost.core.db.errors import DatabaseBusyError, DatabaseUnavailableError
from enginehost.core.errors import ServiceError, error_summary
from enginehost.core.logging import get_logger

__all__ = [
    "ERROR_LOGGED_STATE_KEY",
    "REQUEST_ID_STATE_KEY",
    "ApiError",
    "error_body",
    "install_error_handlers",
    "request_id",
    "request_state",
]

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

# Keys of the per-request state (``request.state.<key>``), shared with the middleware.
REQUEST_ID_STATE_KEY = "request_id"
"""The request's correlation id (its ``X-Request-Id``), set by the correlation middleware."""
ERROR_LOGGED_STATE_KEY = "unhandled_error_logged"
"""Set once the 500 handler logged the request's unexpected error."""


def request_state(scope: Scope) -> MutableMapping[str, Any]:
    """The per-request state dict behind ``request.state`` (created if missing)."""
    state: MutableMapping[str, Any] = scope.setdefault("state", {})
    return state


def request_id(request: Request) -> str | None:
    """The correlation id of ``request`` (None outside the correlation middleware)."""
    value = request_state(request.scope).get(REQUEST_ID_STATE_KEY)
    return value if isinstance(value, str) else None


class ApiError(ServiceError):
    """Raise from a route to answer with the error model: a :class:`ServiceError` whose
    status, code, details and headers are given at the raise."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, code or _DEFAULT_CODES.get(status_code, "error"), status_code=status_code
        )
        self._extra = extra or {}
        self._headers = headers or {}

    @property
    def extra(self) -> dict[str, Any]:
        return self._extra

    @property
    def headers(self) -> dict[str, str]:
        return self._headers


def error_body(
    status_code: int, message: str, *, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {
        "statusCode": status_code,
        "error": _phrase(status_code),
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


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    # A service refused the caller's request: its status, code and details, as they are.
    assert isinstance(exc, ServiceError)
    return JSONResponse(
        error_body(exc.status_code, exc.message, code=exc.code, **exc.extra),
        status_code=exc.status_code,
        headers=exc.headers or None,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = _phrase(exc.status_code)
    message = exc.detail if isinstance(exc.detail, str) else phrase
    code = getattr(exc, "code", None)
    if exc.status_code in (404, 405) and message == phrase:
        # The framework's own "no such route" answer: say which request had none.
        message = f"Cannot {request.method} {request.url.path}"
    elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI could not decode the JSON body at all (not UTF-8, nested too deeply);
        # a syntax error is a RequestValidationError instead, handled below.
        reason = (
            "nested too deeply"
            if isinstance(exc.__cause__, RecursionError)
            else error_summary(exc.__cause__, 200)
        )
        message = f"malformed JSON body: {reason}"
        code = "malformed_json"
    return JSONResponse(
        error_body(exc.status_code, message, code=code if isinstance(code, str) else None),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _phrase(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


def _malformed_json(exc: RequestValidationError, error: dict[str, Any]) -> JSONResponse:
    location = tuple(error.get("loc", ()))
    position = location[1] if len(location) > 1 and isinstance(location[1], int) else None
    reason = str((error.get("ctx") or {}).get("error") or "invalid JSON")
    where = ""
    if position is not None:
        document = exc.body if isinstance(exc.body, str) else None
        if document is not None and position <= len(document):
            line = document.count("\n", 0, position) + 1
            column = position - document.rfind("\n", 0, position)
            where = f" at line {line}, column {column} (char {position})"
        else:
            where = f" at char {position}"
    return JSONResponse(
        error_body(400, f"malformed JSON body: {reason}{where}", code="malformed_json"),
        status_code=400,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            return _malformed_json(exc, error)
    problems = [
        {"path": _validation_path(tuple(error.get("loc", ()))), "message": error.get("msg", "")}
        for error in errors
    ]
    summary = "; ".join(f"{p['path']}: {p['message']}" for p in problems) or "invalid request"
    return JSONResponse(error_body(422, summary, errors=problems), status_code=422)


_DATABASE_ROLE = re.compile(r"\bthe (main|data) database\b")

# Errors that mean a database could not do the work, not that the request was wrong.
_DATABASE_ERRORS = (DatabaseUnavailableError, DatabaseBusyError, OperationalError, PoolTimeoutError)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception's message names a file or a server address: it goes to the log only.
    match = _DATABASE_ROLE.search(str(exc))
    which = f"the {match.group(1)} database" if match else "a database"
    correlation = request_id(request)
    # A driver error's own message, not SQLAlchemy's (which adds the statement and its
    # parameters).
    cause = exc.orig if isinstance(exc, OperationalError) and exc.orig is not None else exc
    fields = {
        "method": request.method,
        "path": request.url.path,
        "error": error_summary(cause, 1000),
    }
    extra = {"correlationId": correlation} if correlation else {}
    if isinstance(exc, DatabaseBusyError | PoolTimeoutError):
        log.warning("http.database_busy", **fields)
        body = error_body(503, f"{which} is busy; retry the request", code="database_busy", **extra)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    log.error("http.database_unavailable", **fields)
    body = error_body(
        503, f"{which} is unavailable; try again later", code="database_unavailable", **extra
    )
    return JSONResponse(body, status_code=503)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Called by Starlette's outermost error middleware for anything no handler took,
    # including errors raised by middlewares (where a database error still means 503).
    request_state(request.scope)[ERROR_LOGGED_STATE_KEY] = True
    if isinstance(exc, _DATABASE_ERRORS):
        return await _database_error(request, exc)
    correlation = request_id(request)
    log.error(
        "http.unhandled_error",
        method=request.method,
        path=request.url.path,
        error=str(exc),
        # A plain traceback, not exc_info: the renderers would add every frame's locals,
        # and the ASGI scope among them holds the caller's API key.
        exception="".join(traceback.format_exception(exc)).rstrip(),
    )
    extra = {"correlationId": correlation} if correlation else {}
    return JSONResponse(error_body(500, "internal error", **extra), status_code=500)


_Handler = Callable[[Request, Any], Awaitable[JSONResponse]]

_CALLER_AND_DATABASE_ERRORS: tuple[tuple[type[Exception], _Handler], ...] = (
    (ServiceError, _service_error),  # ApiError included
    *((database_error, _database_error) for database_error in _DATABASE_ERRORS),
)
"""The handlers for a caller's or the database's problem: installed on the app, and
what :func:`error_response` answers with (one table, so they cannot drift apart)."""


async def error_response(request: Request, exc: Exception) -> JSONResponse | None:
    """The answer the app's handlers give for ``exc`` when it is a caller's or the
    database's problem; None for anything else (an unexpected error, re-raise it)."""
    for error_type, handler in _CALLER_AND_DATABASE_ERRORS:
        if isinstance(exc, error_type):
            return await handler(request, exc)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can produce through the error model."""
    for error_type, handler in _CALLER_AND_DATABASE_ERRORS:
        app.add_exception_handler(error_type, handler)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
