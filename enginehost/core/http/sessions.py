"""Session routes: ``/api/sessions`` and ``/api/sessions/{sessionId}/...``.

The contract's routes (OpenWA's shapes, camelCase JSON) plus enginehost's additions:
``/restart``, ``/logout``, ``/qr.png``, ``PUT``/``PATCH`` of a session's config, and the
session fields ``engine``, ``desiredState``, ``reconnectAttempt``, ``statusHistory`` and
``config``.

``{sessionId}`` is the session's id or its name. Reads need a viewer key; everything
that changes a session needs an operator key. Creating a session is a route across
sessions: a key limited to sessions cannot do it (403). Such a key sees only its own
sessions in the list and the stats, and gets 404 for any other session, as if it did
not exist.

Lifecycle actions are idempotent, as the session manager's are: starting a running
session, stopping a stopped one and deleting a deleted one all succeed and change
nothing. Statuses are written by the session manager alone; an action's answer is the
session as it is when the action returns (a start answers before the engine shows its
QR: poll the session or ``GET .../qr``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from enginehost.core import qr
from enginehost.core.auth.roles import Role
from enginehost.core.engine import (
    Capability,
    Engine,
    EngineError,
    EngineNotRunningError,
    UnsupportedOperationError,
)
from enginehost.core.errors import FieldError
from enginehost.core.http.auth import Access, Scope, SessionOperator, SessionViewer, requires
from enginehost.core.http.errors import ApiError
from enginehost.core.http.models import CamelModel, RequestModel, Responses
from enginehost.core.sessions.models import NAME_MAX, SessionRecord
from enginehost.core.sessions.reconnect import ReconnectPolicy
from enginehost.core.sessions.status import IN_FLIGHT, SessionStatus
from enginehost.core.settings import MaskedValueError, redact, restore_masked

if TYPE_CHECKING:  # app.py imports this module
    from enginehost.core.http.app import AppState

__all__ = [
    "PairingCodeOut",
    "PairingCodeRequest",
    "QrOut",
    "SessionConfigUpdate",
    "SessionCreate",
    "SessionOut",
    "SessionStats",
    "StatusChange",
    "router",
    "session_out",
]

router = APIRouter(tags=["sessions"])

PROXY_TYPES = ("http", "https", "socks4", "socks5")
"""The proxy kinds a session may name (``proxyType``, or the scheme of ``proxyUrl``)."""

PAIRING_TIMEOUT = 30.0
"""Seconds an engine may take to produce a pairing code before the request gives up."""

_PHONE_NUMBER = r"^[0-9]{8,15}$"
_NO_STORE = {"Cache-Control": "no-store"}
"""QR codes rotate and link an account: no cache may keep them."""


# ------------------------------------------------------------------------------ models


class StatusChange(CamelModel):
    """One entry of a session's status history."""

    status: str
    at: datetime
    reason: str | None = None


class SessionOut(CamelModel):
    """A session: the contract's fields plus enginehost's."""

    id: str = Field(description="The session's id (a UUID).")
    name: str = Field(description="Unique; usable instead of the id in paths.")
    engine: str = Field(description="The engine that runs the session (enginehost extension).")
    status: str = Field(
        description="created, initializing, qr_ready, authenticating, ready, disconnected "
        "or failed. A reconnect in progress is `initializing` with `reconnectAttempt` set."
    )
    desired_state: str = Field(
        description="`running` or `stopped`: what the host keeps the session at, also "
        "across restarts (enginehost extension)."
    )
    phone: str | None = Field(None, description="The linked account's number, once linked.")
    push_name: str | None = Field(None, description="The linked account's display name.")
    connected_at: datetime | None = None
    last_active: datetime | None = None
    created_at: datetime
    updated_at: datetime
    last_error: str | None = None
    reconnect_attempt: int = Field(
        0, description="The current reconnect attempt, 0 when not reconnecting."
    )
    status_history: list[StatusChange] = Field(
        default_factory=list, description="The latest status changes, oldest first."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The session's config (engine options, `reconnect`, `proxy`). Shown "
        "with secrets masked: URL passwords, and values under secret-sounding keys.",
    )


