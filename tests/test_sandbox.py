"""The built-in sandbox engine: config, enable, linking, sends, control methods, teardown."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import segno
from pydantic import ValidationError

import enginehost.plugins.sandbox as sandbox_module
from enginehost import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
    Capability,
    DisconnectClassification,
    DisconnectedEvent,
    EngineClosedError,
    EngineError,
    EngineEvent,
    EngineNotReadyError,
    EngineNotRunningError,
    EngineState,
    ErrorEvent,
    HostServices,
    MediaPayload,
    MessageEvent,
    MessageType,
    OwnMessageEvent,
    PairingCodeEvent,
    QrEvent,
    ReactionEvent,
    ReadyEvent,
    RevokeEvent,
    SessionInfo,
)
from enginehost.core.engine import CAPABILITY_METHODS, Engine
from enginehost.core.settings import Settings
from enginehost.plugins.sandbox import SandboxConfig, SandboxEngine, SandboxPlugin

E = TypeVar("E")

PEER = "15551234567@c.us"
OTHER_PEER = "15557654321@c.us"
GROUP = "120363025246125486@g.us"
OWN_ID = "15550000001@c.us"
TIMEOUT = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def services(tmp_path: Path) -> HostServices:
    return HostServices(settings=Settings(), data_dir=tmp_path, version="test")


class Recorder:
    """An event sink that keeps every event and lets a test wait (bounded) for more."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self._arrived = anyio.Event()

    async def __call__(self, event: EngineEvent) -> None:
        self.events.append(event)
        self._arrived.set()
        self._arrived = anyio.Event()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(self, predicate: Callable[[EngineEvent], bool]) -> EngineEvent:
        """The first recorded event matching ``predicate``, waiting up to ``TIMEOUT``."""
        with anyio.fail_after(TIMEOUT):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await self._arrived.wait()

    async def wait_count(self, kind: type[E], count: int) -> list[E]:
        """All recorded events of ``kind`` once there are ``count``, waiting up to ``TIMEOUT``."""
        with anyio.fail_after(TIMEOUT):
            while len(self.of(kind)) < count:
                await self._arrived.wait()
        return self.of(kind)


def make_plugin(tmp_path: Path, **config: Any) -> SandboxPlugin:
    blob: dict[str, Any] = {"auth_dir": str(tmp_path / "auth"), "ack_delay_seconds": 0.001}
    blob.update(config)
    return SandboxPlugin(blob, data_dir=tmp_path / "engines" / "sandbox")


async def enabled_plugin(tmp_path: Path, services: HostServices, **config: Any) -> SandboxPlugin:
    plugin = make_plugin(tmp_path, **config)
    await plugin._host_enable(services)
    return plugin


def session(session_id: str = "s1", **config: Any) -> SessionInfo:
    return SessionInfo(id=session_id, name=f"name-{session_id}", config=config)


@asynccontextmanager
async def running(engine: SandboxEngine, sink: Recorder) -> AsyncIterator[SandboxEngine]:
    """Start ``engine`` in a fresh task group; stop it on exit so the group can finish."""
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            await engine.start(sink, task_group)
            try:
                yield engine
            finally:
                await engine.stop()


@asynccontextmanager
async def ready_engine(
    plugin: SandboxPlugin, sink: Recorder, info: SessionInfo | None = None
) -> AsyncIterator[SandboxEngine]:
    """A started engine, linked by an explicit scan."""
    async with running(plugin.create_engine(info or session()), sink) as engine:
        await engine.scan()
        yield engine


def kinds(recorder: Recorder) -> list[str]:
    return [event.kind for event in recorder.events]


# --------------------------------------------------------------------------- config


def test_config_coerces_environment_strings(tmp_path: Path) -> None:
    plugin = make_plugin(
        tmp_path,
        auto_scan_seconds="1.5",
        ack_delay_seconds="0",
        qr_rotate_seconds="3",
        enable_not_ready_times="2",
        fail_start="",
        own_number="4915112345678",
    )
    config = plugin.config
    assert config.auto_scan_seconds == 1.5
    assert config.ack_delay_seconds == 0.0
    assert config.qr_rotate_seconds == 3.0
    assert config.enable_not_ready_times == 2
    assert config.fail_start is None  # an emptied variable means unset
    assert config.auth_dir == tmp_path / "auth"


