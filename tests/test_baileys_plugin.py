"""The baileys_bridge plugin without a WhatsApp server: config, dialects, disconnect
mapping, enable failures that name their fix, operator paths, event conversion, and
the `enginehost bridges` commands as a user runs them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from pydantic import ValidationError

from enginehost import (
    AckEvent,
    AckStatus,
    DisconnectClassification,
    DisconnectedEvent,
    EngineError,
    ErrorEvent,
    MessageEvent,
    MessageType,
    OwnMessageEvent,
    QrEvent,
    ReadyEvent,
    SessionInfo,
)
from enginehost.core.plugins import PluginStatus
from enginehost.core.services import BackgroundTasks
from enginehost.plugins.baileys_bridge import (
    BAILEYS_PACKAGE,
    BaileysConfig,
    BaileysEngine,
    BaileysPlugin,
)
from enginehost.plugins.baileys_bridge.disconnects import classify
from enginehost.plugins.baileys_bridge.engine import ConnectSlots
from enginehost.plugins.baileys_bridge.jids import to_library, to_neutral
from enginehost.sidecar import (
    SidecarError,
    SidecarGoneError,
    SidecarLease,
    SidecarPackage,
    SidecarProcess,
    probe_node,
)
from tests.conftest import entry_point, make_host
from tests.support.daemon import cli_env, run_cli
from tests.support.wait import until

BAILEYS = entry_point("baileys_bridge", "enginehost.plugins.baileys_bridge")


def _missing(reason: str) -> None:
    """Skip for want of Node or the installed bridge; CI installs both, so fail there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# ----------------------------------------------------------------------------- dialects


@pytest.mark.parametrize(
    ("neutral", "library"),
    [
        ("15551234567@c.us", "15551234567@s.whatsapp.net"),
        ("120363025246125486@g.us", "120363025246125486@g.us"),
        ("99887766@lid", "99887766@lid"),
        ("status@broadcast", "status@broadcast"),
    ],
)
def test_chat_ids_convert_both_ways(neutral: str, library: str) -> None:
    assert to_library(neutral) == library
    assert to_neutral(library) == neutral


def test_own_ids_lose_their_device_and_agent_suffixes() -> None:
    assert to_neutral("15550001111:12@s.whatsapp.net") == "15550001111@c.us"
    assert to_neutral("15550001111_1:3@s.whatsapp.net") == "15550001111@c.us"
    assert to_neutral(None) == ""


def test_a_chat_id_in_the_wrong_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the host's dialect"):
        to_library("15551234567@s.whatsapp.net")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (401, DisconnectClassification.LOGGED_OUT),
        (403, DisconnectClassification.TERMINAL),
        (440, DisconnectClassification.TERMINAL),
        (515, DisconnectClassification.RESTART_NOW),
        (408, DisconnectClassification.TRANSIENT),
        (428, DisconnectClassification.TRANSIENT),
        (500, DisconnectClassification.TRANSIENT),
        (503, DisconnectClassification.TRANSIENT),
        (999, DisconnectClassification.TRANSIENT),
        (None, DisconnectClassification.TRANSIENT),
    ],
)
def test_disconnect_codes_map_to_the_hosts_classifications(
    code: int | None, expected: DisconnectClassification
) -> None:
    assert classify(code) is expected


# ----------------------------------------------------------------------------- config


def test_config_from_environment_strings() -> None:
    config = BaileysConfig.model_validate(
        {
            "sessions_per_sidecar": "10",
            "mark_online_on_connect": "true",
            "websocket_url": "ws://127.0.0.1:9/ws/chat",
            "auth_dir": "",
        }
    )
    assert config.sessions_per_sidecar == 10
    assert config.mark_online_on_connect is True
    assert config.auth_dir is None  # empty means unset
    assert config.log_level == "warn"


