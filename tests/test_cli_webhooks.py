"""``enginehost webhooks ...`` against a real daemon, as separate processes.

The daemon is a real ``enginehost serve``; test deliveries and dead letters are its own
dispatcher's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.support.daemon import Daemon, cli_env
from tests.support.receiver import Receiver, receiver

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SECRET = "cli-secret-never-printed-0123456789"
HEADER_VALUE = "Bearer cli-header-never-printed"
NOWHERE = "http://127.0.0.1:9/hook"  # the discard port: nothing listens there


# ------------------------------------------------------------------------------ setup


@dataclass
class Host:
    daemon: Daemon
    env: dict[str, str]

    def cli(self, *args: str, stdin: str | None = None, **env: str) -> CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enginehost", *args],
            env={**self.env, "ENGINEHOST_URL": self.daemon.url, **env},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=60,
        )

    def webhooks(self, *args: str, stdin: str | None = None, **env: str) -> CompletedProcess[str]:
        return self.cli("webhooks", *args, stdin=stdin, **env)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    data_dir = tmp_path_factory.mktemp("cli-webhooks") / "data"
    env = cli_env(
        data_dir,
        ENGINEHOST_DEFAULT_ENGINE="sandbox",
        ENGINEHOST_WEBHOOK_ALLOWED_HOSTS="127.0.0.0/8,localhost",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    daemon = Daemon(env)
    try:
        daemon.start()
        host = Host(daemon=daemon, env=env)
        assert host.cli("sessions", "create", "alpha").returncode == 0
        yield host
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


def _ok(result: CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def _never_shown(*results: CompletedProcess[str]) -> None:
    for result in results:
        for text in (result.stdout, result.stderr):
            assert SECRET not in text and HEADER_VALUE not in text


def _create(host: Host, *args: str, **env: str) -> dict[str, Any]:
    created: dict[str, Any] = json.loads(_ok(host.webhooks("create", *args, "--json", **env)))
    return created


# ------------------------------------------------------------------------------ tests


def test_create_list_show_delete(host: Host, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    created_run = host.webhooks(
        "create",
        "--session",
        "alpha",
        "--url",
        NOWHERE,
        "--event",
        "message.received",
        "-e",
        "session.status",
        "--secret-file",
        str(secret_file),
        "--header",
        f"Authorization: {HEADER_VALUE}",
        "-H",
        "X-Trace:1",
        "--chat",
        "1@g.us",
        "--direction",
        "incoming",
        "--not-from-me",
        "--type",
        "text",
        "--type",
        "image",
        "--group",
        "--retry-count",
        "2",
        "--inactive",
        "--json",
    )
    created = json.loads(_ok(created_run))
    assert created["url"] == NOWHERE
    assert created["events"] == ["message.received", "session.status"]
    assert created["filters"] == {
        "chatIds": ["1@g.us"],
        "direction": "incoming",
        "fromMe": False,
        "messageTypes": ["text", "image"],
        "isGroup": True,
    }
    assert (created["retryCount"], created["active"], created["hasSecret"]) == (2, False, True)
    assert created["headerNames"] == ["Authorization", "X-Trace"]
    webhook_id = created["id"]

    listed = _ok(host.webhooks("list"))
    header, *rows = listed.splitlines()
    assert header.split() == ["ID", "SESSION", "ACTIVE", "EVENTS", "URL"]
    assert [row.split() for row in rows] == [
        [webhook_id, "alpha", "no", "message.received,session.status", NOWHERE]
    ]
    as_json = json.loads(_ok(host.webhooks("list", "--session", "alpha", "--json")))
    assert as_json == [created]

    shown = _ok(host.webhooks("show", webhook_id))
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in shown.splitlines())
    assert lines["id"] == webhook_id
    assert (lines["session"], lines["active"], lines["retries"]) == ("alpha", "no", "2")
    assert (lines["secret"], lines["headers"]) == ("set", "Authorization, X-Trace")
    assert lines["retry delays"] == "the daemon's settings"
    assert json.loads(lines["filters"]) == created["filters"]
    assert json.loads(_ok(host.webhooks("show", webhook_id, "--json"))) == created

    deleted = host.webhooks("delete", webhook_id)
    assert _ok(deleted).strip() == f"webhook {webhook_id} deleted"
    gone = host.webhooks("show", webhook_id)
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"enginehost: no webhook {webhook_id!r}"
    assert _ok(host.webhooks("list")).strip() == "no webhooks"
    _never_shown(created_run, deleted, gone)


def test_the_secret_comes_from_the_environment_or_stdin(host: Host) -> None:
    from_env = _create(
        host,
        "--global",
        "--url",
        NOWHERE,
        "-e",
        "*",
        ENGINEHOST_WEBHOOK_SECRET=SECRET,
    )
    from_stdin_run = host.webhooks(
        "create", "--global", "--url", NOWHERE, "-e", "*", "--secret-file", "-", stdin=SECRET
    )
    unsigned = _create(host, "--global", "--url", NOWHERE, "-e", "*")
    try:
        assert from_env["hasSecret"] is True and from_env["sessionId"] is None
        assert "(signed)" in _ok(from_stdin_run)
        assert unsigned["hasSecret"] is False
        listed = _ok(host.webhooks("list"))
        assert listed.count("(global)") == 3
        _never_shown(from_stdin_run, host.webhooks("list", "--json"))
    finally:
        for hook in json.loads(_ok(host.webhooks("list", "--json"))):
            _ok(host.webhooks("delete", hook["id"]))

    # There is no option that takes the secret itself.
    refused = host.webhooks("create", "--global", "--url", NOWHERE, "-e", "*", "--secret", SECRET)
    assert refused.returncode == 2
    assert "No such option" in refused.stderr
    help_text = _ok(host.webhooks("create", "--help", COLUMNS="400"))
    assert "There is no option taking the secret itself" in help_text


def test_usage_and_validation_errors(host: Host, tmp_path: Path) -> None:
    def fails(code: int, words: str, *args: str) -> None:
        result = host.webhooks("create", *args)
        assert result.returncode == code, (result.stdout, result.stderr)
        assert words in result.stderr, result.stderr
        assert result.stdout == ""

    target = ("--url", NOWHERE, "-e", "*")
    fails(2, "give either --session SESSION or --global", *target)
    fails(2, "give either --session SESSION or --global", "--session", "alpha", "--global", *target)
    fails(2, "give it as 'Name: value'", "--global", *target, "--header", "NoColon")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    fails(2, "is empty", "--global", *target, "--secret-file", str(empty))
    fails(2, "cannot read it", "--global", *target, "--secret-file", str(tmp_path / "missing"))
    # The daemon's 422s exit 2 with its message; other refusals exit 1.
    fails(
        2,
        "unknown event 'message.recieved'",
        "--global",
        "--url",
        NOWHERE,
        "-e",
        "message.recieved",
    )
    fails(2, "resolves to 10.1.2.3", "--global", "--url", "http://10.1.2.3/", "-e", "*")
    fails(
        2, "put credentials in `headers`", "--global", "--url", "http://u:p@127.0.0.1/", "-e", "*"
    )
    fails(2, "set by the host", "--global", *target, "-H", "Host: example.com")
    fails(1, "session 'ghost' not found", "--session", "ghost", *target)
    assert _ok(host.webhooks("list")).strip() == "no webhooks"


def test_test_deliveries(host: Host, hook: Receiver) -> None:
    good = _create(host, "--session", "alpha", "--url", hook.url, "-e", "*")
    bad = _create(host, "--session", "alpha", "--url", NOWHERE, "-e", "*")
    try:
        delivered = _ok(host.webhooks("test", good["id"]))
        assert delivered.startswith("delivered: HTTP 200 in "), delivered
        (got,) = [r for r in hook.requests if r.json()["data"].get("webhookId") == good["id"]]
        assert got.json()["event"] == "webhook.test"

        failed = host.webhooks("test", bad["id"])
        assert failed.returncode == 1, (failed.stdout, failed.stderr)
        assert failed.stdout.startswith("not delivered: "), failed.stdout
        assert "a real delivery would be retried" in failed.stdout

        as_json = host.webhooks("test", bad["id"], "--json")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["delivered"] is False
    finally:
        for hook in (good, bad):
            _ok(host.webhooks("delete", hook["id"]))


def test_dead_letters_and_redrive(host: Host) -> None:
    assert _ok(host.webhooks("dead-letters")).strip() == "no dead letters"
    page = json.loads(_ok(host.webhooks("dead-letters", "--webhook", "w1", "--json")))
    assert page == {"deadLetters": [], "total": 0, "limit": 50, "offset": 0}
    assert _ok(host.webhooks("redrive", "--all")).strip() == "re-drove 0 dead letters"
    assert _ok(host.webhooks("redrive", "--id", "a", "--id", "b")).strip() == (
        "re-drove 0 dead letters"
    )
    for args in ((), ("--all", "--id", "a"), ("--all", "--webhook", "w1")):
        result = host.webhooks("redrive", *args)
        assert result.returncode == 2
        assert "give --id ID (repeatable) and/or --webhook ID, or --all" in result.stderr

    viewer = host.cli("keys", "create", "--role", "operator")
    assert viewer.returncode == 0, viewer.stderr
    refused = host.webhooks("dead-letters", ENGINEHOST_API_KEY=viewer.stdout.strip())
    assert refused.returncode == 1
    assert "needs role admin" in refused.stderr
