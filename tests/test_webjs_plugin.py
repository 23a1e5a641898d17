"""The webjs_bridge plugin without a browser: config, close codes, enable failures
that name their fix, the operator's paths kept when enable failed, and doctor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from enginehost import DisconnectClassification, DisconnectedEvent, ReadyEvent, SessionInfo
from enginehost.core.plugins import PluginStatus
from enginehost.plugins.webjs_bridge import WebjsConfig, WebjsEngine, WebjsPlugin
from enginehost.plugins.webjs_bridge.disconnects import classify
from tests.conftest import entry_point, make_host
from tests.support.daemon import cli_env, run_cli

WEBJS = entry_point("webjs_bridge", "enginehost.plugins.webjs_bridge")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("LOGOUT", DisconnectClassification.LOGGED_OUT),
        ("UNPAIRED", DisconnectClassification.LOGGED_OUT),
        ("AUTH_FAILURE", DisconnectClassification.TERMINAL),
        ("CONFLICT", DisconnectClassification.TERMINAL),
        ("TOS_BLOCK", DisconnectClassification.TERMINAL),
        ("SMB_TOS_BLOCK", DisconnectClassification.TERMINAL),
        ("NAVIGATION", DisconnectClassification.TRANSIENT),
        ("INIT_FAILED", DisconnectClassification.TRANSIENT),
        ("INIT_TIMEOUT", DisconnectClassification.TRANSIENT),
        ("SOMETHING_NEW", DisconnectClassification.TRANSIENT),
        (None, DisconnectClassification.TRANSIENT),
    ],
)
def test_close_codes_map_to_the_hosts_classifications(
    code: str | None, expected: DisconnectClassification
) -> None:
    assert classify(code) is expected


def test_config_from_environment_strings() -> None:
    config = WebjsConfig.model_validate(
        {
            "chromium_args": "--lang=en-US --window-size='800,600'",
            "headless": "false",
            "session_data_path": "",
            "sessions_per_sidecar": "4",
        }
    )
    assert config.chromium_args == ["--lang=en-US", "--window-size=800,600"]
    assert config.headless is False
    assert config.session_data_path is None
    assert config.sessions_per_sidecar == 4
    assert config.web_version == "2.3000.1017054665"


@pytest.mark.parametrize(
    "blob",
    [{"web_version": "latest"}, {"init_timeout_ms": 10}, {"executablepath": "/typo"}],
)
def test_bad_config_is_refused(blob: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebjsConfig.model_validate(blob)


def test_events_and_close_reasons(tmp_path: Path) -> None:
    engine = WebjsPlugin({}, data_dir=tmp_path).create_engine(SessionInfo(id="s-1", name="one"))
    assert engine.convert("open", {"me": {"id": "15550001111@c.us", "name": "Bot"}}) == (
        ReadyEvent(own_id="15550001111@c.us", push_name="Bot")
    )
    assert engine.convert("close", {"code": "LOGOUT", "reason": "unlinked"}) == (
        DisconnectedEvent(
            DisconnectClassification.LOGGED_OUT, engine_code="LOGOUT", reason="unlinked (LOGOUT)"
        )
    )
    # The browser's process events are the sidecar process's business, not the host's.
    assert engine.convert("process", {"pid": 1234, "state": "started"}) is None
    assert engine.profile_dir == tmp_path / "profiles" / "session-s-1"


@pytest.mark.anyio
async def test_a_missing_chromium_leaves_the_plugin_retrying_but_the_operators_paths_kept(
    tmp_path: Path,
) -> None:
    profiles = tmp_path / "operator-profiles"
    host = make_host(
        tmp_path,
        WEBJS,
        engines={
            "webjs": {
                "executable_path": "/nonexistent/chromium",
                "session_data_path": str(profiles),
                "chromium_args": ["--lang=de"],
            }
        },
    )
    async with host.running(host.services(), retry=False):
        record = host.engines["webjs"]
        assert record.status is PluginStatus.RETRYING
        assert record.error is not None
        assert "Chromium was not found" in record.error.message
        assert "apt-get install chromium" in record.error.message
        plugin = host.engine_plugin("webjs")
        assert isinstance(plugin, WebjsPlugin)
        engine = host.create_engine("webjs", SessionInfo(id="s-1", name="one"))
        assert isinstance(engine, WebjsEngine)
        assert engine.start_params() == {"dataPath": str(profiles)}
        params = plugin.init_params()
        assert params["executablePath"] == "/nonexistent/chromium"
        assert params["chromiumArgs"] == ["--lang=de"]


@pytest.mark.slow
def test_bridges_doctor_checks_chromium(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "ENGINEHOST_ENGINES__WEBJS__EXECUTABLE_PATH": "/nonexistent/x"}
    doctor = run_cli("bridges", "doctor", "webjs", "--json", env=env)
    assert doctor.returncode == 1
    [webjs] = json.loads(doctor.stdout)["bridges"]
    assert webjs["library"] == "whatsapp-web.js" and webjs["libraryVersion"] == "1.34.7"
    assert any("Chromium was not found" in problem for problem in webjs["problems"])