@pytest.mark.parametrize(
    "blob",
    [
        {"websocket_url": "http://example.invalid/"},
        {"sessions_per_sidecar": 0},
        {"log_level": "loud"},
        {"authdir": "/typo"},
    ],
)
def test_bad_config_is_refused(blob: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BaileysConfig.model_validate(blob)


# ----------------------------------------------------------------------------- enable


@pytest.mark.anyio
async def test_a_missing_node_leaves_the_plugin_retrying_with_the_fix_named(
    tmp_path: Path,
) -> None:
    auth = tmp_path / "operator-auth"
    host = make_host(
        tmp_path,
        BAILEYS,
        engines={"baileys": {"node_path": "/nonexistent/node", "auth_dir": str(auth)}},
    )
    async with host.running(host.services(), retry=False):
        record = host.engines["baileys"]
        assert record.status is PluginStatus.RETRYING
        assert record.error is not None
        assert "Node.js was not found" in record.error.message
        assert "enginehost bridges install" in record.error.message
        # The operator's auth_dir is honoured although enable failed.
        engine = host.create_engine("baileys", SessionInfo(id="s-1", name="one"))
        assert isinstance(engine, BaileysEngine)
        assert engine.auth_dir == auth / "s-1"
        # Starting it fails with the same clear message, never a crash.
        plugin = host.engine_plugin("baileys")
        assert isinstance(plugin, BaileysPlugin)
        with pytest.raises(EngineError, match="enginehost bridges install"):
            await plugin.attach("s-1", engine)


@pytest.mark.anyio
async def test_enable_resolves_paths_and_node(tmp_path: Path) -> None:
    host = make_host(tmp_path, BAILEYS, engines={"baileys": {"auth_dir": "rel/auth"}})
    plugin = host.engine_plugin("baileys")
    assert isinstance(plugin, BaileysPlugin)
    if not plugin.sidecar_package.installed_dir(plugin.install_fallback_dir):
        _missing("the baileys sidecar is not installed (make bridges)")
    async with host.running(host.services(), retry=False):
        assert host.engines["baileys"].status is PluginStatus.ENABLED
        assert plugin.config.auth_dir == tmp_path / "rel" / "auth"
        assert plugin.config.node_path.startswith("/")
    # Enabling created nothing on disk.
    assert not (tmp_path / "rel").exists()


def test_session_ids_that_cannot_name_a_folder_are_refused(tmp_path: Path) -> None:
    plugin = BaileysPlugin({}, data_dir=tmp_path)
    with pytest.raises(EngineError, match="cannot name a folder"):
        plugin.create_engine(SessionInfo(id="../escape", name="x"))


# ----------------------------------------------------------------------------- events


def _engine(tmp_path: Path) -> BaileysEngine:
    return BaileysPlugin({}, data_dir=tmp_path).create_engine(SessionInfo(id="s-1", name="one"))


@pytest.mark.anyio
async def test_sidecar_events_become_engine_events(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    convert = engine.convert
    assert convert("qr", {"qr": "ref,a,b,c"}) == QrEvent(payload="ref,a,b,c")
    assert convert("open", {"me": {"id": "15550001111:3@s.whatsapp.net", "name": "Bot"}}) == (
        ReadyEvent(own_id="15550001111@c.us", push_name="Bot")
    )
    closed = convert("close", {"code": 401, "reason": "logged out"})
    assert closed == DisconnectedEvent(
        DisconnectClassification.LOGGED_OUT, engine_code=401, reason="logged out (code 401)"
    )
    inbound = convert(
        "message",
        {
            "id": "ABC",
            "chat": "15551234567@s.whatsapp.net",
            "sender": "15551234567@s.whatsapp.net",
            "fromMe": False,
            "timestamp": 1_700_000_000,
            "type": "text",
            "body": "hi",
            "quotedId": None,
            "hasMedia": False,
            "pushName": "Ann",
        },
    )
    assert isinstance(inbound, MessageEvent)
    message = inbound.message
    assert (message.message_id, message.chat_id, message.sender) == (
        "ABC",
        "15551234567@c.us",
        "15551234567@c.us",
    )
    assert message.body == "hi" and message.type is MessageType.TEXT
    assert message.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)
    own = convert(
        "message",
        {"id": "X", "chat": "1@g.us", "sender": "2@s.whatsapp.net", "fromMe": True, "type": "poll"},
    )
    assert isinstance(own, OwnMessageEvent)
    assert own.message.type is MessageType.UNKNOWN
    assert convert("ack", {"id": "X", "chat": "1@g.us", "status": "read"}) == AckEvent(
        message_id="X", status=AckStatus.READ, chat_id="1@g.us"
    )
    stuck = convert("stuck", {"reason": "no app-state key", "bufferedFor": 60})
    assert isinstance(stuck, ErrorEvent) and stuck.code == "stuck_buffering"
    # A malformed event is surfaced, not raised into the sidecar reader.
    await engine.on_event("message", {"chat": "1@g.us"})
    await engine.on_event("open", {"me": "not an object"})
    for _ in range(2):
        broken = engine._queue_out.receive_nowait()
        assert isinstance(broken, ErrorEvent) and "malformed" in broken.message
    assert convert("something-new", {}) is None


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_bridges_doctor_reports_a_missing_node_and_names_the_fix(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "ENGINEHOST_ENGINES__BAILEYS__NODE_PATH": "/nonexistent/node"}
    doctor = run_cli("bridges", "doctor", "baileys", "--json", env=env)
    assert doctor.returncode == 1
    report = json.loads(doctor.stdout)
    [baileys] = report["bridges"]
    assert baileys["engine"] == "baileys" and baileys["library"] == "baileys"
    assert baileys["libraryVersion"] == "6.17.16"
    assert baileys["ok"] is False
    assert any("Node.js was not found" in problem for problem in baileys["problems"])
    install = run_cli("bridges", "install", "baileys", env=env)
    assert install.returncode == 1
    assert "Node.js was not found" in install.stderr
    unknown = run_cli("bridges", "doctor", "nope", env=env)
    assert unknown.returncode == 2 and "unknown bridge nope" in unknown.stderr


@pytest.mark.slow
def test_bridges_doctor_on_an_installed_machine(tmp_path: Path) -> None:
    plugin = BaileysPlugin({}, data_dir=tmp_path)
    if not plugin.sidecar_package.installed_dir(plugin.install_fallback_dir):
        _missing("the baileys sidecar is not installed (make bridges)")
    doctor = run_cli("bridges", "doctor", "baileys", env=cli_env(tmp_path))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert doctor.stdout.startswith("baileys: ok — baileys 6.17.16, node v")


# ----------------------------------------------------------------------------- install


def _package_copy(tmp_path: Path) -> SidecarPackage:
    """The baileys sidecar package without its node_modules, copied into a tree laid
    out like the project's (the sidecars share JavaScript under enginehost/sidecar/js)."""
    root = Path(__file__).parents[1]
    source = BAILEYS_PACKAGE.source_dir
    copy = tmp_path / "tree" / source.relative_to(root)
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("node_modules"))
    shared = root / "enginehost" / "sidecar" / "js"
    if shared.is_dir():
        shutil.copytree(shared, tmp_path / "tree" / shared.relative_to(root))
    return dataclasses.replace(BAILEYS_PACKAGE, source_dir=copy)