class SessionCreate(RequestModel):
    """A new session."""

    name: str = Field(
        max_length=NAME_MAX,
        description=f"Unique. 1-{NAME_MAX} letters, digits, '.', '_' or '-', starting with a "
        "letter or digit.",
        examples=["support-bot"],
    )
    config: dict[str, Any] | None = Field(
        None,
        description="Engine options, plus `reconnect` (`baseSeconds`, `capSeconds`, "
        "`stableSeconds`) to override the host's reconnect timings for this session.",
    )
    proxy_url: str | None = Field(
        None,
        max_length=2048,
        description="A proxy for the session's connection, e.g. `socks5://proxy:1080`; "
        "stored as `config.proxy`.",
    )
    proxy_type: Literal["http", "https", "socks4", "socks5"] | None = Field(
        None, description="The proxy's kind (default: the scheme of `proxyUrl`)."
    )
    engine: str | None = Field(
        None,
        max_length=40,
        description="The engine to run the session (enginehost extension; default: the "
        "host's `ENGINEHOST_DEFAULT_ENGINE`).",
    )
    start: bool = Field(False, description="Start the session at once (enginehost extension).")


class SessionConfigUpdate(RequestModel):
    """A session's new config."""

    config: dict[str, Any] = Field(
        description="PUT: the whole new config. PATCH: top-level keys to set; a `null` "
        "value removes that key.",
        examples=[{"reconnect": {"capSeconds": 120}}],
    )


class SessionStats(CamelModel):
    """Counts over the sessions the key may see."""

    total: int
    active: int = Field(
        description="Sessions the host keeps running (desired state `running`) or that "
        "are live now (initializing, qr_ready, authenticating or ready)."
    )
    ready: int = Field(description="Sessions with status `ready`.")
    disconnected: int = Field(description="Sessions with status `disconnected`.")
    by_status: dict[str, int] = Field(description="Every status, with its count (zeros too).")


class QrOut(CamelModel):
    """The QR code to link a session's account."""

    qr_code: str = Field(description="The QR as a PNG image in a `data:image/png;base64,` URL.")
    qr: str = Field(description="The raw QR payload (enginehost extension).")
    pairing_code: str | None = Field(
        None, description="The pairing code, when one was requested (enginehost extension)."
    )
    status: str


class PairingCodeRequest(RequestModel):
    """The number of the account to link with a pairing code."""

    phone_number: str = Field(
        pattern=_PHONE_NUMBER,
        description="Digits only, country code first, 8 to 15 of them (no `+`).",
        examples=["15551234567"],
    )


class PairingCodeOut(CamelModel):
    """A pairing code to enter on the phone (Linked devices → Link with phone number)."""

    pairing_code: str = Field(examples=["ABCD-EFGH"])
    status: str


# ----------------------------------------------------------------------------- helpers


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.host
    return state


def session_out(record: SessionRecord) -> SessionOut:
    """A session row as the API shows it."""
    history = [
        StatusChange(status=entry["status"], at=entry["at"], reason=entry.get("reason"))
        for entry in record.status_history
        if isinstance(entry, Mapping) and "status" in entry and "at" in entry
    ]
    return SessionOut(
        id=record.id,
        name=record.name,
        engine=record.engine,
        status=record.status,
        desired_state=record.desired_state,
        phone=record.phone,
        push_name=record.push_name,
        connected_at=record.connected_at,
        last_active=record.last_active,
        created_at=record.created_at,
        updated_at=record.updated_at,
        last_error=record.last_error,
        reconnect_attempt=record.reconnect_attempt,
        status_history=history,
        config=redact(record.config),
    )


