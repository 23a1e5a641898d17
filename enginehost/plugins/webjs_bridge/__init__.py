"""The ``webjs`` engine: whatsapp-web.js driving the operator's Chromium.

Each session is one browser (about 11 processes and 390 MB here), launched by a Node
*sidecar* that this plugin starts and supervises; one sidecar drives up to
``sessions_per_sidecar`` browsers. A browser never outlives its session: a sidecar
reports each browser's process group, and the host kills those groups whenever the
sidecar ends, even by SIGKILL.

Install the sidecar's dependencies once (``npm ci`` from the committed lock file,
never downloading a browser) and Debian's Chromium::

    apt-get install chromium
    enginehost bridges install
    enginehost bridges doctor

Configure it with ``ENGINEHOST_ENGINES__WEBJS__<KEY>`` (see :class:`WebjsConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enginehost import EnginePlugin, hookimpl
from enginehost.plugins.webjs_bridge.config import WebjsConfig
from enginehost.plugins.webjs_bridge.engine import WebjsEngine
from enginehost.plugins.webjs_bridge.plugin import WEBJS_PACKAGE, WebjsPlugin

__all__ = ["WEBJS_PACKAGE", "WebjsConfig", "WebjsEngine", "WebjsPlugin"]


@hookimpl
def register_engines(register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
    """Register the webjs engine with the host."""
    register(WebjsPlugin)
