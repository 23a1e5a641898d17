"""Plugin discovery, lifecycle and failure isolation (PluginHost), with in-tree plugins."""

from __future__ import annotations

import ast
from pathlib import Path

import anyio
import pytest

from enginehost import SessionInfo
from enginehost.core.engine import EngineError
from enginehost.core.plugins import (
    EngineUnavailableError,
    PluginStatus,
    UnknownEngineError,
)
from tests.conftest import entry_point, make_host, support
from tests.support import plugins as test_plugins
from tests.support.snapshot import ENGINE_FIELDS, PLUGIN_FIELDS

pytestmark = pytest.mark.anyio


def _status(host: object, name: str) -> str:
    return host.records[name].status.value  # type: ignore[attr-defined]


async def test_import_failure_is_recorded_and_others_still_load(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        entry_point("broken", "tests.support.does_not_exist"),
        support("paths"),
    )
    async with host.running(host.services(), retry=False):
        snapshot = host.snapshot()
    by_name = {p["name"]: p for p in snapshot["plugins"]}
    assert by_name["broken"]["status"] == "failed"
    assert by_name["broken"]["error"]["stage"] == "import"
    assert "does_not_exist" in by_name["broken"]["error"]["message"]
    assert by_name["broken"]["kind"] == "unknown"
    assert by_name["paths"]["status"] == "enabled"
    assert by_name["paths"]["kind"] == "engine"
    assert by_name["paths"]["hooks"] == ["register_engines"]


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("register_raises", "register_engines failed on purpose"),
        ("registers_junk", "takes EnginePlugin subclasses"),
        ("unknown_hook", "unknown hook(s): host_startd"),
    ],
)
async def test_register_stage_failures(tmp_path: Path, plugin: str, message: str) -> None:
    host = make_host(tmp_path, support(plugin), support("paths"))
    record = host.records[plugin]
    assert record.status is PluginStatus.FAILED
    assert record.error is not None
    assert record.error.stage == "register"
    assert message in record.error.message
    assert host.records["paths"].engines[0].instance is not None


@pytest.mark.parametrize("plugin", ["unknown_hook", "register_raises"])
async def test_plugin_failing_registration_gets_no_hook_calls(tmp_path: Path, plugin: str) -> None:
    host = make_host(tmp_path, support(plugin))
    assert not host.pm.is_registered(getattr(test_plugins, plugin))


async def test_duplicate_engine_name_fails_second_plugin_only(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), support("second_paths"))
    assert host.records["paths"].status is PluginStatus.PENDING
    second = host.records["second_paths"]
    assert second.status is PluginStatus.FAILED
    assert second.error is not None
    assert "already registered by plugin 'paths'" in second.error.message


async def test_duplicate_plugin_name_is_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), entry_point("paths", "tests.support.plugins:liar"))
    assert host.records["paths"].status is PluginStatus.PENDING
    duplicates = [r for name, r in host.records.items() if name != "paths"]
    assert len(duplicates) == 1
    assert duplicates[0].status is PluginStatus.FAILED
    assert "duplicate plugin name 'paths'" in (
        duplicates[0].error.message if duplicates[0].error else ""
    )


async def test_constructor_failure(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("construct_fails"))
    engine = host.engines["construct_fails"]
    assert engine.status is PluginStatus.FAILED
    assert engine.error is not None and engine.error.stage == "construct"
    assert host.records["construct_fails"].status is PluginStatus.FAILED
    with pytest.raises(EngineUnavailableError, match="constructor failed on purpose"):
        host.create_engine("construct_fails", SessionInfo(id="s", name="s"))


async def test_invalid_config_blob_names_the_setting(tmp_path: Path) -> None:
    host = make_host(
        tmp_path, support("paths"), engines={"paths": {"not_ready_times": "lots", "typo": 1}}
    )
    error = host.engines["paths"].error
    assert error is not None and error.stage == "construct"
    assert "ENGINEHOST_ENGINES__PATHS__NOT_READY_TIMES" in error.message
    assert "ENGINEHOST_ENGINES__PATHS__TYPO" in error.message


async def test_enable_failure_keeps_operator_paths_from_construction(tmp_path: Path) -> None:
    operator = {
        "auth_dir": "/srv/operator/auth",
        "session_data_path": "/srv/operator/profiles",
        "executable_path": "/opt/operator/chromium",
        "fail_enable": True,
    }
    host = make_host(tmp_path, support("paths"), engines={"paths": operator})
    async with host.running(host.services(), retry=False):
        engine = host.engines["paths"]
        assert engine.status is PluginStatus.FAILED
        assert engine.error is not None and engine.error.stage == "enable"
        created = host.create_engine("paths", SessionInfo(id="s1", name="one"))
    assert isinstance(created, test_plugins.RecordingEngine)
    # The refinement proposed before enable raised is discarded, never half-applied.
    assert created.paths == {
        "auth_dir": "/srv/operator/auth",
        "session_data_path": "/srv/operator/profiles",
        "executable_path": "/opt/operator/chromium",
    }


