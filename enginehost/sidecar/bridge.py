"""The engine plugin of a bridge: Node checks, the sidecar pool, the host's answers.

A bridge subclasses :class:`BridgePlugin` (and its config :class:`BridgeConfig`) and
adds what is its library's: :meth:`BridgePlugin.init_params` for the sidecar, its
engine objects, and any checks of its own (:meth:`BridgePlugin.enable_bridge`,
:meth:`BridgePlugin.doctor_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import anyio.to_thread
from pydantic import Field

from enginehost.core.engine import EngineConfig, EngineError, EngineNotReadyError, EnginePlugin
from enginehost.core.services import HostServices
from enginehost.sidecar.engine import ConnectSlots
from enginehost.sidecar.package import NodeRuntime, SidecarPackage, probe_node
from enginehost.sidecar.pool import SessionLink, SidecarLease, SidecarPool, SidecarSpec
from enginehost.sidecar.process import (
    SidecarError,
    node_environment,
    parent_death_prefix,
)

__all__ = ["INSTALL_HINT", "BridgeConfig", "BridgePlugin", "check_session_id"]

INSTALL_HINT = "run: enginehost bridges install"

# Session ids name folders (auth state, browser profiles): plain file names only.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_session_id(session_id: str) -> None:
    """Raise :class:`EngineError` unless ``session_id`` can name a folder safely."""
    if not _SESSION_ID.match(session_id):
        raise EngineError(
            f"session id {session_id!r} cannot name a folder: use letters, digits, "
            "'.', '_' and '-' (up to 128, not starting with '.' or '-')"
        )


class BridgeConfig(EngineConfig):
    """What every bridge's config has: Node, sidecars, connects, heartbeat, logs."""

    node_path: str = Field(
        "node", min_length=1, description="The Node.js binary (a name on PATH or a path)."
    )
    sessions_per_sidecar: int = Field(
        100, ge=1, le=5_000, description="Sessions one Node sidecar process hosts."
    )
    max_concurrent_connects: int = Field(
        25, ge=1, le=1_000, description="Sessions connecting at once (more wait their turn)."
    )
    log_level: Literal["trace", "debug", "info", "warn", "error", "fatal", "silent"] = Field(
        "warn", description="The sidecar's log level (its lines join the host's log)."
    )
    heartbeat_interval_s: float = Field(
        5.0, gt=0, le=300, description="Seconds between heartbeats to each sidecar."
    )
    heartbeat_timeout_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="A sidecar that does not answer a heartbeat this long is replaced.",
    )


ConfigT = TypeVar("ConfigT", bound=BridgeConfig)


