"""The baileys_bridge engine plugin: config, enable checks, and the sidecar pool."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread

from enginehost import (
    Capability,
    EngineConfig,
    EngineError,
    EngineNotReadyError,
    EnginePlugin,
    HostServices,
    SessionInfo,
)
from enginehost.plugins.baileys_bridge.config import BaileysConfig
from enginehost.plugins.baileys_bridge.engine import BaileysEngine, ConnectSlots
from enginehost.sidecar import (
    NodeRuntime,
    SessionLink,
    SidecarError,
    SidecarLease,
    SidecarPackage,
    SidecarPool,
    SidecarSpec,
    node_environment,
    parent_death_prefix,
    probe_node,
)

__all__ = ["BAILEYS_PACKAGE", "BaileysPlugin"]

BAILEYS_PACKAGE = SidecarPackage(
    bridge="baileys",
    source_dir=Path(__file__).parent / "sidecar",
    library="baileys",
    local_packages=("stub-eslint-config",),
)
"""The sidecar's Node package (``enginehost bridges install`` installs it)."""

# Session ids name the auth folders, so they must be plain file names.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INSTALL_HINT = "run: enginehost bridges install"


class BaileysPlugin(EnginePlugin[BaileysConfig]):
    """The ``baileys`` engine: real Baileys sessions, many per Node sidecar."""

    name: ClassVar[str] = "baileys"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SEND_TEXT, Capability.REPLY, Capability.PAIRING_CODE}
    )
    config_model: ClassVar[type[EngineConfig]] = BaileysConfig
    sidecar_package: ClassVar[SidecarPackage] = BAILEYS_PACKAGE

    def __init__(self, config: Mapping[str, Any], *, data_dir: Path) -> None:
        super().__init__(config, data_dir=data_dir)
        self._pool: SidecarPool | None = None
        self._slots = ConnectSlots(self.construction_config.max_concurrent_connects)
        self._services: HostServices | None = None
        self.runtime: NodeRuntime | None = None

    @property
    def auth_dir(self) -> Path:
        """Per-session auth state lives under it: the operator's path even when enable
        failed, never a silent default."""
        configured = self.config.auth_dir
        return (configured if configured is not None else self.data_dir / "auth").absolute()

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
            raise EngineNotReadyError(f"{runtime.problem}; then {_INSTALL_HINT}")
        problems = await anyio.to_thread.run_sync(self._dependency_problems)
        if problems:
            raise EngineNotReadyError(
                f"the baileys sidecar's dependencies are not installed ({problems[0]}); "
                f"{_INSTALL_HINT}"
            )
        self.refine_config(auth_dir=self.auth_dir, node_path=runtime.node)

    def _dependency_problems(self) -> list[str]:
        package = self.sidecar_package
        if package.installed_dir(self.install_fallback_dir) is not None:
            return []
        return package.problems_in(package.source_dir)

    async def disable(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    def create_engine(self, session: SessionInfo) -> BaileysEngine:
        if not _SESSION_ID.match(session.id):
            raise EngineError(
                f"session id {session.id!r} cannot name an auth folder: use letters, digits, "
                "'.', '_' and '-' (up to 128, not starting with '.' or '-')"
            )
        return BaileysEngine(
            session,
            engine_name=self.name,
            auth_dir=self.auth_dir / session.id,
            attach=self.attach,
            slots=self._slots,
            slot_wait=self._slot_wait(),
        )

    # ------------------------------------------------------------------ sidecars

    def _slot_wait(self) -> float:
        # Half the host's init deadline: a session still waiting for a connect slot
        # then reports a transient disconnect instead of failing the deadline.
        if self._services is None:
            return 60.0
        return max(1.0, self._services.settings.session_init_deadline / 2)

    async def attach(self, session_id: str, link: SessionLink) -> SidecarLease:
        """Attach a session connection to a sidecar of the pool (made on first use).

        Raises :class:`EngineError` naming the fix when Node or the dependencies are
        missing, so a session start fails clearly instead of a sidecar crashing.
        """
        if self._services is None:
            raise EngineError("the baileys plugin was never enabled by a running host")
        if self._pool is None:
            spec = await anyio.to_thread.run_sync(self._spec)  # probes node: blocking
            if self._pool is None:
                self._pool = SidecarPool(spec, self._answer_sidecar)
        return await self._pool.attach(session_id, link, self._services.background)

    async def debug_stats(self) -> list[Mapping[str, Any]]:
        """Each live sidecar's ``debug.stats`` answer (sockets and listeners per session)."""
        return await self._pool.broadcast("debug.stats") if self._pool is not None else []

    def _spec(self) -> SidecarSpec:
        config = self.config
        runtime = self.runtime
        if runtime is None or runtime.node is None or not runtime.ok:
            runtime = probe_node(config.node_path)
            self.runtime = runtime
        if runtime.node is None or not runtime.ok:
            raise EngineError(f"the baileys bridge cannot run: {runtime.problem}; {_INSTALL_HINT}")
        package = self.sidecar_package
        installed = package.installed_dir(self.install_fallback_dir)
        if installed is None:
            raise EngineError(
                "the baileys sidecar's dependencies are not installed; " + _INSTALL_HINT
            )
        env = node_environment({"ENGINEHOST_SIDECAR_HOSTED": "1"})
        if installed != package.source_dir:
            env["ENGINEHOST_SIDECAR_NODE_MODULES"] = str(installed / "node_modules")
        return SidecarSpec(
            name="baileys",
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
                "websocketUrl": config.websocket_url,
                "browserName": config.browser_name,
                "connectTimeoutMs": config.connect_timeout_ms,
                "connectWatchdogMs": config.connect_watchdog_ms,
                "appStateTimeoutMs": config.app_state_timeout_ms,
                "logLevel": config.log_level,
                "markOnlineOnConnect": config.mark_online_on_connect,
                "syncFullHistory": config.sync_full_history,
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

    def sidecar_pids(self) -> list[int]:
        """The PIDs of the live sidecars."""
        return self._pool.pids() if self._pool is not None else []

    def snapshot(self) -> list[dict[str, Any]]:
        """The running sidecars (name, PID, sessions), for operators and tests."""
        return self._pool.snapshot() if self._pool is not None else []
