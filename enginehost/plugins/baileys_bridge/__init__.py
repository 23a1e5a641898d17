"""The ``baileys`` engine: real Baileys (WhatsApp Web's multi-device protocol, in Node).

Sessions run in Node *sidecar* processes that this plugin starts and supervises; one
sidecar hosts up to ``sessions_per_sidecar`` sessions. The Python side and the sidecar
speak the JSON-lines protocol of ``docs/sidecar-protocol.md``.

Install the sidecar's dependencies once (``npm ci`` from the committed lock file)::

    enginehost bridges install
    enginehost bridges doctor      # Node/npm versions, and whether each bridge is ready

Configure it with ``ENGINEHOST_ENGINES__BAILEYS__<KEY>`` (see :class:`BaileysConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enginehost import EnginePlugin, hookimpl
from enginehost.plugins.baileys_bridge.config import BaileysConfig
from enginehost.plugins.baileys_bridge.engine import BaileysEngine
from enginehost.plugins.baileys_bridge.plugin import BAILEYS_PACKAGE, BaileysPlugin

__all__ = ["BAILEYS_PACKAGE", "BaileysConfig", "BaileysEngine", "BaileysPlugin"]


@hookimpl
def register_engines(register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
    """Register the baileys engine with the host."""
    register(BaileysPlugin)
