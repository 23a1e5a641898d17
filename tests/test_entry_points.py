"""End-to-end entry-point discovery, with real installs of real plugin packages.

One temporary virtual environment is built per session. It sees the running
interpreter's packages (enginehost itself, its dependencies, hatchling, pip) through a
``.pth`` file, and gets three plugin distributions installed editable into it, without
network or build isolation:

* ``enginehost-echo`` (``examples/enginehost-echo``), the copyable example engine;
* ``enginehost-broken-import`` (``tests/fixtures/plugins/broken-import``), whose module
  raises at import;
* ``enginehost-failing-enable`` (``tests/fixtures/plugins/failing-enable``), whose engine
  plugin raises in ``enable``.

The tests then run ``python -m enginehost plugins list`` in that environment, as an
operator would, and check what it reports; and one in-process check confirms that a
plugin whose enable failed creates engines from the operator's construction config.

The packages are copied into the temporary directory before installing, so the source
tree is never written to (no caches, no build artefacts) and parallel runs cannot clash.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.snapshot import ENGINE_FIELDS, ERROR_FIELDS, PLUGIN_FIELDS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = {
    "enginehost-echo": REPO_ROOT / "examples" / "enginehost-echo",
    "enginehost-broken-import": REPO_ROOT / "tests" / "fixtures" / "plugins" / "broken-import",
    "enginehost-failing-enable": REPO_ROOT / "tests" / "fixtures" / "plugins" / "failing-enable",
}

# Every subprocess is bounded; generous so a loaded CI machine does not flake.
VENV_TIMEOUT = 180.0
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 90.0

OUR_PLUGINS = {"broken", "echo", "failing", "sandbox"}

# Variables that would make the child interpreter see something other than the temp venv.
_UNINHERITED = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV"}


@dataclass(frozen=True)
class PluginVenv:
    """The session's temporary environment with the plugin packages installed."""

    python: Path
    """The temp venv's interpreter."""


