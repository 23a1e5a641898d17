"""The whatsapp-web.js sidecar at its protocol boundary (docs/sidecar-protocol.md).

Each test starts a real `node --expose-gc sidecar.js` that drives real Chromium. WhatsApp
Web is replaced by the stub pages in tests/webjs/ (served by the library's own local,
strict web-version cache): `stub-qr` gets as far as a QR, `stub-no-qr` never does.
Everything after the QR needs WhatsApp Web's private modules and is tested elsewhere,
against a scripted sidecar. Chromium resolves no host name (`--host-resolver-rules`), so
nothing leaves the machine even where there is a network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from tests.support.procs import children, group_members
from tests.test_baileys_sidecar import Sidecar, SidecarError

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SIDECAR_DIR = Path(__file__).resolve().parents[1] / "enginehost/plugins/webjs_bridge/sidecar"
STUB_DIR = Path(__file__).resolve().parent / "webjs"
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"
TIMEOUT = 10.0
"""Bound for a request or an event; a Chromium start takes about 1 s here."""


def _require_sidecar() -> tuple[str, str]:
    """node and chromium; skip without them or node_modules, except in CI (then fail)."""
    node = shutil.which("node")
    chromium = shutil.which("chromium")
    missing = None
    if node is None:
        missing = "node is not on PATH"
    elif not (SIDECAR_DIR / "node_modules" / "whatsapp-web.js" / "package.json").is_file():
        missing = (
            f"run `PUPPETEER_SKIP_DOWNLOAD=1 npm ci` in {SIDECAR_DIR} (node_modules is missing)"
        )
    elif chromium is None:
        missing = "chromium is not on PATH (apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None and chromium is not None
    return node, chromium


def _pinned_version() -> str:
    package = json.loads((SIDECAR_DIR / "package.json").read_text())
    return str(package["dependencies"]["whatsapp-web.js"])


# ----------------------------------------------------------------------------- processes


def dead_pid() -> int:
    """A PID that named a process a moment ago and names none now."""
    probe = subprocess.Popen(["true"])
    probe.wait()
    return probe.pid


def init_params(chromium: str, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "executablePath": chromium,
        "chromiumArgs": [OFFLINE],
        "headless": True,
        "webVersion": "stub-qr",
        "webVersionCacheDir": str(STUB_DIR),
        "initTimeoutMs": 20_000,
        "authTimeoutMs": 10_000,
        "logLevel": "debug",
        "maxLineBytes": 1024 * 1024,
    }
    params.update(overrides)
    return params


def start_params(tmp_path: Path, session: str = "a") -> dict[str, Any]:
    return {"session": session, "dataPath": str(tmp_path / "data")}


def profile(tmp_path: Path, session: str = "a") -> Path:
    return tmp_path / "data" / f"session-{session}"


class BrowserSidecar(Sidecar):
    """The minimal host of the Baileys tests, also keeping every event it has seen."""

    def __init__(self, process: Process) -> None:
        super().__init__(process)
        self.seen: list[dict[str, Any]] = []

    async def _on_stdout(self, line: bytes) -> None:
        await super()._on_stdout(line)
        try:
            message = json.loads(line)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "event":
            self.seen.append(message)

    def reported_pids(self) -> set[int]:
        """Every browser PID the sidecar has reported started."""
        return {
            event["data"]["pid"]
            for event in self.seen
            if event["event"] == "process" and event["data"]["state"] == "started"
        }


@asynccontextmanager
async def running_sidecar(tmp_path: Path, **init: Any) -> AsyncIterator[BrowserSidecar]:
    """An initialised sidecar in a session of its own; no browser outlives the block."""
    node, chromium = _require_sidecar()
    process = await anyio.open_process(
        [node, "--expose-gc", str(SIDECAR_DIR / "sidecar.js")],
        cwd=tmp_path,
        start_new_session=True,
    )
    client = BrowserSidecar(process)
    try:
        async with anyio.create_task_group() as tg:
            await client.pump(tg)
            await client.wait_hello()
            assert await client.call("init", init_params(chromium, **init)) == {}
            yield client
            if process.returncode is None:
                await client.close_stdin()
            with anyio.fail_after(5):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
        # What the host does when a sidecar ends: no reported browser group survives.
        for pid in client.reported_pids():
            if group_members(pid):
                os.killpg(pid, signal.SIGKILL)
    client.assert_clean_streams()


async def started_browser(sidecar: BrowserSidecar, session: str = "a") -> int:
    event = await sidecar.wait_event("process", session)
    assert event["data"]["state"] == "started"
    pid = event["data"]["pid"]
    assert isinstance(pid, int) and pid > 0
    return pid


async def wait_exited(sidecar: BrowserSidecar, pid: int, session: str = "a") -> None:
    event = await sidecar.wait_event("process", session)
    assert event["data"] == {"pid": pid, "state": "exited"}


# ----------------------------------------------------------------------------- protocol


async def test_hello_and_init(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        hello = await sidecar.wait_hello()
        assert hello["protocol"] == 1
        assert hello["library"] == "whatsapp-web.js"
        assert hello["libraryVersion"] == _pinned_version() == "1.34.7"
        assert isinstance(hello["node"], str) and hello["node"][0].isdigit()
        assert hello["pid"] == sidecar.process.pid
        reply = await sidecar.request("init", {**init_params("x"), "chromiumArgs": "--a"})
        assert reply["error"]["code"] == "bad_params"
        assert reply["error"]["message"].startswith("chromiumArgs:")
        result = await sidecar.call("ping")
        assert result["sessions"] == 0


async def test_requests_about_unknown_sessions(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        assert await sidecar.call("session.stop", {"session": "nope"}) == {}
        for method, params in [
            ("session.logout", {"session": "nope"}),
            ("session.pairingCode", {"session": "nope", "phone": "4915112345678"}),
            ("message.sendText", {"session": "nope", "chatId": "1@c.us", "text": "hi"}),
        ]:
            with pytest.raises(SidecarError) as caught:
                await sidecar.call(method, params)
            assert caught.value.code == "no_session", method
        reply = await sidecar.request(
            "session.start", {"session": "a/b", "dataPath": str(tmp_path)}
        )
        assert reply["error"]["code"] == "bad_params"
        assert reply["error"]["message"].startswith("session:")
        assert sidecar.seen == []


# ----------------------------------------------------------------------------- lifecycle


async def test_start_qr_stop(tmp_path: Path) -> None:
    """The whole pre-QR life, at the most verbose log level: stdout stays pure JSON."""
    async with running_sidecar(tmp_path, logLevel="trace") as sidecar:
        started = time.perf_counter()
        assert await sidecar.call("session.start", start_params(tmp_path)) == {}
        pid = await started_browser(sidecar)
        qr = await sidecar.wait_event("qr", "a")
        # The stub rotates its ref every 2 s: a slow start may see a later one.
        assert qr["data"]["qr"].startswith("stub-ref-")
        assert time.perf_counter() - started < TIMEOUT
        # The browser leads a process group of its own, which holds its helpers.
        assert os.getpgid(pid) == pid
        assert pid in group_members(pid)
        assert len(group_members(pid)) > 1
        stats = await sidecar.call("debug.stats")
        assert stats["sessions"]["a"] == {"browserPid": pid, "state": "qr"}
        with pytest.raises(SidecarError) as caught:
            await sidecar.call(
                "message.sendText", {"session": "a", "chatId": "1@c.us", "text": "hi"}
            )
        assert caught.value.code == "not_connected"

        assert await sidecar.call("session.stop", {"session": "a"}, within=15) == {}
        assert group_members(pid) == []
        await wait_exited(sidecar, pid)
        assert profile(tmp_path).is_dir()  # stop keeps the profile
        assert not [e for e in sidecar.events if e["event"] == "close"]
        assert (await sidecar.call("debug.stats"))["sessions"] == {}
        assert sidecar.not_json == []
        assert sidecar.stderr, "the trace level should have logged something"


async def test_logout_deletes_the_profile(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        assert profile(tmp_path).is_dir()
        assert await sidecar.call("session.logout", {"session": "a"}, within=20) == {}
        assert group_members(pid) == []
        assert not profile(tmp_path).exists()


async def test_a_second_start_replaces_the_browser(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        first = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        await sidecar.call("session.start", start_params(tmp_path), within=15)
        assert group_members(first) == []
        await wait_exited(sidecar, first)
        second = await started_browser(sidecar)
        assert second != first
        await sidecar.wait_event("qr", "a")
        await sidecar.call("session.stop", {"session": "a"}, within=15)
        assert group_members(second) == []


async def test_a_profile_in_use_is_refused(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as first:
        await first.call("session.start", start_params(tmp_path))
        pid = await started_browser(first)
        await first.wait_event("qr", "a")
        async with running_sidecar(tmp_path) as second:
            with pytest.raises(SidecarError) as caught:
                await second.call("session.start", start_params(tmp_path))
            assert caught.value.code == "profile_in_use"
            assert str(pid) in caught.value.message
            assert str(profile(tmp_path)) in caught.value.message
            await anyio.sleep(0.5)
            assert second.seen == []
            assert children(second.process.pid) == []
            assert (await second.call("debug.stats"))["sessions"] == {}
        # The refusal touched nothing of the first browser.
        assert pid in group_members(pid)
        assert (profile(tmp_path) / "SingletonLock").is_symlink()
        await first.call("session.stop", {"session": "a"}, within=15)
        assert group_members(pid) == []


@pytest.mark.parametrize("holder", ["dead-pid", "other-host"])
async def test_a_stale_lock_is_cleared(tmp_path: Path, holder: str) -> None:
    """A lock of a dead browser, or of another host (Chromium itself refuses that one:
    a container's hostname changes with every restart)."""
    directory = profile(tmp_path)
    directory.mkdir(parents=True)
    if holder == "dead-pid":
        target = f"{socket.gethostname()}-{dead_pid()}"
    else:
        target = f"not-{socket.gethostname()}-{os.getpid()}"
    (directory / "SingletonLock").symlink_to(target)
    (directory / "SingletonSocket").symlink_to(tmp_path / "gone" / "SingletonSocket")
    (directory / "SingletonCookie").symlink_to("1234567890")
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        # The lock now names the new browser.
        assert os.readlink(directory / "SingletonLock").endswith(f"-{pid}")
        await sidecar.call("session.stop", {"session": "a"}, within=15)


async def test_offline_navigation_fails_fast(tmp_path: Path) -> None:
    """No stub: the real URL, which resolves to nothing. initialize() rejects."""
    async with running_sidecar(tmp_path, webVersion=None, webVersionCacheDir=None) as sidecar:
        started = time.perf_counter()
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        error = await sidecar.wait_event("error", "a")
        assert error["data"]["code"] == "init_failed"
        assert "net::ERR_" in error["data"]["message"]
        close = await sidecar.wait_event("close", "a")
        assert close["data"]["code"] == "INIT_FAILED"
        assert close["data"]["reason"] == error["data"]["message"]
        assert time.perf_counter() - started < TIMEOUT
        assert group_members(pid) == []
        assert [e for e in sidecar.events if e["event"] == "qr"] == []
        assert (await sidecar.call("debug.stats"))["sessions"]["a"] == {
            "browserPid": None,
            "state": "closed",
        }


async def test_no_qr_in_time_is_an_init_timeout(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, webVersion="stub-no-qr", initTimeoutMs=1500) as sidecar:
        started = time.perf_counter()
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        close = await sidecar.wait_event("close", "a")
        elapsed = time.perf_counter() - started
        assert close["data"]["code"] == "INIT_TIMEOUT"
        assert "1500" in close["data"]["reason"]
        assert 1.4 < elapsed < TIMEOUT
        assert group_members(pid) == []
        assert [e for e in sidecar.events if e["event"] in ("qr", "error")] == []


async def test_eof_on_stdin_ends_the_sidecar_and_its_browser(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        started = time.perf_counter()
        await sidecar.close_stdin()
        with anyio.fail_after(3.0):
            code = await sidecar.process.wait()
        assert code == 0
        assert time.perf_counter() - started < 3.0
        assert group_members(pid) == []
        assert profile(tmp_path).is_dir()


# ----------------------------------------------------------------------------- conversion

CONVERT_SCRIPT = """
const convert = require(process.argv[1]);
const me = '491700000000@c.us';
const id = (fromMe, remote, short) =>
  ({ fromMe, remote, id: short, _serialized: `${fromMe}_${remote}_${short}` });
const own = (short) => ({ id: id(true, '1@c.us', short), fromMe: true });
const out = {
  incoming: convert.message({
    id: id(false, '491711111111@c.us', 'A1'), fromMe: false, type: 'chat', body: 'hello',
    timestamp: 1700000000, from: '491711111111@c.us', to: me,
    _data: { notifyName: 'Ann', quotedStanzaID: 'Q9' },
  }, me),
  group: convert.message({
    id: { fromMe: false, remote: { _serialized: '1203@g.us' }, id: 'G1' },
    type: 'image', body: '', timestamp: 1700000001, from: '1203@g.us',
    author: { _serialized: '491722222222@c.us' }, _data: {},
  }, me),
  own: convert.message({
    id: id(true, '491711111111@c.us', 'B1'), fromMe: true, type: 'ptt', body: '',
    timestamp: 1700000002, from: me, to: '491711111111@c.us', _data: {},
  }, me),
  notice: convert.message(
    { id: id(false, '1203@g.us', 'N1'), type: 'e2e_notification', _data: {} }, me),
  acks: [-1, 0, 1, 2, 3, 4].map((ack) => convert.ack(own('B1'), ack)),
  theirAck: convert.ack({ id: id(false, '1@c.us', 'A1'), fromMe: false }, 3),
  revoke: convert.revoke(
    { id: id(false, '1@c.us', 'A1'), fromMe: false, from: '1@c.us', type: 'revoked' }, me),
  reaction: convert.reaction({
    id: id(false, '1@c.us', 'R1'), msgId: id(true, '1@c.us', 'B1'),
    reaction: '👍', senderId: '1@c.us',
  }, me),
  account: convert.account({ wid: { _serialized: me }, pushname: 'Me' }),
};
process.stdout.write(JSON.stringify(out));
"""


def test_conversion_of_library_objects() -> None:
    """lib/convert.js, which the stub page cannot reach, on objects shaped like the library's."""
    node, _ = _require_sidecar()
    done = subprocess.run(
        [node, "-e", CONVERT_SCRIPT, str(SIDECAR_DIR / "lib" / "convert.js")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["incoming"] == {
        "id": "A1",
        "chat": "491711111111@c.us",
        "sender": "491711111111@c.us",
        "fromMe": False,
        "timestamp": 1700000000,
        "type": "text",
        "body": "hello",
        "quotedId": "Q9",
        "hasMedia": False,
        "pushName": "Ann",
    }
    assert out["group"]["chat"] == "1203@g.us"
    assert out["group"]["sender"] == "491722222222@c.us"
    assert (out["group"]["type"], out["group"]["body"], out["group"]["hasMedia"]) == (
        "image",
        None,
        True,
    )
    assert out["own"]["fromMe"] is True
    assert out["own"]["sender"] == "491700000000@c.us"
    assert out["own"]["type"] == "audio"
    assert out["notice"] is None
    statuses = [ack and ack["status"] for ack in out["acks"]]
    assert statuses == ["failed", None, "sent", "delivered", "read", "read"]
    assert out["acks"][2] == {"id": "B1", "chat": "1@c.us", "status": "sent"}
    assert out["theirAck"] is None
    assert out["revoke"] == {"chat": "1@c.us", "id": "A1", "sender": "1@c.us", "fromMe": False}
    assert out["reaction"] == {
        "chat": "1@c.us",
        "id": "B1",
        "emoji": "👍",
        "sender": "1@c.us",
        "fromMe": False,
    }
    assert out["account"] == {"id": "491700000000@c.us", "name": "Me"}


async def test_the_browser_of_a_sigkilled_sidecar_exits_by_itself(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        sidecar.process.kill()  # SIGKILL, by PID: no exit hook of the sidecar runs
        # Nobody kills the browser's group here (the host would): its DevTools pipe
        # closed with the sidecar, and Chromium ends on that by itself.
        with anyio.fail_after(20):
            while group_members(pid):
                await anyio.sleep(0.1)


async def test_a_browser_killed_from_outside_closes_the_session(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        await sidecar.call("session.start", start_params(tmp_path))
        pid = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        # initialize() finishes a few ms after the QR; a browser dying before that is
        # an initialize() failure (INIT_FAILED) instead.
        await anyio.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)
        await wait_exited(sidecar, pid)
        close = await sidecar.wait_event("close", "a")
        # On a loaded machine the kill may still land inside initialize().
        assert close["data"]["code"] in ("BROWSER_EXITED", "INIT_FAILED")
        if close["data"]["code"] == "BROWSER_EXITED":
            assert "SIGKILL" in close["data"]["reason"]
        assert (await sidecar.call("debug.stats"))["sessions"]["a"]["state"] == "closed"
        # The session stays known and starts again on the same profile.
        await sidecar.call("session.start", start_params(tmp_path))
        again = await started_browser(sidecar)
        await sidecar.wait_event("qr", "a")
        await sidecar.call("session.stop", {"session": "a"}, within=15)
        assert group_members(again) == []