def test_config_from_real_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS", "2")
    monkeypatch.setenv("ENGINEHOST_ENGINES__SANDBOX__PUSH_NAME", "Bot")
    blob = Settings().engine_config("sandbox")
    plugin = SandboxPlugin(blob, data_dir=tmp_path)
    assert plugin.config.auto_scan_seconds == 2.0
    assert plugin.config.push_name == "Bot"


def test_config_defaults() -> None:
    config = SandboxConfig()
    assert config.auto_scan_seconds is None
    assert config.auth_dir is None
    assert config.own_number == "15550000001"
    assert config.push_name == "Sandbox"
    assert config.ack_delay_seconds == 0.05
    assert config.qr_rotate_seconds == 20
    assert config.remember_messages == 10_000
    assert (config.fail_enable, config.fail_start, config.enable_not_ready_times) == (
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"own_number": "+15550000001"},
        {"own_number": "555"},
        {"qr_rotate_seconds": 0},
        {"ack_delay_seconds": -1},
        {"auto_scan_seconds": "-0.5"},
        {"enable_not_ready_times": -1},
        {"auto_scan": 1},  # a typo must surface, not be ignored
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_plugin(tmp_path, **bad)


# --------------------------------------------------------------------------- registration


def test_registers_through_its_hook() -> None:
    registered: list[Any] = []
    sandbox_module.register_engines(registered.append)
    assert registered == [SandboxPlugin]
    assert set(sandbox_module.__all__) == {"SandboxPlugin", "SandboxEngine", "SandboxConfig"}


def test_declares_and_implements_every_capability() -> None:
    assert SandboxPlugin.name == "sandbox"
    assert frozenset(Capability) == SandboxPlugin.capabilities
    for capability in Capability:
        method = CAPABILITY_METHODS[capability]
        assert getattr(SandboxEngine, method) is not getattr(Engine, method), method


@pytest.mark.anyio
async def test_loads_and_enables_through_the_plugin_host(tmp_path: Path) -> None:
    from enginehost.core.plugins import PluginHost, PluginStatus

    entry_point = importlib.metadata.EntryPoint(
        name="sandbox", value="enginehost.plugins.sandbox", group="enginehost"
    )
    settings = Settings(engines={"sandbox": {"auth_dir": str(tmp_path / "auth")}})
    host = PluginHost(settings, data_dir=tmp_path, entry_points=[entry_point])
    host.load()
    async with host.running(host.services(), retry=False):
        assert host.engines["sandbox"].status is PluginStatus.ENABLED
        engine = host.create_engine("sandbox", session())  # checks capabilities too
        assert isinstance(engine, SandboxEngine)


# --------------------------------------------------------------------------- enable


@pytest.mark.anyio
async def test_enable_refines_a_relative_auth_dir_to_absolute(
    tmp_path: Path, services: HostServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plugin = await enabled_plugin(tmp_path, services, auth_dir="rel/auth", auto_scan_seconds=0)
    assert plugin.construction_config.auth_dir == Path("rel/auth")
    assert plugin.config.auth_dir == tmp_path / "rel" / "auth"
    assert plugin.config.auth_dir.is_absolute()
    assert not (tmp_path / "rel").exists()  # enable checks, never creates

    monkeypatch.chdir(tmp_path.parent)  # the refined path no longer depends on the cwd
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink):
        await sink.wait_for(lambda event: isinstance(event, ReadyEvent))
    assert (tmp_path / "rel" / "auth" / "s1.json").is_file()


