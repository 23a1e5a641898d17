"""The services the host hands to plugins (``enable(services)``, ``host_started``).

Plugins reach the host only through this object, never by importing host internals,
so what is here is part of the public plugin API. Later services (sessions, messages,
templates, the event bus) join it as fields.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.abc

from enginehost.core.logging import get_logger

if TYPE_CHECKING:
    from enginehost.core.settings import Settings

__all__ = ["BackgroundTasks", "HostServices", "MessageLookup"]


class BackgroundTasks:
    """A task group that lives as long as the host runs its plugins, for plugin work
    that outlives any one session connection (a shared sidecar process, say).

    Available from just before the plugins are enabled until just after they are
    disabled; its tasks are cancelled then. Outside that window it raises
    :class:`RuntimeError`.
    """

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None

    def bind(self, group: anyio.abc.TaskGroup | None) -> None:
        """Called by the host only."""
        self._group = group

    def _require(self) -> anyio.abc.TaskGroup:
        if self._group is None:
            raise RuntimeError("the host is not running its plugins: no background tasks now")
        return self._group

    async def start(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Start ``function(*args, task_status=...)`` and wait until it reports started;
        an exception before that is raised here."""
        return await self._require().start(function, *args)

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the background. It must not raise: an exception
        would end the host's plugin task group."""
        self._require().start_soon(function, *args)


class MessageLookup(Protocol):
    """Read access to the messages the host stored, for engines that need them back.

    WhatsApp libraries ask for a message this account sent when a recipient's device
    could not decrypt it and asks for it again (a retry receipt).
    """

    async def body_of(self, session_id: str, message_id: str) -> str | None:
        """The stored text (or caption) of message ``message_id`` of ``session_id``;
        ``None`` when there is no such message or it has no text."""
        ...


@dataclass(frozen=True, slots=True)
class HostServices:
    """Read-only facts and helpers of the running host."""

    settings: Settings
    """The host's settings, validated at boot and frozen."""

    data_dir: Path
    """The host's data directory (absolute, created at boot)."""

    version: str
    """The host's version."""

    messages: MessageLookup | None = None
    """The stored messages; ``None`` only in one-shot commands that run no daemon."""

    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    """Host-lived background tasks for plugins (see :class:`BackgroundTasks`)."""

    def engine_data_dir(self, engine_name: str) -> Path:
        """The directory reserved for an engine's own files (``<data dir>/engines/<name>``)."""
        return self.data_dir / "engines" / engine_name

    def logger(self, name: str, **bound: Any) -> Any:
        """A structured logger named ``name`` with ``bound`` key/values on every line."""
        return get_logger(name, **bound)
