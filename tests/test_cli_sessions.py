"""``enginehost sessions ...`` against a real daemon, as separate processes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.support.daemon import Daemon, cli_env, run_cli

pytestmark = pytest.mark.slow

BLOCKS = {"\u2580", "\u2584", "\u2588"}
# Long enough that `create --start`, `list` and the start of `qr` (a process each) happen
# before the sandbox links the session by itself.
AUTO_SCAN_SECONDS = "5"


@dataclass
class Host:
    daemon: Daemon
    env: dict[str, str]
    data_dir: Path

    def cli(self, *args: str, url: str | None = None, timeout: float = 60) -> CompletedProcess[str]:
        return run_cli(
            "sessions", *args, "--url", url or self.daemon.url, env=self.env, timeout=timeout
        )


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    data_dir = tmp_path_factory.mktemp("cli-sessions") / "data"
    env = cli_env(
        data_dir,
        ENGINEHOST_DEFAULT_ENGINE="sandbox",
        ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS=AUTO_SCAN_SECONDS,
        ENGINEHOST_ENGINES__SANDBOX__QR_ROTATE_SECONDS="3",
    )
    daemon = Daemon(env)
    try:
        daemon.start()
        yield Host(daemon=daemon, env=env, data_dir=data_dir)
    finally:
        daemon.kill()


def _ok(result: CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_create_list_link_stop_delete(host: Host) -> None:
    # No --key: the CLI reads the daemon's first-boot admin key from the data dir.
    created = _ok(host.cli("create", "alpha", "--start"))
    assert "created session 'alpha'" in created and "sandbox" in created

    listed = _ok(host.cli("list"))
    header, row = listed.splitlines()
    assert header.split() == ["NAME", "ENGINE", "STATUS", "DESIRED", "PHONE", "ID"]
    assert row.split()[:2] == ["alpha", "sandbox"] and "running" in row.split()

    linked = host.cli("qr", "alpha", "--timeout", "30")
    output = _ok(linked)
    assert BLOCKS & set(output), output
    assert "Scan with WhatsApp" in output
    assert output.rstrip().splitlines()[-1] == "linked as 15550000001 (Sandbox)"

    # Linked already: qr says so at once.
    assert "linked as 15550000001" in _ok(host.cli("qr", "alpha"))

    as_json = json.loads(_ok(host.cli("list", "--json")))
    assert [(s["name"], s["status"], s["phone"]) for s in as_json] == [
        ("alpha", "ready", "15550000001")
    ]

    stopped = _ok(host.cli("stop", "alpha"))
    assert stopped.strip() == "session 'alpha': disconnected (desired stopped)"
    not_running = host.cli("qr", "alpha")
    assert not_running.returncode == 1
    assert "is not running" in not_running.stderr
    assert "enginehost sessions start alpha" in not_running.stderr

    started = _ok(host.cli("start", "alpha"))
    assert "(desired running)" in started
    assert "disconnected (desired stopped)" in _ok(host.cli("stop", "alpha", "--force"))
    assert "desired stopped" in _ok(host.cli("logout", "alpha"))

    for _ in range(2):  # deleting twice is fine
        assert _ok(host.cli("delete", "alpha")).strip() == "session 'alpha' deleted"
    assert _ok(host.cli("list")).strip() == "no sessions"


def test_qr_gives_up_after_the_timeout(host: Host) -> None:
    _ok(host.cli("create", "slow", "--start"))
    try:
        result = host.cli("qr", "slow", "--timeout", "1")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "did not link within 1 s" in result.stderr
    finally:
        _ok(host.cli("delete", "slow"))


def test_errors_print_the_api_message(host: Host) -> None:
    missing = host.cli("start", "ghost")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "enginehost: session 'ghost' not found"
    assert missing.stdout == ""

    unknown_engine = host.cli("create", "beta", "--engine", "nope")
    assert unknown_engine.returncode == 2  # invalid input (422)
    assert "unknown engine 'nope'; loaded engines: baileys, sandbox, webjs" in unknown_engine.stderr

    _ok(host.cli("create", "gamma"))
    try:
        duplicate = host.cli("create", "gamma")
        assert duplicate.returncode == 1
        assert "already exists" in duplicate.stderr

        viewer = run_cli("keys", "create", "--role", "viewer", env=host.env)
        assert viewer.returncode == 0, viewer.stderr
        forbidden = run_cli(
            "sessions",
            "stop",
            "gamma",
            "--url",
            host.daemon.url,
            env={**host.env, "ENGINEHOST_API_KEY": viewer.stdout.strip()},
        )
        assert forbidden.returncode == 1
        assert "needs role operator" in forbidden.stderr
    finally:
        _ok(host.cli("delete", "gamma"))

    wrong_key = run_cli(
        "sessions", "list", "--url", host.daemon.url, "--key", "ehk_" + "x" * 43, env=host.env
    )
    assert wrong_key.returncode == 1
    assert "invalid API key" in wrong_key.stderr


def test_an_unreachable_daemon_is_a_clear_error(host: Host) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = host.cli("list", url=f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in result.stderr
    assert "enginehost serve" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path, host: Host) -> None:
    bad_url = host.cli("list", url="localhost:2785")
    assert bad_url.returncode == 2
    assert "--url 'localhost:2785'" in bad_url.stderr

    no_key = run_cli(
        "sessions", "list", "--url", host.daemon.url, env=cli_env(tmp_path / "elsewhere")
    )
    assert no_key.returncode == 2
    assert "no API key" in no_key.stderr and "admin-api-key" in no_key.stderr