@pytest.mark.anyio
async def test_missing_dependencies_leave_the_plugin_retrying_with_the_fix_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BaileysPlugin, "sidecar_package", _package_copy(tmp_path))
    host = make_host(tmp_path, BAILEYS)
    async with host.running(host.services(), retry=False):
        record = host.engines["baileys"]
        assert record.status is PluginStatus.RETRYING
        assert record.error is not None
        assert "dependencies are not installed" in record.error.message
        assert "enginehost bridges install" in record.error.message


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_read_only_package_installs_into_the_engine_dir_and_runs_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = probe_node()
    if not runtime.ok:
        _missing(f"needs Node.js: {runtime.problem}")
    package = _package_copy(tmp_path)
    fallback = tmp_path / "engine" / "sidecar"
    # As root every directory is writable; stand in for a read-only site-packages.
    real_access = os.access
    monkeypatch.setattr(
        "enginehost.sidecar.package.os.access",
        lambda path, mode: False if Path(path) == package.source_dir else real_access(path, mode),
    )
    assert package.install_dir(fallback) == fallback
    where = await anyio.to_thread.run_sync(package.install, runtime, fallback)
    assert where == fallback
    assert not (package.source_dir / "node_modules").exists()
    assert package.installed_dir(fallback) == fallback
    assert package.problems_in(fallback) == []
    # A sidecar started from the package directory finds the installed modules.
    monkeypatch.setattr(BaileysPlugin, "sidecar_package", package)
    plugin = BaileysPlugin({}, data_dir=tmp_path / "engine")
    spec = plugin.sidecar_spec()
    assert spec.env is not None
    assert spec.env["ENGINEHOST_SIDECAR_NODE_MODULES"] == str(fallback / "node_modules")
    events: list[Any] = []

    async def on_event(*event: Any) -> None:
        events.append(event)

    async def on_request(method: str, params: Any) -> Any:
        return {}

    process = SidecarProcess(
        spec.command,
        name="fallback",
        init_params=spec.init_params,
        on_event=on_event,
        on_request=on_request,
        cwd=spec.cwd,
        env=spec.env,
    )
    async with anyio.create_task_group() as tg:
        hello = await tg.start(process.run)
        assert (hello.library, hello.library_version) == ("baileys", "6.17.16")
        await process.close()


