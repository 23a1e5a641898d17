"""The sandbox engine plugin: config, enable checks, and the registry of live engines."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from enginehost import (
    Capability,
    EngineConfig,
    EngineError,
    EngineNotReadyError,
    EnginePlugin,
    HostServices,
    SessionInfo,
)
from enginehost.plugins.sandbox.config import SandboxConfig, SandboxSessionConfig
from enginehost.plugins.sandbox.engine import SandboxEngine

__all__ = ["SandboxPlugin"]

# Session ids name the auth files, so they must be plain file names (no "/" or "..").
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SandboxPlugin(EnginePlugin[SandboxConfig]):
    """The ``sandbox`` engine: every capability, simulated in-process, no phone needed.

    :attr:`live_engines` maps a session id to its running engine (added at start,
    removed at stop, logout or drop), so a test or the API can find the engine to play
    the phone with: ``plugin.engine_for(session_id).scan()``.
    """

    name: ClassVar[str] = "sandbox"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_model: ClassVar[type[EngineConfig]] = SandboxConfig

    def __init__(self, config: Mapping[str, Any], *, data_dir: Path) -> None:
        super().__init__(config, data_dir=data_dir)
        self.live_engines: dict[str, SandboxEngine] = {}
        # Config is frozen, so the countdown of simulated not-ready enables lives here.
        self._not_ready_left = self.construction_config.enable_not_ready_times
        self._forced_start_failure: str | None = None

    @property
    def auth_dir(self) -> Path:
        """Where engines keep auth files: from :attr:`config`, defaulting under data_dir.

        After a successful enable this is the refined, absolute path; if enable failed it
        is still the operator's configured path, never a silent default.
        """
        configured = self.config.auth_dir
        return configured if configured is not None else self.data_dir / "auth"

    async def enable(self, services: HostServices) -> None:
        config = self.construction_config
        if config.fail_enable is not None:
            raise EngineError(config.fail_enable)
        if self._not_ready_left > 0:
            self._not_ready_left -= 1
            raise EngineNotReadyError(
                "sandbox simulates a dependency that is not ready yet "
                f"({self._not_ready_left} more attempt(s) will report this)"
            )
        auth_dir = (config.auth_dir or self.data_dir / "auth").expanduser().absolute()
        # Checked but not created: enable also runs for `enginehost plugins list`, which
        # must not leave directories behind. Engines create it on their first write.
        _check_creatable_dir(auth_dir)
        self.refine_config(auth_dir=auth_dir)

    def create_engine(self, session: SessionInfo) -> SandboxEngine:
        if not _SESSION_ID.match(session.id):
            raise ValueError(
                f"session id {session.id!r} cannot name a sandbox auth file: use letters, "
                "digits, '.', '_' and '-' (up to 128, not starting with '.' or '-')"
            )
        return SandboxEngine(
            session,
            engine_name=self.name,
            config=self.config,
            auth_dir=self.auth_dir,
            overrides=SandboxSessionConfig.for_session(session),
            live_engines=self.live_engines,
            take_forced_failure=self._take_forced_start_failure,
        )

    def engine_for(self, session_id: str) -> SandboxEngine:
        """The live (started, not finished) sandbox engine of ``session_id``."""
        try:
            return self.live_engines[session_id]
        except KeyError:
            live = ", ".join(sorted(self.live_engines)) or "none"
            raise KeyError(
                f"no live sandbox engine for session {session_id!r} (live sessions: {live}); "
                "it was never started, or it stopped, logged out or dropped"
            ) from None

    def fail_next_start(self, reason: str) -> None:
        """Make the next engine start (of any session) raise :class:`EngineError`(reason)."""
        self._forced_start_failure = reason

    def _take_forced_start_failure(self) -> str | None:
        reason, self._forced_start_failure = self._forced_start_failure, None
        return reason


def _check_creatable_dir(path: Path) -> None:
    """Raise :class:`EngineError` unless ``path`` is, or could be made, a writable directory."""
    if path.exists():
        if not path.is_dir():
            raise EngineError(f"sandbox auth_dir {path} exists but is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise EngineError(f"sandbox auth_dir {path} is not writable")
        return
    # It does not exist yet: its nearest existing ancestor decides whether it can be made.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = f"sandbox auth_dir {path} cannot be created: {ancestor}"
    if not ancestor.is_dir():
        raise EngineError(f"{problem} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EngineError(f"{problem} is not writable")