async def test_enable_success_prefers_refined_config(tmp_path: Path) -> None:
    host = make_host(
        tmp_path, support("paths"), engines={"paths": {"session_data_path": "/srv/profiles"}}
    )
    async with host.running(host.services(), retry=False):
        assert host.engines["paths"].status is PluginStatus.ENABLED
        created = host.create_engine("paths", SessionInfo(id="s1", name="one"))
    assert isinstance(created, test_plugins.RecordingEngine)
    assert created.paths == {
        "auth_dir": str(tmp_path / "data" / "engines" / "paths" / "refined-auth"),
        "session_data_path": "/srv/profiles",
        "executable_path": "/refined/chromium",
    }


async def test_not_ready_plugin_retries_until_enabled(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), engines={"paths": {"not_ready_times": 3}})
    async with host.running(host.services()):
        engine = host.engines["paths"]
        assert engine.status is PluginStatus.RETRYING
        assert engine.error is not None and "not ready yet" in engine.error.message
        with anyio.fail_after(5):
            while engine.status is PluginStatus.RETRYING:
                await anyio.sleep(0.01)
        assert engine.status is PluginStatus.ENABLED
        assert engine.error is None
        assert engine.retry_attempt == 3
        assert test_plugins.PathsPlugin.enable_calls == 4


async def test_retrying_is_cancelled_at_shutdown(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        support("paths"),
        engines={"paths": {"not_ready_times": 10_000}},
        plugin_retry_base=5.0,
        plugin_retry_cap=5.0,
    )
    with anyio.fail_after(3):
        async with host.running(host.services()):
            assert host.engines["paths"].status is PluginStatus.RETRYING
    # Cancelled, not completed: the retry loop did not get to call enable again.
    assert test_plugins.PathsPlugin.enable_calls == 1
    assert test_plugins.PathsPlugin.disabled is False  # never enabled, so never disabled


async def test_one_shot_mode_does_not_retry(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), engines={"paths": {"not_ready_times": 1}})
    async with host.running(host.services(), retry=False):
        await anyio.sleep(0.1)
    assert host.engines["paths"].status is PluginStatus.RETRYING
    assert test_plugins.PathsPlugin.enable_calls == 1


async def test_enable_timeout_means_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang(self: object, services: object) -> None:
        await anyio.sleep(60)

    monkeypatch.setattr(test_plugins.PathsPlugin, "enable", hang)
    host = make_host(tmp_path, support("paths"), plugin_enable_timeout=0.1)
    with anyio.fail_after(5):
        async with host.running(host.services(), retry=False):
            pass
    engine = host.engines["paths"]
    assert engine.status is PluginStatus.RETRYING
    assert engine.error is not None and "longer than 0.1 s" in engine.error.message


async def test_disable_runs_at_shutdown_for_enabled_engines(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"))
    async with host.running(host.services(), retry=False):
        assert test_plugins.PathsPlugin.disabled is False
    assert test_plugins.PathsPlugin.disabled is True


async def test_selection_settings(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), support("recorder"), disable_plugins=["recorder"])
    assert host.records["recorder"].status is PluginStatus.DISABLED
    assert host.records["recorder"].loaded is False
    assert host.records["paths"].status is PluginStatus.PENDING

    only = make_host(tmp_path, support("paths"), support("recorder"), load_plugins=["recorder"])
    assert only.records["paths"].status is PluginStatus.DISABLED
    assert "paths" not in only.engines
    with pytest.raises(UnknownEngineError, match="loaded engines: none"):
        only.create_engine("paths", SessionInfo(id="s", name="s"))

    none = make_host(tmp_path, support("paths"), support("recorder"), load_plugins=[])
    assert {r.status for r in none.records.values()} == {PluginStatus.DISABLED}


async def test_create_engine_checks_declared_capabilities(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("liar"))
    async with host.running(host.services(), retry=False):
        with pytest.raises(EngineError, match="declares send_location but does not implement it"):
            host.create_engine("liar", SessionInfo(id="s", name="s"))


async def test_snapshot_shape_is_stable(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"), support("recorder"))
    async with host.running(host.services(), retry=False):
        snapshot = host.snapshot()
    assert snapshot["version"] == 1
    plugin = next(p for p in snapshot["plugins"] if p["name"] == "paths")
    assert set(plugin) == PLUGIN_FIELDS
    assert plugin["entryPoint"] == "tests.support.plugins:paths"
    assert plugin["distribution"] is None and plugin["builtin"] is False
    assert set(plugin["engines"][0]) == ENGINE_FIELDS
    assert plugin["engines"][0]["capabilities"] == ["send_text"]
    assert [p["name"] for p in host.snapshot(hook="message_sending")["plugins"]] == ["recorder"]


def test_core_never_imports_a_plugin() -> None:
    core = Path(__file__).parent.parent / "enginehost" / "core"
    offenders = []
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {name}" for name in names if name.startswith("enginehost.plugins")
            ]
    assert offenders == []
