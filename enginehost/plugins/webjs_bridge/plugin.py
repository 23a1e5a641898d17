"""The webjs_bridge engine plugin: what is whatsapp-web.js's on top of the generic bridge."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread

from enginehost import (
    Capability,
    EngineConfig,
    EngineError,
    EngineNotReadyError,
    HostServices,
    SessionInfo,
)
from enginehost.plugins.webjs_bridge.config import WebjsConfig
from enginehost.plugins.webjs_bridge.engine import WebjsEngine
from enginehost.sidecar import SidecarPackage
from enginehost.sidecar.bridge import BridgePlugin, check_session_id

__all__ = ["WEBJS_PACKAGE", "WebjsPlugin", "probe_chromium"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]+$")

WEBJS_PACKAGE = SidecarPackage(
    bridge="webjs",
    source_dir=Path(__file__).parent / "sidecar",
    library="whatsapp-web.js",
    # puppeteer, a dependency, would otherwise try to download a browser of its own:
    # the operator's Chromium is used instead.
    install_env={"PUPPETEER_SKIP_DOWNLOAD": "1"},
)
"""The sidecar's Node package (``enginehost bridges install`` installs it)."""

# Always given (by the sidecar, before the operator's chromium_args): the browser runs
# as a service, often as root, never updating itself or calling home (and a closed
# network refuses those calls many at a time).
BASE_CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def probe_chromium(executable: str | None) -> tuple[str | None, str | None, str | None]:
    """(absolute path, version, problem) of the Chromium binary (blocking)."""
    name = executable or "chromium"
    found = shutil.which(name)
    if found is None:
        return (
            None,
            None,
            f"Chromium was not found ({name!r}); install Debian's chromium "
            "(apt-get install chromium) or set the webjs executable_path",
        )
    try:
        done = subprocess.run(
            [found, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return found, None, f"{found} --version failed: {exc}"
    version = done.stdout.strip()
    if done.returncode != 0 or not version:
        return found, None, f"{found} --version did not answer with a version"
    return found, version, None


class WebjsPlugin(BridgePlugin[WebjsConfig]):
    """The ``webjs`` engine: whatsapp-web.js in the operator's Chromium, one browser a
    session, several browsers per Node sidecar."""

    name: ClassVar[str] = "webjs"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SEND_TEXT, Capability.REPLY}
    )
    config_model: ClassVar[type[EngineConfig]] = WebjsConfig
    sidecar_package: ClassVar[SidecarPackage] = WEBJS_PACKAGE

    @property
    def session_data_path(self) -> Path:
        """The profiles live under it: the operator's path even when enable failed."""
        configured = self.config.session_data_path
        chosen = configured if configured is not None else self.data_dir / "profiles"
        return chosen.absolute()

    async def enable_bridge(self, services: HostServices) -> None:
        path, _, problem = await anyio.to_thread.run_sync(
            probe_chromium, self.construction_config.executable_path
        )
        if problem is not None:
            raise EngineNotReadyError(problem)
        self.refine_config(session_data_path=self.session_data_path, executable_path=path)

    def doctor_problems(self) -> list[str]:
        _, _, problem = probe_chromium(self.construction_config.executable_path)
        return [problem] if problem else []

    def init_params(self) -> dict[str, Any]:
        config = self.config
        return {
            "executablePath": config.executable_path or shutil.which("chromium") or "chromium",
            "chromiumArgs": list(config.chromium_args),
            "headless": config.headless,
            "webVersion": config.web_version,
            "webVersionCacheDir": (
                str(config.web_version_cache_dir.absolute())
                if config.web_version_cache_dir is not None
                else None
            ),
            "initTimeoutMs": config.init_timeout_ms,
            "authTimeoutMs": config.auth_timeout_ms,
        }

    def create_engine(self, session: SessionInfo) -> WebjsEngine:
        check_session_id(session.id)
        if not _CLIENT_ID.match(session.id):
            # The library's LocalAuth names the profile after it and allows no more.
            raise EngineError(
                f"session id {session.id!r} cannot name a browser profile: use letters, "
                "digits, '-' and '_'"
            )
        return WebjsEngine(
            session,
            engine_name=self.name,
            session_data_path=self.session_data_path,
            attach=self.attach,
            slots=self._slots,
            slot_wait=self.slot_wait(),
        )