class BridgePlugin(EnginePlugin[ConfigT]):
    """An engine plugin whose sessions run in Node sidecars (see the module docstring)."""

    sidecar_package: ClassVar[SidecarPackage]
    """The bridge's Node package (``enginehost bridges install`` installs it)."""

    def __init__(self, config: Mapping[str, Any], *, data_dir: Path) -> None:
        super().__init__(config, data_dir=data_dir)
        self._pool: SidecarPool | None = None
        self._slots = ConnectSlots(self.construction_config.max_concurrent_connects)
        self._services: HostServices | None = None
        self.runtime: NodeRuntime | None = None

    # ------------------------------------------------------------------ for subclasses

    def init_params(self) -> dict[str, Any]:
        """The sidecar's ``init`` params (``logLevel`` and ``maxLineBytes`` are added)."""
        return {}

    async def enable_bridge(self, services: HostServices) -> None:
        """The bridge's own enable checks and config refinements (Node and the
        dependencies are checked already)."""

    def doctor_problems(self) -> list[str]:
        """Problems of the bridge's own that ``enginehost bridges doctor`` reports
        (blocking calls are fine here)."""
        return []

    # ------------------------------------------------------------------ enable

    @property
    def install_fallback_dir(self) -> Path:
        """Where dependencies go when the package directory is read-only."""
        return self.data_dir / "sidecar"

    async def enable(self, services: HostServices) -> None:
        # Kept first: a plugin whose enable fails still runs sessions (with the
        # operator's config) and needs the host's background tasks for its sidecars.
        self._services = services
        runtime = await anyio.to_thread.run_sync(probe_node, self.construction_config.node_path)
        self.runtime = runtime
        if not runtime.ok:
            raise EngineNotReadyError(f"{runtime.problem}; then {INSTALL_HINT}")
        problems = await anyio.to_thread.run_sync(self._dependency_problems)
        if problems:
            raise EngineNotReadyError(
                f"the {self.name} sidecar's dependencies are not installed ({problems[0]}); "
                f"{INSTALL_HINT}"
            )
        await self.enable_bridge(services)
        self.refine_config(node_path=runtime.node)

    def _dependency_problems(self) -> list[str]:
        package = self.sidecar_package
        if package.installed_dir(self.install_fallback_dir) is not None:
            return []
        return package.problems_in(package.source_dir)

    async def disable(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    # ------------------------------------------------------------------ sidecars

    def slot_wait(self) -> float:
        """How long a start may wait for a connect slot: half the host's init deadline,
        so a session still waiting reports a transient disconnect instead of failing."""
        if self._services is None:
            return 60.0
        return max(1.0, self._services.settings.session_init_deadline / 2)

    async def attach(self, session_id: str, link: SessionLink) -> SidecarLease:
        """Attach a session connection to a sidecar of the pool (made on first use).

        Raises :class:`EngineError` naming the fix when Node or the dependencies are
        missing, so a session start fails clearly instead of a sidecar crashing.
        """
        if self._services is None:
            raise EngineError(f"the {self.name} plugin was never enabled by a running host")
        if self._pool is None:
            spec = await anyio.to_thread.run_sync(self.sidecar_spec)  # probes node: blocking
            if self._pool is None:
                self._pool = SidecarPool(spec, self._answer_sidecar)
        return await self._pool.attach(session_id, link, self._services.background)

    def sidecar_spec(self) -> SidecarSpec:
        """How this bridge's sidecars start, from :attr:`config` (blocking: probes node)."""
        config: BridgeConfig = self.config
        runtime = self.runtime
        if runtime is None or runtime.node is None or not runtime.ok:
            runtime = probe_node(config.node_path)
            self.runtime = runtime
        if runtime.node is None or not runtime.ok:
            raise EngineError(
                f"the {self.name} bridge cannot run: {runtime.problem}; {INSTALL_HINT}"
            )
        package = self.sidecar_package
        installed = package.installed_dir(self.install_fallback_dir)
        if installed is None:
            raise EngineError(
                f"the {self.name} sidecar's dependencies are not installed; {INSTALL_HINT}"
            )
        env = node_environment({"ENGINEHOST_SIDECAR_HOSTED": "1"})
        if installed != package.source_dir:
            env["ENGINEHOST_SIDECAR_NODE_MODULES"] = str(installed / "node_modules")
        return SidecarSpec(
            name=self.name,
            command=[
                *parent_death_prefix(),
                runtime.node,
                "--expose-gc",
                str(package.source_dir / package.entry),
            ],
            cwd=package.source_dir,
            env=env,
            sessions_per_sidecar=config.sessions_per_sidecar,
            heartbeat_interval=config.heartbeat_interval_s,
            heartbeat_timeout=config.heartbeat_timeout_s,
            init_params={
                **self.init_params(),
                "logLevel": config.log_level,
                "maxLineBytes": 1024 * 1024,
            },
        )

    async def _answer_sidecar(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if method != "store.getMessage":
            raise SidecarError("unknown_method", f"the host has no method {method!r}")
        session, message_id = params.get("session"), params.get("id")
        for name, value in (("session", session), ("id", message_id)):
            if not isinstance(value, str) or not value:
                raise SidecarError("bad_params", f"{name}: a non-empty string is required")
        messages = self._services.messages if self._services is not None else None
        if messages is None:
            return {"text": None}
        return {"text": await messages.body_of(str(session), str(message_id))}

    # ------------------------------------------------------------------ inspection

    async def debug_stats(self) -> list[Mapping[str, Any]]:
        """Each live sidecar's ``debug.stats`` answer."""
        return await self._pool.broadcast("debug.stats") if self._pool is not None else []

    def sidecar_pids(self) -> list[int]:
        """The PIDs of the live sidecars."""
        return self._pool.pids() if self._pool is not None else []

    def snapshot(self) -> list[dict[str, Any]]:
        """The running sidecars (name, PID, sessions), for operators and tests."""
        return self._pool.snapshot() if self._pool is not None else []

    @property
    def pool(self) -> SidecarPool | None:
        """The sidecar pool, once a session has started."""
        return self._pool
