"""Plugins for the host's own tests, one object per failure mode, named by entry points."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enginehost import (
    Capability,
    Engine,
    EngineConfig,
    EngineNotReadyError,
    EnginePlugin,
    EventSink,
    HostServices,
    ReadyEvent,
    SendResult,
    SessionInfo,
    hookimpl,
)

# ----------------------------------------------------------------------------- engines


class PathsConfig(EngineConfig):
    auth_dir: str | None = None
    session_data_path: str | None = None
    executable_path: str | None = None
    fail_enable: bool = False
    not_ready_times: int = 0


class RecordingEngine(Engine):
    """Records the paths it was created with; becomes ready at once."""

    def __init__(self, session: SessionInfo, plugin: PathsPlugin) -> None:
        super().__init__(session, engine_name=plugin.name)
        config = plugin.config
        self.paths = {
            "auth_dir": config.auth_dir,
            "session_data_path": config.session_data_path,
            "executable_path": config.executable_path,
        }
        self.stopped = False

    async def _start(self, sink: EventSink) -> None:
        await sink(ReadyEvent(own_id="1@c.us"))

    async def _stop(self) -> None:
        self.stopped = True

    async def _logout(self) -> None:
        self.stopped = True

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        return SendResult(message_id="m1")


class PathsPlugin(EnginePlugin[PathsConfig]):
    """Refines its paths during enable (made absolute under the host data dir)."""

    name = "paths"
    config_model = PathsConfig
    enable_calls = 0
    disabled = False

    async def enable(self, services: HostServices) -> None:
        type(self).enable_calls += 1
        self.refine_config(
            auth_dir=str(services.engine_data_dir(self.name) / "refined-auth"),
            executable_path="/refined/chromium",
        )
        if self.config.fail_enable or self.construction_config.fail_enable:
            raise RuntimeError("enable failed on purpose")
        if self.construction_config.not_ready_times >= type(self).enable_calls:
            raise EngineNotReadyError(f"not ready yet (call {type(self).enable_calls})")

    async def disable(self) -> None:
        type(self).disabled = True

    def create_engine(self, session: SessionInfo) -> Engine:
        return RecordingEngine(session, self)


class Paths:
    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        PathsPlugin.enable_calls = 0
        PathsPlugin.disabled = False
        register(PathsPlugin)


paths = Paths()


class LiarPlugin(PathsPlugin):
    """Declares a capability its engine does not implement."""

    name = "liar"
    capabilities = frozenset({Capability.SEND_TEXT, Capability.SEND_LOCATION})


class Liar:
    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        register(LiarPlugin)


liar = Liar()


class ConstructFails(EnginePlugin[EngineConfig]):
    name = "construct_fails"

    def __init__(self, config: Any, *, data_dir: Path) -> None:
        super().__init__(config, data_dir=data_dir)
        raise RuntimeError("constructor failed on purpose")

    def create_engine(self, session: SessionInfo) -> Engine:
        raise AssertionError("never constructed")


class ConstructFailsPlugin:
    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        register(ConstructFails)


construct_fails = ConstructFailsPlugin()


class SecondPaths:
    """Registers an engine name another plugin already registered."""

    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        register(PathsPlugin)


second_paths = SecondPaths()


class RegisterRaises:
    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        raise ValueError("register_engines failed on purpose")


register_raises = RegisterRaises()


class RegistersJunk:
    @hookimpl
    def register_engines(self, register: Callable[[type[EnginePlugin[Any]]], None]) -> None:
        register(dict)  # type: ignore[arg-type]


registers_junk = RegistersJunk()


class UnknownHook:
    @hookimpl
    def host_startd(self) -> None:  # a typo of host_started
        pass


unknown_hook = UnknownHook()


# ----------------------------------------------------------------------------- extensions


class Recorder:
    """Records every hook call it receives; optionally raises or vetoes."""

    def __init__(self, *, raises: bool = False, veto: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.raises = raises
        self.veto = veto

    def _record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))
        if self.raises:
            raise RuntimeError(f"{hook} failed on purpose")

    @hookimpl
    def host_started(self, services: HostServices) -> None:
        self._record("host_started", services=services)

    @hookimpl
    async def host_stopping(self, services: HostServices) -> None:
        self._record("host_stopping", services=services)

    @hookimpl
    def session_status_changed(
        self, session_id: str, new_status: str, old_status: str | None
    ) -> None:
        self._record(
            "session_status_changed",
            session_id=session_id,
            new_status=new_status,
            old_status=old_status,
        )

    @hookimpl
    async def message_received(self, session_id: str, message: Any) -> None:
        self._record("message_received", session_id=session_id, message=message)

    @hookimpl
    def message_sending(self, chat_id: str, text: str | None) -> str | None:
        self._record("message_sending", chat_id=chat_id, text=text)
        return self.veto


recorder = Recorder()
failing_recorder = Recorder(raises=True)
vetoing_recorder = Recorder(veto="no sends to this chat")