@pytest.mark.anyio
async def test_enable_defaults_auth_dir_under_the_engine_data_dir(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = SandboxPlugin({}, data_dir=tmp_path / "engines" / "sandbox")
    await plugin._host_enable(services)
    assert plugin.config.auth_dir == tmp_path / "engines" / "sandbox" / "auth"
    assert not (tmp_path / "engines").exists()


@pytest.mark.anyio
async def test_failed_enable_still_uses_the_operators_auth_dir(
    tmp_path: Path, services: HostServices
) -> None:
    operator_dir = tmp_path / "operator-auth"
    plugin = make_plugin(tmp_path, auth_dir=str(operator_dir), fail_enable="no luck")
    with pytest.raises(EngineError, match="no luck"):
        await plugin._host_enable(services)
    assert plugin.config is plugin.construction_config

    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        await engine.scan()
    assert (operator_dir / "s1.json").is_file()
    assert not (plugin.data_dir / "auth").exists()


@pytest.mark.anyio
async def test_failed_enable_without_auth_dir_uses_the_default(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = SandboxPlugin({"fail_enable": "down"}, data_dir=tmp_path / "engines" / "sandbox")
    with pytest.raises(EngineError, match="down"):
        await plugin._host_enable(services)
    assert plugin.config.auth_dir is None
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        await engine.scan()
    assert (tmp_path / "engines" / "sandbox" / "auth" / "s1.json").is_file()


@pytest.mark.anyio
async def test_enable_reports_not_ready_the_configured_number_of_times(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = make_plugin(tmp_path, enable_not_ready_times="2")
    for _ in range(2):
        with pytest.raises(EngineNotReadyError):
            await plugin._host_enable(services)
        assert plugin.config is plugin.construction_config
    await plugin._host_enable(services)
    assert plugin.config is not plugin.construction_config
    assert plugin.config.auth_dir == tmp_path / "auth"
    await plugin._host_enable(services)  # stays enabled on a later enable


@pytest.mark.anyio
async def test_enable_refuses_an_auth_dir_that_is_a_file(
    tmp_path: Path, services: HostServices
) -> None:
    (tmp_path / "auth").write_text("not a directory")
    with pytest.raises(EngineError, match="not a directory"):
        await enabled_plugin(tmp_path, services)
    with pytest.raises(EngineError, match="cannot be created"):
        await enabled_plugin(tmp_path, services, auth_dir=str(tmp_path / "auth" / "below"))


# --------------------------------------------------------------------------- linking


def _assert_whatsapp_shaped(payload: str) -> list[str]:
    parts = payload.split(",")
    assert len(parts) == 4
    assert parts[0].startswith("2@")
    assert len(parts[0]) > 20
    for key in parts[1:]:
        assert len(base64.b64decode(key, validate=True)) == 32
    qr = segno.make(payload, error="l")
    assert qr.designator  # encoded: a real QR version was chosen
    return parts


@pytest.mark.anyio
async def test_qr_then_explicit_scan_links(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        assert kinds(sink) == ["qr"]
        qr = sink.of(QrEvent)[0]
        _assert_whatsapp_shaped(qr.payload)
        assert engine.qr_payload == qr.payload
        assert engine.waiting_for_scan
        assert not engine.ready
        assert plugin.engine_for("s1") is engine
        with pytest.raises(EngineNotRunningError, match="not ready"):
            await engine.send_text(PEER, "too early")

        await engine.scan()
        assert kinds(sink) == ["qr", "authenticated", "ready"]
        assert sink.of(AuthenticatedEvent) == [AuthenticatedEvent()]
        assert sink.of(ReadyEvent) == [ReadyEvent(own_id=OWN_ID, push_name="Sandbox")]
        assert engine.ready
        assert not engine.waiting_for_scan
        with pytest.raises(EngineError, match="not waiting for a scan"):
            await engine.scan()

    auth_file = tmp_path / "auth" / "s1.json"
    saved = json.loads(auth_file.read_text())
    assert saved["own_id"] == OWN_ID
    assert saved["push_name"] == "Sandbox"
    assert saved["linked_at"]
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600


@pytest.mark.anyio
async def test_auto_scan_links_after_the_delay(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, auto_scan_seconds=0.05)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink):
        assert kinds(sink) == ["qr"]
        await sink.wait_for(lambda event: isinstance(event, ReadyEvent))
        assert kinds(sink) == ["qr", "authenticated", "ready"]


@pytest.mark.anyio
async def test_session_config_overrides_auto_scan(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with running(plugin.create_engine(session("fast", auto_scan_seconds="0")), sink):
        await sink.wait_for(lambda event: isinstance(event, ReadyEvent))

    # An explicit null wins over the operator's auto-scan: that session waits.
    plugin = await enabled_plugin(tmp_path / "p2", services, auto_scan_seconds=0)
    sink = Recorder()
    async with running(plugin.create_engine(session("slow", auto_scan_seconds=None)), sink) as e:
        await anyio.sleep(0.1)
        assert kinds(sink) == ["qr"]
        assert e.waiting_for_scan


@pytest.mark.anyio
async def test_qr_rotates_until_scanned(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, qr_rotate_seconds=0.03)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        qrs = await sink.wait_count(QrEvent, 3)
        payloads = [qr.payload for qr in qrs[:3]]
        assert len(set(payloads)) == 3
        first, second = (_assert_whatsapp_shaped(payload) for payload in payloads[:2])
        assert first[0] != second[0]  # the server ref rotates ...
        assert first[1:] == second[1:]  # ... the device keys stay
        await engine.scan()
        shown = len(sink.of(QrEvent))
        await anyio.sleep(0.15)
        assert len(sink.of(QrEvent)) == shown


@pytest.mark.anyio
async def test_restart_with_saved_auth_skips_the_qr(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, own_number="4915112345678")
    async with ready_engine(plugin, Recorder()):
        pass
    assert (tmp_path / "auth" / "s1.json").is_file()  # stop keeps auth

    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        assert kinds(sink) == ["authenticated", "ready"]
        assert sink.of(ReadyEvent)[0].own_id == "4915112345678@c.us"
        assert engine.ready
        await engine.send_text(PEER, "back again")


@pytest.mark.anyio
async def test_corrupt_auth_is_reported_and_a_new_qr_shown(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "s1.json").write_text("{not json")
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        assert kinds(sink) == ["error", "qr"]
        assert sink.of(ErrorEvent)[0].code == "auth_corrupt"
        await engine.scan()
    assert json.loads((tmp_path / "auth" / "s1.json").read_text())["own_id"] == OWN_ID


@pytest.mark.anyio
async def test_pairing_code_links_the_requested_number(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        for bad in ("1555", "+15557654321", "1555765432x", "1234567890123456"):
            with pytest.raises(ValueError, match="digits"):
                await engine.request_pairing_code(bad)
        with pytest.raises(EngineError, match="no pairing code"):
            await engine.enter_pairing_code("AAAA-AAAA")

        code = await engine.request_pairing_code("15557654321")
        assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
        assert sink.of(PairingCodeEvent) == [PairingCodeEvent(code=code)]
        wrong = "0000-0000"  # 0 is not in the alphabet, so never the real code
        with pytest.raises(EngineError, match="wrong pairing code"):
            await engine.enter_pairing_code(wrong)
        assert not engine.ready

        await engine.enter_pairing_code(code.lower().replace("-", ""))
        assert sink.of(ReadyEvent)[0].own_id == OTHER_PEER
        with pytest.raises(EngineError, match="already linked"):
            await engine.request_pairing_code("15557654321")


@pytest.mark.anyio
async def test_scan_after_pairing_code_links_too(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink) as engine:
        await engine.request_pairing_code("15557654321")
        await engine.scan()
        assert kinds(sink) == ["qr", "pairing_code", "authenticated", "ready"]


# --------------------------------------------------------------------------- teardown


@pytest.mark.anyio
async def test_stop_keeps_auth_and_leaves_live_engines(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    async with ready_engine(plugin, Recorder()) as engine:
        assert plugin.live_engines == {"s1": engine}
    assert engine.state is EngineState.CLOSED
    assert plugin.live_engines == {}
    with pytest.raises(KeyError, match="no live sandbox engine for session 's1'"):
        plugin.engine_for("s1")
    assert (tmp_path / "auth" / "s1.json").is_file()


@pytest.mark.anyio
async def test_logout_wipes_auth(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    auth_file = tmp_path / "auth" / "s1.json"
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            engine = plugin.create_engine(session())
            await engine.start(Recorder(), task_group)
            await engine.scan()
            assert auth_file.is_file()
            await engine.logout()
    assert not auth_file.exists()
    assert plugin.live_engines == {}
    assert engine.state is EngineState.CLOSED


@pytest.mark.anyio
async def test_logout_without_start_wipes_auth(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    async with ready_engine(plugin, Recorder()):
        pass
    auth_file = tmp_path / "auth" / "s1.json"
    assert auth_file.is_file()
    await plugin.create_engine(session()).logout()
    assert not auth_file.exists()
    await plugin.create_engine(session()).logout()  # nothing to wipe: still fine


@pytest.mark.anyio
async def test_engine_objects_are_single_use(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    engine = plugin.create_engine(session())
    async with running(engine, Recorder()):
        pass
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            with pytest.raises(EngineClosedError, match="single-use"):
                await engine.start(Recorder(), task_group)
    assert plugin.live_engines == {}


@pytest.mark.parametrize(
    ("classification", "code"),
    [
        (DisconnectClassification.TRANSIENT, 428),
        (DisconnectClassification.RESTART_NOW, 515),
        (DisconnectClassification.LOGGED_OUT, 401),
        (DisconnectClassification.TERMINAL, 403),
    ],
)
@pytest.mark.anyio
async def test_drop_disconnects_and_finishes_the_engine(
    tmp_path: Path,
    services: HostServices,
    classification: DisconnectClassification,
    code: int,
) -> None:
    plugin = await enabled_plugin(tmp_path, services, ack_delay_seconds=0.05)
    sink = Recorder()
    auth_file = tmp_path / "auth" / "s1.json"
    with anyio.fail_after(TIMEOUT):
        # No stop here: the drop alone must end the engine's work so the group exits.
        async with anyio.create_task_group() as task_group:
            engine = plugin.create_engine(session())
            await engine.start(sink, task_group)
            await engine.scan()
            await engine.send_text(PEER, "in flight")  # its acks must not outlive the drop
            await engine.drop(classification)
    disconnects = sink.of(DisconnectedEvent)
    assert len(disconnects) == 1
    assert disconnects[0].classification is classification
    assert disconnects[0].engine_code == code
    assert disconnects[0].reason
    assert kinds(sink)[-1] == "disconnected"
    assert sink.of(AckEvent) == []
    assert engine.state is EngineState.CLOSED
    assert plugin.live_engines == {}
    assert auth_file.exists() is (classification is not DisconnectClassification.LOGGED_OUT)
    with pytest.raises(EngineNotRunningError):
        await engine.send_text(PEER, "after the drop")


@pytest.mark.anyio
async def test_drop_accepts_a_custom_code_and_reason(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        await engine.drop("terminal", engine_code=440, reason="connection replaced")
    assert sink.of(DisconnectedEvent) == [
        DisconnectedEvent(
            classification=DisconnectClassification.TERMINAL,
            engine_code=440,
            reason="connection replaced",
        )
    ]


# --------------------------------------------------------------------------- start failures


@pytest.mark.anyio
async def test_fail_start_from_config(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, fail_start="engine exploded")
    engine = plugin.create_engine(session())
    sink = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            with pytest.raises(EngineError, match="engine exploded"):
                await engine.start(sink, task_group)
    assert engine.state is EngineState.CLOSED
    assert plugin.live_engines == {}
    assert sink.events == []


@pytest.mark.anyio
async def test_fail_next_start_fails_once(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    plugin.fail_next_start("flaky network")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            with pytest.raises(EngineError, match="flaky network"):
                await plugin.create_engine(session()).start(Recorder(), task_group)
    sink = Recorder()
    async with running(plugin.create_engine(session()), sink):
        assert kinds(sink) == ["qr"]


@pytest.mark.anyio
async def test_session_fail_start_wins_over_plugin_config(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            broken = plugin.create_engine(session("broken", fail_start="session says no"))
            with pytest.raises(EngineError, match="session says no"):
                await broken.start(Recorder(), task_group)
    async with running(plugin.create_engine(session("fine")), Recorder()) as engine:
        assert engine.waiting_for_scan

    failing = await enabled_plugin(tmp_path / "p2", services, fail_start="operator says no")
    async with running(failing.create_engine(session("s1", fail_start=None)), Recorder()) as e:
        assert e.waiting_for_scan


def test_bad_session_config_and_ids_are_refused(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path)
    with pytest.raises(EngineError, match="auto_scan"):
        plugin.create_engine(session("s1", auto_scan="1"))
    with pytest.raises(EngineError, match="auto_scan_seconds"):
        plugin.create_engine(session("s1", auto_scan_seconds=-1))
    for bad_id in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="session id"):
            plugin.create_engine(SessionInfo(id=bad_id, name="x"))


# --------------------------------------------------------------------------- sends


@pytest.mark.anyio
async def test_send_text_echoes_and_acks_in_order(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        first = await engine.send_text(PEER, "hello")
        second = await engine.send_text(GROUP, "hello group")
        assert re.fullmatch(r"SB[0-9A-F]{20}", first.message_id)
        assert first.message_id != second.message_id

        echoes = sink.of(OwnMessageEvent)
        assert [echo.message.message_id for echo in echoes] == [
            first.message_id,
            second.message_id,
        ]
        echo = echoes[0].message
        assert (echo.chat_id, echo.sender, echo.from_me, echo.body, echo.type) == (
            PEER,
            OWN_ID,
            True,
            "hello",
            MessageType.TEXT,
        )
        assert engine.sent == [echoes[0].message, echoes[1].message]

        await sink.wait_count(AckEvent, 6)
        for result, chat in ((first, PEER), (second, GROUP)):
            acks = [ack for ack in sink.of(AckEvent) if ack.message_id == result.message_id]
            assert [ack.status for ack in acks] == [
                AckStatus.SENT,
                AckStatus.DELIVERED,
                AckStatus.READ,
            ]
            assert {ack.chat_id for ack in acks} == {chat}
        # The echo always comes before the message's first ack.
        first_ack = next(i for i, e in enumerate(sink.events) if isinstance(e, AckEvent))
        assert sink.events.index(echoes[0]) < first_ack


@pytest.mark.anyio
async def test_reply_quotes_a_known_message(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        inbound = await engine.receive_text(PEER, "question?")
        await engine.send_text(PEER, "answer", quoted_message_id=inbound.message_id)
        assert engine.sent[-1].quoted_message_id == inbound.message_id
        with pytest.raises(EngineError, match="never sent or received"):
            await engine.send_text(PEER, "answer", quoted_message_id="3EB0NOPE")
        with pytest.raises(EngineError, match="is in chat"):
            await engine.send_text(OTHER_PEER, "answer", quoted_message_id=inbound.message_id)


@pytest.mark.anyio
async def test_remembered_messages_are_bounded(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, remember_messages=3, ack_delay_seconds=60)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        first = await engine.receive_text(PEER, "oldest")
        for n in range(4):
            await engine.send_text(PEER, f"m{n}")
        assert [m.body for m in engine.sent] == ["m1", "m2", "m3"]
        assert len(engine.received) == 1
        # The oldest message is forgotten: a reply to it is a clear error, not a leak.
        with pytest.raises(EngineError, match="never sent or received"):
            await engine.send_text(PEER, "late answer", quoted_message_id=first.message_id)
        await engine.send_text(PEER, "reply", quoted_message_id=engine.sent[-1].message_id)


@pytest.mark.anyio
async def test_send_media(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        image = MediaPayload(
            type=MessageType.IMAGE, data=b"\x89PNG...", mimetype="image/png", caption="look"
        )
        result = await engine.send_media(PEER, image)
        message = sink.of(OwnMessageEvent)[-1].message
        assert message.message_id == result.message_id
        assert (message.type, message.body, message.has_media) == (MessageType.IMAGE, "look", True)
        assert message.raw["mimetype"] == "image/png"

        doc = MediaPayload(
            type=MessageType.DOCUMENT, data=b"%PDF", mimetype="application/pdf", filename="a.pdf"
        )
        await engine.send_media(GROUP, doc)
        assert engine.sent[-1].type is MessageType.DOCUMENT
        assert engine.sent[-1].raw["filename"] == "a.pdf"

        with pytest.raises(ValueError, match="not a media type"):
            await engine.send_media(PEER, MediaPayload(MessageType.TEXT, b"x", "text/plain"))
        with pytest.raises(ValueError, match="empty"):
            await engine.send_media(PEER, MediaPayload(MessageType.IMAGE, b"", "image/png"))


@pytest.mark.anyio
async def test_send_location_and_contact(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        await engine.send_location(PEER, 52.52, 13.405, description="Berlin")
        await engine.send_location(PEER, -33.9, 151.2)
        await engine.send_contact(PEER, "Ada", "15559990000")
        located, coordinates, contact = engine.sent
        assert (located.type, located.body) == (MessageType.LOCATION, "Berlin")
        assert located.raw["latitude"] == 52.52
        assert coordinates.body == "-33.9,151.2"
        assert contact.type is MessageType.CONTACT
        assert contact.body is not None
        assert contact.body.startswith("BEGIN:VCARD")
        assert "FN:Ada" in contact.body
        assert "15559990000" in contact.body
        assert len(sink.of(OwnMessageEvent)) == 3

        with pytest.raises(ValueError, match="latitude"):
            await engine.send_location(PEER, 91, 0)
        with pytest.raises(ValueError, match="digits"):
            await engine.send_contact(PEER, "Ada", "+1 555")


@pytest.mark.anyio
async def test_forward(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        inbound = await engine.receive_text(PEER, "pass it on")
        result = await engine.forward(PEER, GROUP, inbound.message_id)
        forwarded = engine.sent[-1]
        assert forwarded.message_id == result.message_id != inbound.message_id
        assert (forwarded.chat_id, forwarded.body, forwarded.from_me) == (GROUP, "pass it on", True)
        assert forwarded.raw["forwarded"] is True
        assert sink.of(OwnMessageEvent)[-1].message == forwarded

        with pytest.raises(EngineError, match="never sent or received"):
            await engine.forward(PEER, GROUP, "SB00000000000000000000")
        with pytest.raises(EngineError, match="is in chat"):
            await engine.forward(OTHER_PEER, GROUP, inbound.message_id)


@pytest.mark.anyio
async def test_react_and_delete_validate_and_report_the_own_action(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services, ack_delay_seconds=10)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        inbound = await engine.receive_text(PEER, "nice")
        sent = await engine.send_text(PEER, "thanks")
        before = len(sink.events)

        await engine.react(PEER, inbound.message_id, "👍")
        assert engine.reactions == {inbound.message_id: "👍"}
        await engine.react(PEER, inbound.message_id, "")
        assert engine.reactions == {}
        await engine.delete_message(PEER, sent.message_id)
        assert engine.deleted == {sent.message_id}
        # As real engines do, the account's own actions come back as events.
        own = engine.own_id
        assert sink.events[before:] == [
            ReactionEvent(PEER, inbound.message_id, "👍", sender=own, from_me=True),
            ReactionEvent(PEER, inbound.message_id, "", sender=own, from_me=True),
            RevokeEvent(PEER, sent.message_id, sender=own, from_me=True),
        ]

        with pytest.raises(EngineError, match="never sent or received"):
            await engine.react(PEER, "3EB0UNKNOWN", "👍")
        with pytest.raises(EngineError, match="never sent or received"):
            await engine.delete_message(PEER, "SBUNKNOWN")
        with pytest.raises(EngineError, match="was deleted"):
            await engine.react(PEER, sent.message_id, "👍")
        assert len(sink.events) == before + 3


@pytest.mark.anyio
async def test_the_other_side_reacts_and_revokes(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services, ack_delay_seconds=10)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        inbound = await engine.receive_text(PEER, "nice")
        before = len(sink.events)
        await engine.receive_reaction(PEER, inbound.message_id, "❤")
        await engine.receive_revoke(PEER, inbound.message_id)
        assert sink.events[before:] == [
            ReactionEvent(PEER, inbound.message_id, "❤", sender=PEER),
            RevokeEvent(PEER, inbound.message_id, sender=PEER),
        ]
        with pytest.raises(EngineError, match="never sent or received"):
            await engine.receive_reaction(PEER, "3EB0UNKNOWN", "❤")


@pytest.mark.anyio
async def test_sends_need_a_started_engine(tmp_path: Path, services: HostServices) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    engine = plugin.create_engine(session())
    with pytest.raises(EngineNotRunningError):
        await engine.send_text(PEER, "never started")
    with pytest.raises(EngineNotRunningError):
        await engine.receive_text(PEER, "never started")
    with pytest.raises(EngineNotRunningError):
        await engine.scan()


@pytest.mark.parametrize(
    "chat_id",
    ["15551234567", "15551234567@s.whatsapp.net", "abc@c.us", "@c.us", "1@c.us", "x@g.us", ""],
)
@pytest.mark.anyio
async def test_malformed_chat_ids_are_refused(
    tmp_path: Path, services: HostServices, chat_id: str
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    async with ready_engine(plugin, Recorder()) as engine:
        with pytest.raises(ValueError, match="malformed chat id"):
            await engine.send_text(chat_id, "hi")
        with pytest.raises(ValueError, match="malformed chat id"):
            await engine.receive_text(chat_id, "hi")
        with pytest.raises(ValueError, match="malformed chat id"):
            await engine.send_location(chat_id, 0, 0)
        assert engine.sent == []


@pytest.mark.anyio
async def test_a_bot_may_send_from_its_ready_handler(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    engine = plugin.create_engine(session())
    sink = Recorder()

    async def bot(event: EngineEvent) -> None:
        await sink(event)
        if isinstance(event, ReadyEvent):
            await engine.send_text(PEER, "I am up")

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            await engine.start(bot, task_group)
            await engine.scan()
            await engine.stop()
    assert kinds(sink) == ["qr", "authenticated", "ready", "own_message"]


# --------------------------------------------------------------------------- the other side


@pytest.mark.anyio
async def test_receive_text_emits_an_inbound_message(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        message = await engine.receive_text(PEER, "hi bot")
        assert sink.of(MessageEvent) == [MessageEvent(message=message)]
        assert (message.chat_id, message.sender, message.from_me, message.body) == (
            PEER,
            PEER,
            False,
            "hi bot",
        )
        assert engine.received == [message]

        in_group = await engine.receive_text(GROUP, "hi all", sender=OTHER_PEER)
        assert (in_group.chat_id, in_group.sender) == (GROUP, OTHER_PEER)
        with pytest.raises(ValueError, match="needs a sender"):
            await engine.receive_text(GROUP, "who am I")

        # Re-firing an id is allowed: that is how engines behave, and what dedup is for.
        again = await engine.receive_text(PEER, "hi bot", message_id=message.message_id)
        assert again.message_id == message.message_id
        assert len(sink.of(MessageEvent)) == 3
        assert sink.of(AckEvent) == []  # inbound messages are not acked to us


@pytest.mark.anyio
async def test_compose_on_phone_emits_an_own_message(
    tmp_path: Path, services: HostServices
) -> None:
    plugin = await enabled_plugin(tmp_path, services)
    sink = Recorder()
    async with ready_engine(plugin, sink) as engine:
        message = await engine.compose_on_phone(PEER, "typed by hand")
        assert sink.of(OwnMessageEvent) == [OwnMessageEvent(message=message)]
        assert (message.from_me, message.sender, message.chat_id) == (True, OWN_ID, PEER)
        assert engine.sent == []  # not an API send
        await engine.react(PEER, message.message_id, "❤")  # but a known message
