"""``enginehost serve`` as a user runs it: a real process, real signals, real HTTP."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import Daemon, cli_env, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_health_and_stops_cleanly_on_signal(
    tmp_path: Path, daemons: list[Daemon], signum: int
) -> None:
    data_dir = tmp_path / "state"
    daemon = Daemon(cli_env(data_dir))
    daemons.append(daemon)
    daemon.start()
    assert data_dir.is_dir()
    # httptools parses requests (a dependency: h11 costs measurably more CPU per request).
    listening = next(line for line in daemon.lines if line["event"] == "http.listening")
    assert (listening["http"], listening["loop"]) == ("httptools", "asyncio")
    # The boot's objects are out of the collector's way, and young collections rarer.
    ready = next(line for line in daemon.lines if line["event"] == "daemon.ready")
    assert ready["gc_frozen"] > 10_000
    assert ready["gc_threshold"] == [50_000, 20, 20]
    health = httpx.get(f"{daemon.url}/api/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"{daemon.url}/api/health/ready", timeout=5).status_code == 200
    assert httpx.get(f"{daemon.url}/api/plugins", timeout=5).status_code == 401
    # First boot seeded an admin key into a file only its owner can read.
    key_file = data_dir / "admin-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    admin = {"X-API-Key": key_file.read_text().strip()}
    plugins = httpx.get(f"{daemon.url}/api/plugins", headers=admin, timeout=5).json()
    assert any(p["name"] == "sandbox" for p in plugins["plugins"])
    # The secret never reaches the log, only its prefix.
    assert admin["X-API-Key"] not in "".join(daemon.raw)
    assert admin["X-API-Key"][:12] in "".join(daemon.raw)

    code, seconds = daemon.stop(signum)
    assert code == 0
    assert seconds < 5
    events = [line["event"] for line in daemon.lines]
    assert "daemon.stopping" in events
    assert events[-1] == "daemon.stopped"


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env=cli_env(tmp_path / "d"), timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: another process is using it" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_refuses_to_start(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "d", ENGINEHOST_SHUTDOWN_TIMEOUT="-1")
    result = run_cli("serve", env=env, timeout=30)
    assert result.returncode == 2
    assert "ENGINEHOST_SHUTDOWN_TIMEOUT: Input should be greater than 0" in result.stderr


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("serve", "--port", "0", env=cli_env(blocker / "data"), timeout=30)
    assert result.returncode == 1
    assert "cannot create the data directory" in result.stderr
