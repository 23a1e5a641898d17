"""The ``enginehost`` CLI as a user runs it (a real process each time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enginehost import __version__
from tests.support.daemon import cli_env, run_cli

pytestmark = pytest.mark.slow


def test_version_and_help(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    version = run_cli("--version", env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"enginehost {__version__}"
    help_text = run_cli("--help", env=env)
    assert help_text.returncode == 0
    for command in ("serve", "plugins", "config"):
        assert command in help_text.stdout
    serve_help = run_cli("serve", "--help", env={**env, "COLUMNS": "200"})
    for variable in ("ENGINEHOST_HOST", "ENGINEHOST_PORT", "ENGINEHOST_DATA_DIR"):
        assert variable in serve_help.stdout
    plugins_help = run_cli("plugins", "list", "--help", env=env)
    assert "--json" in plugins_help.stdout and "--hook" in plugins_help.stdout


def test_plugins_list_table_and_json(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    table = run_cli("plugins", "list", env=env)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "DISTRIBUTION", "VERSION", "KIND", "HOOKS", "STATUS", "ERROR"]
    sandbox = next(row for row in rows if row.startswith("sandbox "))
    assert "enabled" in sandbox and "engine (sandbox)" in sandbox

    as_json = run_cli("plugins", "list", "--json", env=env)
    assert as_json.returncode == 0
    snapshot = json.loads(as_json.stdout)
    assert snapshot["version"] == 1
    [plugin] = [p for p in snapshot["plugins"] if p["name"] == "sandbox"]
    assert plugin["status"] == "enabled" and plugin["builtin"] is True
    assert plugin["engines"][0]["name"] == "sandbox"
    # Listing must not leave files behind in the data directory.
    assert not (tmp_path / "data").exists()


def test_plugins_list_filters_and_rejects_unknown_hooks(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    filtered = run_cli("plugins", "list", "--json", "--hook", "message_sending", env=env)
    assert filtered.returncode == 0
    assert all("message_sending" in p["hooks"] for p in json.loads(filtered.stdout)["plugins"])
    unknown = run_cli("plugins", "list", "--hook", "nope", env=env)
    assert unknown.returncode == 2
    assert "unknown hook 'nope'; known hooks:" in unknown.stderr


def test_plugins_list_shows_a_plugin_whose_enable_failed(tmp_path: Path) -> None:
    env = cli_env(tmp_path, ENGINEHOST_ENGINES__SANDBOX__FAIL_ENABLE="no phone today")
    result = run_cli("plugins", "list", "--json", env=env)
    assert result.returncode == 0
    [plugin] = [p for p in json.loads(result.stdout)["plugins"] if p["name"] == "sandbox"]
    assert plugin["status"] == "failed"
    assert plugin["error"]["stage"] == "enable"
    assert "no phone today" in plugin["error"]["message"]


def test_disabled_plugins_are_listed_not_loaded(tmp_path: Path) -> None:
    env = cli_env(tmp_path, ENGINEHOST_LOAD_PLUGINS="")
    result = run_cli("plugins", "list", env=env)
    assert result.returncode == 0
    assert "disabled" in next(r for r in result.stdout.splitlines() if r.startswith("sandbox"))


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = cli_env(tmp_path, ENGINEHOST_ENGINES__SANDBOX__PROXY_PASSWORD="hunter2")
    result = run_cli("config", "show", env=env)
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["engines"]["sandbox"]["proxy_password"] == "**********"
    assert "hunter2" not in result.stdout
    assert shown["port"] == 2785


def test_bad_settings_exit_2_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli("plugins", "list", env=cli_env(tmp_path, ENGINEHOST_PORT="http"))
    assert result.returncode == 2
    assert "ENGINEHOST_PORT: Input should be a valid integer" in result.stderr