def _check_proxy(proxy: Any, path: str, url_path: str | None = None) -> None:
    """Check a ``{url, type}`` proxy; problems with the URL are reported at ``url_path``
    (default ``<path>.url``)."""
    url_path = url_path or f"{path}.url"
    if not isinstance(proxy, Mapping):
        raise FieldError(path, "must be an object with `url` and `type`")
    unknown = sorted(set(proxy) - {"url", "type"})
    if unknown:
        raise FieldError(f"{path}.{unknown[0]}", "unknown setting; use url and type")
    url, kind = proxy.get("url"), proxy.get("type")
    if not isinstance(url, str) or not url:
        raise FieldError(url_path, "must be a URL")
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError as exc:
        raise FieldError(url_path, f"not a valid URL: {exc}") from None
    if not parts.hostname or parts.scheme not in PROXY_TYPES:
        raise FieldError(
            url_path,
            f"must be a URL like socks5://host:1080 with a scheme of {', '.join(PROXY_TYPES)}",
        )
    if kind not in PROXY_TYPES:
        raise FieldError(f"{path}.type", f"must be one of {', '.join(PROXY_TYPES)}")


def _unmasked(config: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with masked secrets put back from ``stored`` (422 for a mask that
    stands for nothing stored)."""
    try:
        restored: dict[str, Any] = restore_masked(config, stored)
    except MaskedValueError as exc:
        raise FieldError(exc.path, str(exc).split(": ", 1)[1]) from None
    return restored


def _check_config(config: Mapping[str, Any]) -> None:
    """Validate what the host itself reads from a session config (422 otherwise):
    ``reconnect`` overrides and ``proxy``. The rest belongs to the engine."""
    ReconnectPolicy().for_session(config)
    if "proxy" in config:
        _check_proxy(config["proxy"], "config.proxy")


def _proxy(url: str | None, kind: str | None) -> dict[str, str] | None:
    """``config.proxy`` from ``proxyUrl``/``proxyType`` (None when neither is given)."""
    if url is None:
        if kind is not None:
            raise FieldError("proxyType", "needs a proxyUrl")
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if "://" not in url and kind is not None:
        url = f"{kind}://{url}"  # "proxy:1080" with proxyType socks5
    chosen = kind or scheme
    if chosen not in PROXY_TYPES:
        raise FieldError(
            "proxyUrl",
            f"give a URL with a scheme of {', '.join(PROXY_TYPES)}, or set proxyType",
        )
    proxy = {"url": url, "type": chosen}
    _check_proxy(proxy, "proxyUrl", url_path="proxyUrl")
    return proxy


def _check_engine(state: AppState, engine: str) -> None:
    if engine not in state.plugins.engines:
        loaded = ", ".join(sorted(state.plugins.engines)) or "none"
        raise ApiError(
            422,
            f"unknown engine {engine!r}; loaded engines: {loaded}",
            code="unknown_engine",
            extra={"errors": [{"path": "engine", "message": f"loaded engines: {loaded}"}]},
        )


def _active(record: SessionRecord) -> bool:
    return record.desired_state == "running" or record.status in IN_FLIGHT


_NOT_FOUND: Responses = {404: {"description": "No such session (or not visible to the key)"}}
_QR_CONFLICT: Responses = {
    409: {
        "description": "No QR to show (`qr_not_available`): the session is not running, "
        "or it is already linked; the body's `status` says which"
    }
}


# ------------------------------------------------------------------------------ routes


@router.post(
    "/sessions",
    summary="Create a session",
    status_code=201,
    response_model=SessionOut,
    responses={
        409: {"description": "A session with this name already exists (`session_exists`)"},
        422: {
            "description": "A field is invalid (`validation_failed`), or the engine is not "
            "loaded (`unknown_engine`, the message names the loaded ones)"
        },
    },
)
async def create_session(
    request: Request,
    payload: SessionCreate,
    access: Annotated[Access, requires(Role.OPERATOR, Scope.GLOBAL)],
) -> SessionOut:
    """A new session on ``engine`` (default: the host's default engine), stopped unless
    ``start`` is true.

    ``config.reconnect`` is checked here (422), as is the proxy: ``proxyUrl`` (with
    ``proxyType``, or its scheme: http, https, socks4 or socks5) is stored as
    ``config.proxy = {url, type}``, replacing any ``proxy`` in ``config``.
    """
    state = _state(request)
    engine = payload.engine or state.settings.default_engine
    _check_engine(state, engine)
    config = dict(payload.config or {})
    proxy = _proxy(payload.proxy_url, payload.proxy_type)
    if proxy is not None:
        config["proxy"] = proxy
    _check_config(config)
    record = await state.sessions.create(payload.name, engine=engine, config=config)
    if payload.start:
        record = await state.manager.start(record.id)
    return session_out(record)


@router.get("/sessions", summary="List sessions", response_model=list[SessionOut])
async def list_sessions(
    request: Request,
    access: Annotated[Access, requires(Role.VIEWER, Scope.ANY)],
) -> list[SessionOut]:
    """Every session the key may see, oldest first."""
    records = await _state(request).sessions.list(access.principal.sessions)
    return [session_out(record) for record in records]


# Declared before /sessions/{sessionId}: a literal path is matched in order.
@router.get(
    "/sessions/stats/overview", summary="Count sessions by status", response_model=SessionStats
)
async def session_stats(
    request: Request,
    access: Annotated[Access, requires(Role.VIEWER, Scope.ANY)],
) -> SessionStats:
    """Counts over the sessions the key may see.

    ``active`` counts sessions the host keeps running (desired state ``running``, also
    while they reconnect or wait for a scan) or that are live right now (status
    initializing, qr_ready, authenticating or ready); ``ready`` and ``disconnected``
    count those statuses; ``byStatus`` has every status, zeros included.
    """
    records = await _state(request).sessions.list(access.principal.sessions)
    counts = Counter(record.status for record in records)
    by_status = {status.value: counts.get(status.value, 0) for status in SessionStatus}
    for status, count in counts.items():  # a status this version does not know
        by_status.setdefault(status, count)
    return SessionStats(
        total=len(records),
        active=sum(1 for record in records if _active(record)),
        ready=counts.get(SessionStatus.READY.value, 0),
        disconnected=counts.get(SessionStatus.DISCONNECTED.value, 0),
        by_status=by_status,
    )


@router.get(
    "/sessions/{sessionId}",
    summary="Get a session",
    response_model=SessionOut,
    responses=_NOT_FOUND,
)
async def get_session(
    access: SessionViewer,
) -> SessionOut:
    return session_out(access.require_session())


async def _set_config(request: Request, session_id: str, config: dict[str, Any]) -> SessionOut:
    _check_config(config)
    record = await _state(request).sessions.update(session_id, config=config)
    return session_out(record)


@router.put(
    "/sessions/{sessionId}",
    summary="Replace a session's config (enginehost extension)",
    response_model=SessionOut,
    responses={**_NOT_FOUND, 422: {"description": "The config is invalid"}},
)
async def replace_session_config(
    request: Request,
    payload: SessionConfigUpdate,
    access: SessionOperator,
) -> SessionOut:
    """Replace the session's whole config with ``config`` (validated like create).

    It takes effect at the session's next start; a running session keeps its config
    until then. The config a GET returned can be sent back as it is: masked secrets
    (``**********``, and URL passwords shown as ``***``) keep their stored values.
    """
    session = access.require_session()
    config = _unmasked(dict(payload.config), session.config)
    return await _set_config(request, session.id, config)


@router.patch(
    "/sessions/{sessionId}",
    summary="Change a session's config (enginehost extension)",
    response_model=SessionOut,
    responses={**_NOT_FOUND, 422: {"description": "The resulting config is invalid"}},
)
async def update_session_config(
    request: Request,
    payload: SessionConfigUpdate,
    access: SessionOperator,
) -> SessionOut:
    """Merge ``config`` into the session's config, key by top-level key: a key given
    replaces that key's whole value, ``null`` removes the key, other keys stay.

    The result is validated like create and takes effect at the session's next start.
    Masked secrets sent back (as a GET shows them) keep their stored values.
    """
    session = access.require_session()
    config = dict(session.config)
    for key, value in _unmasked(dict(payload.config), session.config).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return await _set_config(request, session.id, config)


@router.post(
    "/sessions/{sessionId}/start",
    summary="Start a session",
    response_model=SessionOut,
    responses={**_NOT_FOUND, 422: {"description": "The session's config is invalid"}},
)
async def start_session(
    request: Request,
    access: SessionOperator,
) -> SessionOut:
    """Start the session; it is kept running (and restored at boot) until stopped.

    Idempotent: a running session is left as it is. The answer comes before the engine
    connects: the status moves on to ``qr_ready`` (scan ``GET .../qr``) or ``ready``.
    """
    record = await _state(request).manager.start(access.require_session().id)
    return session_out(record)


@router.post(
    "/sessions/{sessionId}/stop",
    summary="Stop a session",
    response_model=SessionOut,
    responses=_NOT_FOUND,
)
async def stop_session(
    request: Request,
    access: SessionOperator,
) -> SessionOut:
    """Stop the session, keeping its link (the next start needs no QR); it stays
    stopped across host restarts. Idempotent."""
    record = await _state(request).manager.stop(access.require_session().id)
    return session_out(record)


@router.post(
    "/sessions/{sessionId}/force-kill",
    summary="Stop a session without waiting for its engine",
    response_model=SessionOut,
    responses=_NOT_FOUND,
)
async def force_kill_session(
    request: Request,
    access: SessionOperator,
) -> SessionOut:
    """Like stop, but the engine's tasks are cancelled at once instead of letting it
    disconnect cleanly (for a hung engine). The link is kept. Idempotent."""
    record = await _state(request).manager.stop(access.require_session().id, force=True)
    return session_out(record)


@router.post(
    "/sessions/{sessionId}/restart",
    summary="Restart a session (enginehost extension)",
    response_model=SessionOut,
    responses={**_NOT_FOUND, 422: {"description": "The session's config is invalid"}},
)
async def restart_session(
    request: Request,
    access: SessionOperator,
) -> SessionOut:
    """Stop the session (if it runs), then start it on a fresh engine with its current
    config. A stopped session is simply started."""
    manager = _state(request).manager
    session_id = access.require_session().id
    await manager.stop(session_id)
    return session_out(await manager.start(session_id))


@router.post(
    "/sessions/{sessionId}/logout",
    summary="Log a session out (enginehost extension)",
    response_model=SessionOut,
    responses={
        **_NOT_FOUND,
        409: {
            "description": "The session was stopped, but its engine could not wipe the "
            "auth (`logout_failed`: the engine is not loaded, or refuses the session's "
            "config); the message says why"
        },
    },
)
async def logout_session(
    request: Request,
    access: SessionOperator,
) -> SessionOut:
    """Stop the session, unlink the device where the engine can and wipe its auth: the
    next start shows a new QR. The status becomes ``disconnected``. Idempotent."""
    session = access.require_session()
    # LogoutError (409 logout_failed): the engine could not make the object that wipes
    # the auth; the session is stopped by then.
    record = await _state(request).manager.logout(session.id)
    return session_out(record)


def _current_qr(request: Request, access: Access) -> tuple[str, str | None, str]:
    session = access.require_session()
    payload, pairing_code = _state(request).manager.qr(session.id)
    if payload is None:
        running = session.desired_state == "running"
        why = (
            "it is already linked"
            if session.status in (SessionStatus.READY, SessionStatus.AUTHENTICATING)
            else "it is still starting; retry shortly"
            if running
            else "it is not running; start it first"
        )
        raise ApiError(
            409,
            f"session {session.name!r} has no QR to show ({session.status}): {why}",
            code="qr_not_available",
            extra={"status": session.status},
        )
    return payload, pairing_code, session.status


@router.get(
    "/sessions/{sessionId}/qr",
    summary="Get the QR code to link a session",
    response_model=QrOut,
    responses={**_NOT_FOUND, **_QR_CONFLICT},
)
async def get_qr(
    request: Request,
    response: Response,
    access: SessionViewer,
) -> QrOut:
    """The QR the engine shows now, as a PNG data URL (``qrCode``) and raw (``qr``).

    Engines rotate their QR every 20 s or so: poll while linking. 409
    ``qr_not_available`` when there is none (not started, still starting, or linked).
    """
    payload, pairing_code, status = _current_qr(request, access)
    response.headers.update(_NO_STORE)
    return QrOut(
        qr_code=qr.png_data_url(payload), qr=payload, pairing_code=pairing_code, status=status
    )


@router.get(
    "/sessions/{sessionId}/qr.png",
    summary="Get the QR code as a PNG image (enginehost extension)",
    response_class=Response,
    responses={
        200: {
            "description": "The QR code, black on white",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **_NOT_FOUND,
        **_QR_CONFLICT,
    },
)
async def get_qr_png(
    request: Request,
    access: SessionViewer,
) -> Response:
    """The current QR as a PNG image (for an ``<img>`` or a browser tab); 409 like
    ``GET .../qr``."""
    payload, _, _ = _current_qr(request, access)
    return Response(content=qr.png_bytes(payload), media_type="image/png", headers=_NO_STORE)


@router.post(
    "/sessions/{sessionId}/pairing-code",
    summary="Request a pairing code",
    response_model=PairingCodeOut,
    responses={
        **_NOT_FOUND,
        409: {
            "description": "The session is not running (`session_not_running`) or already "
            "linked (`session_already_linked`)"
        },
        501: {"description": "The session's engine has no pairing codes (`not_supported`)"},
        502: {"description": "The engine could not produce a code (`engine_error`)"},
        504: {"description": "The engine took too long (`engine_timeout`)"},
    },
)
async def request_pairing_code(
    request: Request,
    payload: PairingCodeRequest,
    access: SessionOperator,
) -> PairingCodeOut:
    """A code to link the account ``phoneNumber`` without scanning: on the phone,
    Linked devices → Link a device → Link with phone number instead.

    The session must be running and not linked yet. The code also shows in
    ``GET .../qr`` (``pairingCode``) until the account links.
    """
    state = _state(request)
    session = access.require_session()
    engine_record = state.plugins.engines.get(session.engine)
    if engine_record is not None and Capability.PAIRING_CODE not in engine_record.cls.capabilities:
        raise ApiError(
            501,
            f"the {session.engine!r} engine does not support pairing codes; scan the QR",
            code="not_supported",
        )
    engine = state.manager.engine(session.id)
    if engine is None:
        raise ApiError(
            409,
            f"session {session.name!r} is not running ({session.status}); start it first",
            code="session_not_running",
        )
    if session.status in (SessionStatus.READY, SessionStatus.AUTHENTICATING):
        raise ApiError(
            409,
            f"session {session.name!r} is already linked ({session.status}); "
            "a pairing code is only for linking",
            code="session_already_linked",
        )
    code = await _pairing_code(engine, payload.phone_number)
    record = await state.sessions.resolve(session.id)
    return PairingCodeOut(pairing_code=code, status=record.status)


async def _pairing_code(engine: Engine, phone: str) -> str:
    """The engine's pairing code for ``phone``, its failures turned into API errors."""
    try:
        with anyio.fail_after(PAIRING_TIMEOUT):
            code = await engine.request_pairing_code(phone)
    except TimeoutError:
        raise ApiError(
            504,
            f"the engine gave no pairing code within {PAIRING_TIMEOUT:g} s",
            code="engine_timeout",
        ) from None
    except UnsupportedOperationError as exc:
        raise ApiError(501, str(exc), code="not_supported") from None
    except EngineNotRunningError as exc:
        raise ApiError(409, str(exc), code="session_not_running") from None
    except ValueError as exc:
        raise FieldError("phoneNumber", str(exc)) from None
    except EngineError as exc:
        raise ApiError(502, f"the engine refused: {exc}", code="engine_error") from None
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z0-9-]{4,16}", code):
        raise ApiError(502, "the engine returned no usable pairing code", code="engine_error")
    return code


# Last, so that the route/role matrix test (which walks routes in order, deleting as it
# goes) reaches every other session route first.
@router.delete(
    "/sessions/{sessionId}",
    summary="Delete a session",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted, or there was no such session"}},
)
async def delete_session(
    request: Request,
    access: Annotated[Access, requires(Role.OPERATOR, Scope.SESSION, missing_ok=True)],
) -> Response:
    """Stop the session and delete it with its stored state. Idempotent: deleting a
    session that is already gone is 204 too."""
    if access.session is not None:
        await _state(request).manager.delete(access.session.id)
    return Response(status_code=204)