def _run(
    command: list[str], *, timeout: float, env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` bounded by ``timeout``; the output is kept for assertion messages."""
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env),
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"timed out after {timeout}s: {' '.join(command)}\n"
            f"--- stdout\n{_text(exc.stdout)}\n--- stderr\n{_text(exc.stderr)}"
        )


def _text(output: str | bytes | None) -> str:
    """Subprocess output as text (a timeout may leave it as bytes, or as nothing)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command: {' '.join(map(str, result.args))}\nexit: {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """The inherited environment without any ``ENGINEHOST_*`` or interpreter overrides."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ENGINEHOST_") and key not in _UNINHERITED
    }
    env.update(extra)
    return env


def _base_python() -> str:
    """The interpreter the running one (possibly a venv) was created from."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"python{version}", "python3"):
        path = Path(sys.base_prefix) / "bin" / candidate
        if path.is_file():
            return str(path)
    return sys.executable


def _site_packages(venv: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


@pytest.fixture(scope="session")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    """Build the temp venv and install the three plugin packages editable into it."""
    if sys.platform == "win32":  # pragma: no cover - the host targets Linux
        pytest.skip("the temp venv layout assumed here is POSIX")
    try:
        importlib.metadata.distribution("enginehost")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("enginehost is not installed in the running environment")
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the plugin packages' build backend) is not installed")

    root = tmp_path_factory.mktemp("entry-points")
    venv = root / "venv"
    env = _clean_env(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")

    # pip comes through the .pth too when the running environment has it: skipping
    # ensurepip saves seconds. Without it, the new venv gets its own pip.
    own_pip = importlib.util.find_spec("pip") is None
    command = [_base_python(), "-m", "venv", *([] if own_pip else ["--without-pip"]), str(venv)]
    result = _run(command, timeout=VENV_TIMEOUT, env=env, cwd=root)
    assert result.returncode == 0, _describe(result)

    # Make the running interpreter's packages visible. ``site.addsitedir`` (rather than a
    # bare path line) also processes the .pth files found there, such as the one of an
    # editable enginehost install.
    lines = [f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()]
    (_site_packages(venv) / "_enginehost_parent_env.pth").write_text("\n".join(lines) + "\n")

    sources = root / "src"
    copies = []
    for name, package in PLUGIN_PACKAGES.items():
        copy = sources / name
        shutil.copytree(
            package,
            copy,
            ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info"),
        )
        copies.append(copy)

    python = venv / "bin" / "python"
    command = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    for copy in copies:
        command += ["-e", str(copy)]
    result = _run(command, timeout=INSTALL_TIMEOUT, env=env, cwd=root)
    assert result.returncode == 0, _describe(result)

    return PluginVenv(python=python)


def _plugins_list(
    plugin_venv: PluginVenv, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m enginehost plugins list <args>`` in the temp venv, with a clean env."""
    run_env = _clean_env(
        ENGINEHOST_DATA_DIR=str(tmp_path / "data"), ENGINEHOST_LOG_FORMAT="json", **env
    )
    return _run(
        [str(plugin_venv.python), "-m", "enginehost", "plugins", "list", *args],
        timeout=RUN_TIMEOUT,
        env=run_env,
        cwd=tmp_path,
    )


def _snapshot(plugin_venv: PluginVenv, tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    """The parsed ``plugins list --json`` output, after checking exit code and envelope."""
    result = _plugins_list(plugin_venv, tmp_path, "--json", *args, **env)
    assert result.returncode == 0, _describe(result)
    try:
        snapshot = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON document ({exc})\n{_describe(result)}")
    assert isinstance(snapshot, dict), snapshot
    assert snapshot["version"] == 1
    assert isinstance(snapshot["plugins"], list)
    return snapshot


def _by_name(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    plugins = {plugin["name"]: plugin for plugin in snapshot["plugins"]}
    assert len(plugins) == len(snapshot["plugins"]), "plugin names must be unique"
    return plugins


def _check_error(error: Any, *, stage: str, message: str, type_: str) -> None:
    assert isinstance(error, dict), error
    assert set(error) >= ERROR_FIELDS
    assert error["stage"] == stage
    assert message in error["message"]
    assert error["type"] == type_
    assert datetime.fromisoformat(error["at"]).tzinfo is not None


def test_plugins_list_json_reports_every_installed_plugin(
    plugin_venv: PluginVenv, tmp_path: Path
) -> None:
    snapshot = _snapshot(plugin_venv, tmp_path)
    plugins = _by_name(snapshot)
    assert set(plugins) >= OUR_PLUGINS
    assert [p["name"] for p in snapshot["plugins"]] == sorted(plugins), "sorted by name"
    for plugin in plugins.values():
        assert set(plugin) >= PLUGIN_FIELDS, plugin
        for engine in plugin["engines"]:
            assert set(engine) >= ENGINE_FIELDS, engine

    broken = plugins["broken"]
    assert broken["status"] == "failed"
    assert broken["distribution"] == "enginehost-broken-import"
    assert broken["version"] == "0.0.1"
    assert broken["entryPoint"] == "enginehost_broken_import"
    assert broken["builtin"] is False
    assert broken["kind"] == "unknown"
    assert broken["hooks"] == []
    assert broken["engines"] == []
    _check_error(broken["error"], stage="import", message="broken on purpose", type_="RuntimeError")

    echo = plugins["echo"]
    assert echo["status"] == "enabled"
    assert echo["kind"] == "engine"
    assert echo["distribution"] == "enginehost-echo"
    assert echo["version"] == "0.1.0"
    assert echo["entryPoint"] == "enginehost_echo"
    assert echo["builtin"] is False
    assert echo["error"] is None
    assert echo["hookErrors"] == 0
    assert {"register_engines", "host_started"} <= set(echo["hooks"])
    assert echo["engines"] == [
        {
            "name": "echo",
            "class": "enginehost_echo.engine.EchoPlugin",
            "status": "enabled",
            "error": None,
            "capabilities": ["send_text"],
            "retryAttempt": 0,
        }
    ]

    sandbox = plugins["sandbox"]
    assert sandbox["status"] == "enabled"
    assert sandbox["builtin"] is True
    assert sandbox["distribution"] == "enginehost"

    failing = plugins["failing"]
    assert failing["status"] == "failed"
    assert failing["kind"] == "engine"
    assert failing["distribution"] == "enginehost-failing-enable"
    assert failing["version"] == "0.0.2"
    _check_error(
        failing["error"], stage="enable", message="enable failed on purpose", type_="RuntimeError"
    )
    [engine] = failing["engines"]
    assert engine["name"] == "failing"
    assert engine["status"] == "failed"
    assert engine["error"]["stage"] == "enable"


def test_disable_plugins_marks_a_plugin_disabled(plugin_venv: PluginVenv, tmp_path: Path) -> None:
    plugins = _by_name(_snapshot(plugin_venv, tmp_path, ENGINEHOST_DISABLE_PLUGINS="broken"))
    assert plugins["broken"]["status"] == "disabled"
    assert plugins["broken"]["error"] is None
    assert plugins["broken"]["distribution"] == "enginehost-broken-import"
    assert plugins["echo"]["status"] == "enabled"
    assert plugins["sandbox"]["status"] == "enabled"
    assert plugins["failing"]["status"] == "failed"


def test_load_plugins_selects_only_the_named_plugin(
    plugin_venv: PluginVenv, tmp_path: Path
) -> None:
    plugins = _by_name(_snapshot(plugin_venv, tmp_path, ENGINEHOST_LOAD_PLUGINS="echo"))
    assert set(plugins) >= OUR_PLUGINS
    assert plugins["echo"]["status"] == "enabled"
    others = {name: p["status"] for name, p in plugins.items() if name != "echo"}
    assert others == dict.fromkeys(others, "disabled")


def test_empty_load_plugins_disables_every_plugin(plugin_venv: PluginVenv, tmp_path: Path) -> None:
    plugins = _by_name(_snapshot(plugin_venv, tmp_path, ENGINEHOST_LOAD_PLUGINS=""))
    assert set(plugins) >= OUR_PLUGINS
    statuses = {name: p["status"] for name, p in plugins.items()}
    assert statuses == dict.fromkeys(statuses, "disabled")


def test_hook_filter_lists_only_implementers(plugin_venv: PluginVenv, tmp_path: Path) -> None:
    snapshot = _snapshot(plugin_venv, tmp_path, "--hook", "host_started")
    assert [plugin["name"] for plugin in snapshot["plugins"]] == ["echo"]


def test_plugins_list_table(plugin_venv: PluginVenv, tmp_path: Path) -> None:
    result = _plugins_list(plugin_venv, tmp_path)
    assert result.returncode == 0, _describe(result)
    for name in OUR_PLUGINS:
        assert name in result.stdout, _describe(result)
    assert "failed" in result.stdout, _describe(result)


# Runs inside the temp venv: a host that loads every installed plugin, then an engine
# from the plugin whose enable failed. Logs go to stderr so stdout is the JSON report.
_FAILED_ENABLE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import anyio

    from enginehost import SessionInfo
    from enginehost.core.logging import configure_logging
    from enginehost.core.plugins import PluginHost
    from enginehost.core.settings import load_settings


    async def main() -> None:
        configure_logging("info", "json", sys.stderr)
        host = PluginHost(load_settings(), data_dir=Path(sys.argv[1]))
        host.load()
        async with host.running(host.services(), retry=False):
            record = host.engines["failing"]
            engine = host.create_engine("failing", SessionInfo(id="s1", name="s1"))
            report = {
                "status": record.status.value,
                "stage": record.error.stage if record.error else None,
                "paths": engine.paths,
            }
        print(json.dumps(report))


    anyio.run(main)
    """
)


def test_failed_enable_creates_engines_from_the_operators_config(
    plugin_venv: PluginVenv, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    operator = {
        "session_data_path": str(tmp_path / "operator-session-data"),
        "executable_path": str(tmp_path / "operator-bin" / "chromium"),
        "auth_dir": str(tmp_path / "operator-auth"),
    }
    env = _clean_env(
        ENGINEHOST_DATA_DIR=str(data_dir),
        ENGINEHOST_LOG_FORMAT="json",
        **{f"ENGINEHOST_ENGINES__FAILING__{key.upper()}": value for key, value in operator.items()},
    )
    result = _run(
        [str(plugin_venv.python), "-c", _FAILED_ENABLE_SCRIPT, str(data_dir)],
        timeout=RUN_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, _describe(result)
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert report["stage"] == "enable"
    # Not the refinement the failed enable proposed, not defaults: the operator's paths.
    assert report["paths"] == operator