@pytest.mark.anyio
async def test_the_sidecar_gets_stored_message_bodies_for_retries(tmp_path: Path) -> None:
    class Lookup:
        async def body_of(self, session_id: str, message_id: str) -> str | None:
            return f"{session_id}/{message_id}" if message_id == "known" else None

    plugin = BaileysPlugin({}, data_dir=tmp_path)
    services = dataclasses.replace(
        make_host(tmp_path).services(), messages=Lookup(), background=BackgroundTasks()
    )
    plugin._services = services
    ask = plugin._answer_sidecar
    params = {"session": "s-1", "jid": "1@s.whatsapp.net", "fromMe": True}
    assert await ask("store.getMessage", {**params, "id": "known"}) == {"text": "s-1/known"}
    assert await ask("store.getMessage", {**params, "id": "other"}) == {"text": None}
    with pytest.raises(SidecarError) as unknown:
        await ask("store.delete", params)
    assert unknown.value.code == "unknown_method"
    with pytest.raises(SidecarError) as bad:
        await ask("store.getMessage", {**params, "id": ""})
    assert bad.value.code == "bad_params" and str(bad.value).startswith("id:")


@pytest.mark.anyio
async def test_a_start_the_sidecar_cannot_serve_now_is_a_transient_disconnect(
    tmp_path: Path,
) -> None:
    async def gone(session_id: str, link: object) -> SidecarLease:
        raise SidecarGoneError("gone", "the sidecar exited during the handshake")

    engine = BaileysEngine(
        SessionInfo(id="s-1", name="one"),
        engine_name="baileys",
        auth_dir=tmp_path / "auth",
        attach=gone,
        slots=ConnectSlots(1),
    )
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    async with anyio.create_task_group() as tg:
        await engine.start(sink, tg)  # does not raise: the session is not failed for good
        await until(lambda: events != [])
        [event] = events
        assert isinstance(event, DisconnectedEvent)
        assert event.classification is DisconnectClassification.TRANSIENT
        assert "exited during the handshake" in event.reason
        await engine.stop()


@pytest.mark.anyio
async def test_waiting_too_long_for_a_connect_slot_is_a_transient_disconnect(
    tmp_path: Path,
) -> None:
    slots = ConnectSlots(1)
    held = await slots.acquire(1)
    assert held is not None

    async def never(session_id: str, link: object) -> SidecarLease:
        raise AssertionError("must not attach without a slot")

    engine = BaileysEngine(
        SessionInfo(id="s-1", name="one"),
        engine_name="baileys",
        auth_dir=tmp_path / "auth",
        attach=never,
        slots=slots,
        slot_wait=0.1,
    )
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    async with anyio.create_task_group() as tg:
        await engine.start(sink, tg)
        await until(lambda: events != [])
        [event] = events
        assert isinstance(event, DisconnectedEvent)
        assert event.engine_code == "connect_slots_busy"
        await engine.stop()
    held()
