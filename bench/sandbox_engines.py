"""The engine factory of the in-process benchmarks: every session gets a sandbox engine.

Shared by ``inbound.py`` and ``sessions.py`` (run as ``python bench/<name>.py``, so this
directory is on the import path), which run a ``SessionManager`` without a plugin host.
"""

from __future__ import annotations

from typing import Any

from enginehost.plugins.sandbox import SandboxPlugin


class SandboxEngines:
    """What the session manager asks for engines: the sandbox, whatever the name."""

    def __init__(self, sandbox: SandboxPlugin) -> None:
        self.sandbox = sandbox

    def create_engine(self, engine_name: str, session: Any) -> Any:
        return self.sandbox.create_engine(session)
