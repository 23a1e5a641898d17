"""The baileys_bridge engine plugin: what is Baileys' on top of the generic bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from enginehost import Capability, EngineConfig, HostServices, SessionInfo
from enginehost.plugins.baileys_bridge.config import BaileysConfig
from enginehost.plugins.baileys_bridge.engine import BaileysEngine
from enginehost.sidecar import SidecarPackage
from enginehost.sidecar.bridge import BridgePlugin, check_session_id

__all__ = ["BAILEYS_PACKAGE", "BaileysPlugin"]

BAILEYS_PACKAGE = SidecarPackage(
    bridge="baileys",
    source_dir=Path(__file__).parent / "sidecar",
    library="baileys",
    local_packages=("stub-eslint-config",),
)
"""The sidecar's Node package (``enginehost bridges install`` installs it)."""


class BaileysPlugin(BridgePlugin[BaileysConfig]):
    """The ``baileys`` engine: real Baileys sessions, many per Node sidecar."""

    name: ClassVar[str] = "baileys"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SEND_TEXT, Capability.REPLY, Capability.PAIRING_CODE}
    )
    config_model: ClassVar[type[EngineConfig]] = BaileysConfig
    sidecar_package: ClassVar[SidecarPackage] = BAILEYS_PACKAGE

    @property
    def auth_dir(self) -> Path:
        """Per-session auth state lives under it: the operator's path even when enable
        failed, never a silent default."""
        configured = self.config.auth_dir
        return (configured if configured is not None else self.data_dir / "auth").absolute()

    async def enable_bridge(self, services: HostServices) -> None:
        self.refine_config(auth_dir=self.auth_dir)

    def init_params(self) -> dict[str, Any]:
        config = self.config
        return {
            "websocketUrl": config.websocket_url,
            "browserName": config.browser_name,
            "connectTimeoutMs": config.connect_timeout_ms,
            "connectWatchdogMs": config.connect_watchdog_ms,
            "appStateTimeoutMs": config.app_state_timeout_ms,
            "markOnlineOnConnect": config.mark_online_on_connect,
            "syncFullHistory": config.sync_full_history,
        }

    def create_engine(self, session: SessionInfo) -> BaileysEngine:
        check_session_id(session.id)
        return BaileysEngine(
            session,
            engine_name=self.name,
            auth_dir=self.auth_dir / session.id,
            attach=self.attach,
            slots=self._slots,
            slot_wait=self.slot_wait(),
        )
