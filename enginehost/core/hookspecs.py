"""The hooks a plugin can implement, as pluggy hook specifications (project ``enginehost``).

A plugin is a module (or object) named by an entry point in the ``enginehost`` group.
It implements any of these hooks by defining a function of the same name decorated with
:data:`hookimpl`. An implementation may name only the parameters it needs: pluggy
passes arguments by name.

Any implementation may be ``async def`` (or return an awaitable); the host awaits it.
The host calls each implementation separately, each with its own error capture, so one
plugin's exception never stops the others (see ``docs/plugins.md``).

Every hook here has a section in ``docs/plugins.md`` and a test; a meta-test fails when
one of them is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from enginehost.core.engine import EngineMessage, EnginePlugin, MediaPayload
    from enginehost.core.services import HostServices

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "enginehost"
"""The pluggy project name, which is also the entry-point group plugins are found in."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator marking a plugin's hook implementation: ``@hookimpl def register_engines(...)``."""


@hookspec
def register_engines(register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
    """Register the engine plugin classes this plugin provides.

    Call ``register(SomeEnginePlugin)`` once per class; do not return them. The host
    constructs each class with its config blob (``ENGINEHOST_ENGINES__<NAME>__...``)
    and enables it. Called once, right after the plugin is loaded.
    """


@hookspec
def host_started(services: HostServices) -> None:
    """The host is up: plugins loaded and enabled, HTTP server listening.

    Use it to start an extension's own work. ``services`` is the same object engine
    plugins get in ``enable``. A raising implementation, or an async one that runs past
    ``ENGINEHOST_PLUGIN_ENABLE_TIMEOUT``, marks its plugin ``failed``.
    """


@hookspec
def host_stopping(services: HostServices) -> None:
    """The host is shutting down (SIGTERM/SIGINT or an error). Release what you hold.

    Called before engine plugins are disabled. Runs under the host's shutdown deadline:
    an implementation that overruns is cancelled.
    """


@hookspec
def session_status_changed(
    session_id: str,
    session_name: str,
    engine: str,
    old_status: str | None,
    new_status: str,
    reason: str | None,
) -> None:
    """A session moved from ``old_status`` to ``new_status`` (the contract's status values).

    ``old_status`` is ``None`` for a new session. ``reason`` says why, when known (a
    disconnect reason, an error). Observational: the return value is ignored.
    """


@hookspec
def message_received(session_id: str, session_name: str, message: EngineMessage) -> None:
    """An inbound message arrived on a session. Observational: the return value is ignored."""


@hookspec
def message_sending(
    session_id: str,
    session_name: str,
    chat_id: str,
    kind: str,
    text: str | None,
    media: MediaPayload | None,
) -> str | None:
    """A message is about to be sent; return a reason string to veto it, ``None`` to allow.

    ``kind`` is the capability of the send (``send_text``, ``send_media``, ...); ``text``
    is the text or caption when there is one. The first veto wins and the caller gets
    an error naming the reason. An implementation that raises also vetoes the send
    (fail closed: a broken gatekeeper must not let everything through) and marks its
    plugin ``failed``.
    """
