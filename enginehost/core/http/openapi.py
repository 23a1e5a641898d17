"""The OpenAPI document: security schemes, error responses, each route's access rule.

FastAPI generates the document from the routes; :func:`install_openapi` post-processes it
once (then it is cached) so that it tells the truth about what the host adds around every
route:

* both ways to send a key (``X-API-Key``, ``Authorization: Bearer``) as security schemes,
  and on every operation its ``security`` requirement (``[]`` for public routes);
* the route's access rule (:meth:`Rule.describe`) first in its description, and as
  ``x-access-rule``;
* the ``ErrorResponse`` schema and, on every operation, each error answer the layers
  around the route can give: 401/403 (a key is needed), 404 (a session or another
  resource named in the path), 400/422 (it takes parameters or a body), 413/415 (it takes
  a body), 500 and 503 (always). Responses a route declares itself are kept.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from enginehost.core.http.auth import Rule, Scope, api_routes, route_rule
from enginehost.core.http.middleware import ACCEPTED_MEDIA_TYPES, REQUEST_ID_HEADER

__all__ = ["ERROR_SCHEMA", "SECURITY_SCHEMES", "complete_openapi", "install_openapi"]

API_KEY_SCHEME = "ApiKey"
BEARER_SCHEME = "Bearer"

SECURITY_SCHEMES: dict[str, Any] = {
    API_KEY_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (`ehk_...`), as created by `POST /api/auth/api-keys`.",
    },
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The same API key, sent as `Authorization: Bearer <key>`.",
    },
}
# Either scheme is enough (a list of alternatives).
_PROTECTED: list[dict[str, list[str]]] = [{API_KEY_SCHEME: []}, {BEARER_SCHEME: []}]

ERROR_SCHEMA = "ErrorResponse"
_PROBLEM_SCHEMA = "ErrorDetail"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}

_SCHEMAS: dict[str, Any] = {
    ERROR_SCHEMA: {
        "title": ERROR_SCHEMA,
        "description": "Every error answer: OpenWA's body plus a stable machine-readable "
        "`code` (some answers add fields, e.g. the readiness probe's `status`).",
        "type": "object",
        "required": ["statusCode", "error", "message", "code"],
        "properties": {
            "statusCode": {"type": "integer", "description": "The HTTP status code."},
            "error": {"type": "string", "description": "The status' reason phrase."},
            "message": {"type": "string", "description": "What went wrong, for people."},
            "code": {
                "type": "string",
                "description": "What went wrong, for programs (e.g. `validation_failed`, "
                "`session_not_found`, `payload_too_large`).",
            },
            "errors": {
                "type": "array",
                "description": "Validation errors only: one entry per problem.",
                "items": {"$ref": f"#/components/schemas/{_PROBLEM_SCHEMA}"},
            },
            "correlationId": {
                "type": "string",
                "description": f"500 and 503 only: the request's `{REQUEST_ID_HEADER}`, "
                "also on the host's log lines about the error.",
            },
        },
    },
    _PROBLEM_SCHEMA: {
        "title": _PROBLEM_SCHEMA,
        "type": "object",
        "required": ["path", "message"],
        "properties": {
            "path": {
                "type": "string",
                "description": "Where: a body field (`chatId`, `config.proxy`) or "
                "`<location>.<name>` for other inputs (`query.limit`).",
            },
            "message": {"type": "string"},
        },
    },
}

_HEADERS: dict[str, Any] = {
    REQUEST_ID_HEADER: {
        "description": "The request's correlation id: the one sent (1 to 128 visible ASCII "
        "characters) or a new UUID.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds after which a retry may succeed.",
        "schema": {"type": "integer"},
    },
    "WWW-Authenticate": {"description": "The authentication scheme.", "schema": {"type": "string"}},
}


def _header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _error_responses(max_body: int) -> dict[str, dict[str, Any]]:
    return {
        "400": {"description": "Bad request: a value the route refuses (the `code` says which)."},
        "400+body": {
            "description": "Bad request: malformed JSON (`malformed_json`, the message says "
            "where), or a value the route refuses (the `code` says which)."
        },
        "401": {
            "description": "No API key, or an unknown, revoked or expired one (`unauthorized`).",
            "headers": {"WWW-Authenticate": _header_ref("WWW-Authenticate")},
        },
        "403": {
            "description": "The key's role is too low (`forbidden_role`), or a key limited "
            "to sessions on a route across sessions (`forbidden_scope`)."
        },
        "404": {
            "description": "Not found: the session (or another resource named in the "
            "path) does not exist, or the key may not see it."
        },
        "413": {
            "description": f"The request body is larger than {max_body} bytes "
            "(`payload_too_large`)."
        },
        "415": {
            "description": f"A request body that is not JSON: send {ACCEPTED_MEDIA_TYPES} "
            "(`unsupported_media_type`)."
        },
        "422": {
            "description": "Invalid input (`validation_failed`): `errors` lists each "
            "problem and where it is."
        },
        "500": {
            "description": "A bug in the host (`internal_error`); the body reveals nothing "
            "but its `correlationId`."
        },
        "503": {
            "description": "A database is unavailable (`database_unavailable`) or busy "
            "(`database_busy`, retry after `Retry-After` seconds).",
            "headers": {"Retry-After": _header_ref("Retry-After")},
        },
    }


def _description(max_body: int) -> str:
    return f"""
