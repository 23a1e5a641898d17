"""enginehost-echo: a loopback engine plugin for enginehost, and a template for new ones.

This module is what the entry point names (``echo = "enginehost_echo"`` in the
``enginehost`` group), so the host looks here for hook implementations: module-level
functions named after a hook and decorated with :data:`enginehost.hookimpl`. A hook
implementation may name only the parameters it needs, in any order.

Two hooks are implemented:

* ``register_engines`` makes this plugin an *engine* plugin: it hands the host the
  :class:`~enginehost_echo.engine.EchoPlugin` class to construct and enable.
* ``host_started`` is an *extension* hook, shown here as the pattern for any plugin
  that wants to act when the host is up (it may also be ``async def``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enginehost import EnginePlugin, HostServices, hookimpl
from enginehost_echo.engine import OWN_ID, EchoConfig, EchoEngine, EchoPlugin

__all__ = [
    "OWN_ID",
    "EchoConfig",
    "EchoEngine",
    "EchoPlugin",
    "host_started",
    "register_engines",
]


@hookimpl
def register_engines(register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
    """Register the echo engine plugin class (the host constructs and enables it)."""
    register(EchoPlugin)


@hookimpl
def host_started(services: HostServices) -> None:
    """Log that the host is up; an exception here would mark this plugin ``failed``."""
    services.logger("enginehost_echo").info("echo.ready")