## Authentication
Send an API key in `X-API-Key`, or as `Authorization: Bearer <key>` (never in the query
string). Roles, from most to least powerful: `admin` > `operator` > `viewer`; a key may be
limited to some sessions. Every operation's description starts with its access rule.

## Errors
Every error answer is JSON: `{{statusCode, error, message, code}}` (OpenWA's body plus a
stable machine-readable `code`); validation errors add `errors: [{{path, message}}]`. 500 and
503 answers add `correlationId`: the request's `{REQUEST_ID_HEADER}`, a header every answer
carries (the one the client sent when well-formed, otherwise a new one).

## Requests
Request bodies are JSON (`application/json`, or `application/*+json`), at most {max_body}
bytes. JSON is camelCase everywhere.
"""


def install_openapi(app: FastAPI, path_order: Sequence[str] = ()) -> None:
    """Describe every route's auth requirement and error responses in ``app``'s schema.

    ``path_order`` lists paths in the order the document should show them (FastAPI's
    is the order routes are matched in); paths it does not name follow in that order.
    FastAPI's document is completed once, and again only when FastAPI rebuilds it (it
    does when routes were added since); the result is ``app.openapi_schema``.
    """
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = FastAPI.openapi(app)  # FastAPI's own cache: ours while routes are unchanged
        if not completed or schema is not completed[0]:
            paths: dict[str, Any] = schema.get("paths", {})
            ordered = {path: paths[path] for path in path_order if path in paths}
            schema["paths"] = {**ordered, **paths}
            complete_openapi(app, schema)
            completed[:] = [schema]
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete_openapi(app: FastAPI, schema: dict[str, Any]) -> None:
    """Complete FastAPI's ``schema`` of ``app`` in place (see the module doc)."""
    max_body: int = app.state.host.settings.max_request_bytes
    info = schema.setdefault("info", {})
    info["description"] = (info.get("description") or "").rstrip() + "\n" + _description(max_body)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    components.setdefault("schemas", {}).update(copy.deepcopy(_SCHEMAS))
    components.setdefault("headers", {}).update(copy.deepcopy(_HEADERS))
    errors = _error_responses(max_body)
    paths: dict[str, Any] = schema.get("paths", {})
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        item = paths.get(route.path_format or "", {})
        rule = route_rule(route)
        for method in sorted(route.methods or ()):
            operation = item.get(method.lower())
            if isinstance(operation, dict):
                _complete_operation(operation, rule, errors)
    _drop_unused_schemas(schema, ("HTTPValidationError", "ValidationError"))


def _complete_operation(
    operation: dict[str, Any], rule: Rule | None, errors: dict[str, dict[str, Any]]
) -> None:
    if rule is not None:
        operation["security"] = [] if rule.role is None else copy.deepcopy(_PROTECTED)
        described = operation.get("description", "").strip()
        operation["description"] = rule.describe() + (f"\n\n{described}" if described else "")
        operation["x-access-rule"] = {
            "public": rule.role is None,
            **({"role": rule.role.value} if rule.role is not None else {}),
            **({"scope": rule.scope.value} if rule.scope is not None else {}),
        }
    parameters = operation.get("parameters", [])
    takes_body = "requestBody" in operation
    takes_input = takes_body or bool(parameters)
    in_path = any(parameter.get("in") == "path" for parameter in parameters)
    codes = []
    if takes_body:
        codes.append("400+body")
    elif any(parameter.get("in") != "path" for parameter in parameters):
        codes.append("400")
    if rule is not None and rule.role is not None:
        codes += ["401", "403"]
    if in_path or (rule is not None and rule.scope is Scope.SESSION):
        codes.append("404")
    if takes_body:
        codes += ["413", "415"]
    if takes_input:
        codes.append("422")
    codes += ["500", "503"]

    responses: dict[str, Any] = operation.setdefault("responses", {})
    default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
    if default_422.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]  # FastAPI's own; ours describes the body we really send
    for name in codes:
        code = name[:3]
        if code not in responses:
            responses[code] = copy.deepcopy(errors[name])
    for code, response in responses.items():
        if code[:1] in ("4", "5") and "content" not in response:
            response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
        response.setdefault("headers", {}).setdefault(
            REQUEST_ID_HEADER, _header_ref(REQUEST_ID_HEADER)
        )
    operation["responses"] = dict(sorted(responses.items()))


def _drop_unused_schemas(schema: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas: dict[str, Any] = schema.get("components", {}).get("schemas", {})
    for name in names:
        if name not in schemas:
            continue
        reference = f'"#/components/schemas/{name}"'
        rest = {key: value for key, value in schema.items() if key != "components"}
        others = {key: value for key, value in schemas.items() if key != name}
        if reference not in json.dumps(rest) and reference not in json.dumps(others):
            del schemas[name]
