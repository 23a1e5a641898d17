"""The Baileys sidecar at its protocol boundary (docs/sidecar-protocol.md).

Each test starts a real `node --expose-gc sidecar.js` and talks JSON lines to it. The
WhatsApp side is a loopback WebSocket server that never speaks WhatsApp: it accepts and
stays silent, drops the connection, or refuses the upgrade with HTTP 403. That is enough
for everything before a QR: framing, errors, the socket lifecycle and its leaks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from aiohttp import web
from anyio.abc import ByteReceiveStream, Process, TaskGroup

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SIDECAR_DIR = Path(__file__).resolve().parents[1] / "enginehost/plugins/baileys_bridge/sidecar"
TIMEOUT = 10.0

Mode = Literal["silent", "drop", "forbidden"]


def _require_sidecar() -> str:
    """The node binary; skip without node or node_modules, except in CI (then fail)."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not on PATH"
    elif not (SIDECAR_DIR / "node_modules" / "baileys" / "package.json").is_file():
        missing = f"run `npm ci` in {SIDECAR_DIR} (node_modules is missing)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


def _pinned_baileys_version() -> str:
    package = json.loads((SIDECAR_DIR / "package.json").read_text())
    return str(package["dependencies"]["baileys"])


# ----------------------------------------------------------------------------- server


class FakeServer:
    """A loopback WebSocket endpoint counting the connections it holds open."""

    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self.open = 0
        self.accepted = 0
        self.upgrades = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.upgrades += 1
        if self.mode == "forbidden":
            return web.Response(status=403, text="forbidden")
        ws = web.WebSocketResponse()
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # the client gave up before the upgrade completed
            return web.Response(status=499)
        self.open += 1
        self.accepted += 1
        try:
            if self.mode == "drop":
                assert request.transport is not None
                request.transport.close()
            else:
                async for _ in ws:  # silent: read the client hello, never answer
                    pass
        finally:
            self.open -= 1
        return ws

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_get("/ws/chat", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait_open(self, count: int, within: float = TIMEOUT) -> None:
        with anyio.fail_after(within):
            while self.open != count:
                await anyio.sleep(0.02)


# ----------------------------------------------------------------------------- client


class SidecarError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Sidecar:
    """A minimal host: JSON lines over the sidecar's stdin/stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.hello: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.host_requests: list[dict[str, Any]] = []
        self.not_json: list[bytes] = []
        self.stderr: list[bytes] = []
        self._changed = anyio.Event()
        self._next_id = 0
        self._reading = anyio.Event()
        self._reading.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def pause_stdout(self) -> None:
        """Stop reading stdout (the sidecar then meets a full pipe)."""
        self._reading = anyio.Event()

    def resume_stdout(self) -> None:
        self._reading.set()

    async def _read_lines(
        self, stream: ByteReceiveStream, on_line: Callable[[bytes], Any], gated: bool
    ) -> None:
        buffer = b""
        async for chunk in stream:
            if gated:
                await self._reading.wait()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await on_line(line)
        if buffer:
            await on_line(buffer)

    async def _on_stdout(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.not_json.append(line)
            return
        if not isinstance(message, dict):
            self.not_json.append(line)
            return
        kind = message.get("type")
        if kind == "hello":
            self.hello = message
        elif kind == "reply":
            self.replies[message["id"]] = message
        elif kind == "event":
            self.events.append(message)
        elif kind == "request":
            self.host_requests.append(message)
            reply = {"type": "reply", "id": message["id"], "ok": True, "result": {"text": None}}
            await self.send(reply)
        self._notify()

    async def _on_stderr(self, line: bytes) -> None:
        self.stderr.append(line)

    async def pump(self, tg: TaskGroup) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        tg.start_soon(self._read_lines, self.process.stdout, self._on_stdout, True)
        tg.start_soon(self._read_lines, self.process.stderr, self._on_stderr, False)

    async def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def request_nowait(self, method: str, params: dict[str, Any] | None = None) -> str:
        self._next_id += 1
        request_id = f"h{self._next_id}"
        message: dict[str, Any] = {"type": "request", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return request_id

    async def reply(self, request_id: str, within: float = TIMEOUT) -> dict[str, Any]:
        with anyio.fail_after(within):
            while request_id not in self.replies:
                await self._changed.wait()
        return self.replies.pop(request_id)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, within: float = TIMEOUT
    ) -> dict[str, Any]:
        return await self.reply(await self.request_nowait(method, params), within)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, within: float = TIMEOUT
    ) -> dict[str, Any]:
        reply = await self.request(method, params, within)
        if not reply["ok"]:
            raise SidecarError(reply["error"]["code"], reply["error"]["message"])
        result: dict[str, Any] = reply["result"]
        return result

    async def wait_event(
        self, name: str, session: str | None = None, within: float = TIMEOUT
    ) -> dict[str, Any]:
        with anyio.fail_after(within):
            while True:
                for index, event in enumerate(self.events):
                    if event["event"] == name and event.get("session") == session:
                        return self.events.pop(index)
                await self._changed.wait()

    async def wait_hello(self, within: float = TIMEOUT) -> dict[str, Any]:
        with anyio.fail_after(within):
            while self.hello is None:
                await self._changed.wait()
        return self.hello

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    def assert_clean_streams(self) -> None:
        assert self.not_json == [], f"non-JSON on stdout: {self.not_json[:3]!r}"
        for line in self.stderr:
            if not line.strip():
                continue
            record = json.loads(line)
            assert isinstance(record, dict)
            assert isinstance(record["level"], int)
            assert "msg" in record


def init_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "websocketUrl": None,
        "browserName": "enginehost-tests",
        "connectTimeoutMs": 60_000,
        "logLevel": "debug",
        "markOnlineOnConnect": False,
        "syncFullHistory": False,
        "appStateTimeoutMs": 60_000,
        "connectWatchdogMs": 60_000,
        "maxLineBytes": 1024 * 1024,
    }
    params.update(overrides)
    return params


@asynccontextmanager
async def running_sidecar(
    tmp_path: Path, init: dict[str, Any] | None = None
) -> AsyncIterator[Sidecar]:
    """A sidecar that has said hello (and, with `init`, been initialised)."""
    node = _require_sidecar()
    process = await anyio.open_process(
        [node, "--expose-gc", str(SIDECAR_DIR / "sidecar.js")], cwd=tmp_path
    )
    client = Sidecar(process)
    try:
        async with anyio.create_task_group() as tg:
            await client.pump(tg)
            await client.wait_hello()
            if init is not None:
                assert await client.call("init", init) == {}
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
    client.assert_clean_streams()


@asynccontextmanager
async def against(
    tmp_path: Path, mode: Mode, **init: Any
) -> AsyncIterator[tuple[FakeServer, Sidecar]]:
    """A fake server and a sidecar initialised to connect to it."""
    async with (
        FakeServer(mode) as server,
        running_sidecar(tmp_path, init_params(websocketUrl=server.url, **init)) as sidecar,
    ):
        yield server, sidecar


def auth_dir(tmp_path: Path, session: str) -> str:
    return str(tmp_path / "auth" / session)


def start_params(tmp_path: Path, session: str) -> dict[str, Any]:
    return {"session": session, "authDir": auth_dir(tmp_path, session)}


# ----------------------------------------------------------------------------- protocol


async def test_hello_then_init(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        hello = await sidecar.wait_hello()
        assert hello["protocol"] == 1
        assert hello["library"] == "baileys"
        assert hello["libraryVersion"] == _pinned_baileys_version()
        assert isinstance(hello["node"], str) and hello["node"][0].isdigit()
        assert hello["pid"] == sidecar.process.pid
        assert await sidecar.call("init", init_params()) == {}


async def test_ping_answers_with_memory_figures(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        started = time.perf_counter()
        result = await sidecar.call("ping")
        assert time.perf_counter() - started < 1.0
        assert result["sessions"] == 0
        assert result["rss"] > 10_000_000
        assert 0 < result["heapUsed"] < result["rss"]


async def test_unknown_method(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        reply = await sidecar.request("session.teleport", {})
        assert reply["ok"] is False
        assert reply["error"]["code"] == "unknown_method"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("init", init_params(connectTimeoutMs="soon"), "connectTimeoutMs"),
        ("init", init_params(logLevel="loud"), "logLevel"),
        ("init", {k: v for k, v in init_params().items() if k != "browserName"}, "browserName"),
        ("session.start", {"session": "s1"}, "authDir"),
        ("session.start", {"session": "s1", "authDir": "relative/dir"}, "authDir"),
        ("session.start", {"session": "", "authDir": "/tmp/x"}, "session"),
        (
            "session.start",
            {"session": "s1", "authDir": "/tmp/x", "pairingPhone": "+1"},
            "pairingPhone",
        ),
        ("session.pairingCode", {"session": "s1", "phone": "12ab"}, "phone"),
        ("message.sendText", {"session": "s1", "jid": "nobody", "text": "hi"}, "jid"),
        ("message.sendText", {"session": "s1", "jid": "1@s.whatsapp.net", "text": 5}, "text"),
        ("session.stop", {}, "session"),
    ],
)
async def test_bad_params_name_the_field(
    tmp_path: Path, method: str, params: dict[str, Any], field: str
) -> None:
    async with running_sidecar(tmp_path) as sidecar:
        if method != "init":
            await sidecar.call("init", init_params())
        reply = await sidecar.request(method, params)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_params"
        assert reply["error"]["message"].startswith(f"{field}:")


async def test_requests_on_unknown_sessions(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        assert await sidecar.call("session.stop", {"session": "ghost"}) == {}
        for method, params in [
            ("session.logout", {"session": "ghost"}),
            ("session.pairingCode", {"session": "ghost", "phone": "15551234567"}),
            ("message.sendText", {"session": "ghost", "jid": "1@s.whatsapp.net", "text": "x"}),
        ]:
            reply = await sidecar.request(method, params)
            assert reply["error"]["code"] == "no_session", method


async def test_non_json_line_is_an_error_event(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        await sidecar.send_raw(b"this is not json\n")
        event = await sidecar.wait_event("error")
        assert "session" not in event
        assert event["data"]["code"] == "bad_line"
        await sidecar.send_raw(b"[1, 2, 3]\n")
        assert (await sidecar.wait_event("error"))["data"]["code"] == "bad_line"
        assert (await sidecar.call("ping"))["sessions"] == 0


async def test_overlong_line_is_dropped_without_buffering_it(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params(maxLineBytes=4096)) as sidecar:
        padding = "x" * 300_000
        line = json.dumps({"type": "request", "id": "big", "method": "ping", "pad": padding})
        data = line.encode() + b"\n"
        for start in range(0, len(data), 16_384):
            await sidecar.send_raw(data[start : start + 16_384])
        event = await sidecar.wait_event("error")
        assert event["data"]["code"] == "line_too_long"
        # The line after the dropped one is read normally; the dropped one got no reply.
        assert (await sidecar.call("ping"))["sessions"] == 0
        assert "big" not in sidecar.replies


async def test_a_slow_reader_loses_no_line(tmp_path: Path) -> None:
    """Far more replies than a pipe holds, written while the host is not reading."""
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        count = 3000
        sidecar.pause_stdout()
        ids = []
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def send_all() -> None:
                    for _ in range(count):
                        ids.append(await sidecar.request_nowait("ping"))

                tg.start_soon(send_all)
                await anyio.sleep(0.5)
                sidecar.resume_stdout()
        for request_id in ids:
            assert (await sidecar.reply(request_id))["ok"] is True
        assert sidecar.not_json == []


async def test_eof_on_stdin_exits_within_two_seconds(tmp_path: Path) -> None:
    async with against(tmp_path, "silent") as (server, sidecar):
        await sidecar.call("session.start", start_params(tmp_path, "a"))
        await server.wait_open(1)
        started = time.perf_counter()
        await sidecar.close_stdin()
        # The sidecar's own hard stop is at 1.8 s; the rest is slack for a loaded machine.
        with anyio.fail_after(3.0):
            code = await sidecar.process.wait()
        assert code == 0
        assert time.perf_counter() - started < 3.0
    await server.wait_open(0)


async def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        sidecar.process.terminate()
        with anyio.fail_after(2.0):
            assert await sidecar.process.wait() == 0


async def test_debug_gc(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, init_params()) as sidecar:
        result = await sidecar.call("debug.gc")
        assert result["heapUsed"] > 0
        assert result["rss"] > result["heapUsed"]


async def test_stdout_carries_only_json(tmp_path: Path) -> None:
    """Everything above at once, at the most verbose log level: stdout stays pure."""
    async with against(tmp_path, "silent", logLevel="trace", maxLineBytes=2048) as (
        server,
        sidecar,
    ):
        await sidecar.send_raw(b"{oops\n" + b"y" * 5000 + b"\n")
        await sidecar.request("no.such.method")
        await sidecar.request("session.start", {"session": 1})
        await sidecar.call("session.start", start_params(tmp_path, "a"))
        await server.wait_open(1)
        await sidecar.call("debug.stats")
        await sidecar.call("session.stop", {"session": "a"})
        await sidecar.call("ping")
        assert sidecar.not_json == []
        assert sidecar.stderr, "the trace level should have logged something"


# ----------------------------------------------------------------------------- lifecycle


async def test_connect_watchdog_closes_a_refused_upgrade(tmp_path: Path) -> None:
    async with against(tmp_path, "forbidden", connectWatchdogMs=1500) as (server, sidecar):
        started = time.perf_counter()
        await sidecar.call("session.start", start_params(tmp_path, "w"))
        event = await sidecar.wait_event("close", "w", within=6)
        elapsed = time.perf_counter() - started
        assert event["data"] == {"code": 408, "reason": "connect watchdog"}
        assert 1.3 < elapsed < 8.0  # watchdog 1.5 s; the rest is slack for a loaded machine
        assert server.upgrades >= 1
        stats = await sidecar.call("debug.stats")
        assert stats["sessions"]["w"] == {"sockets": 0, "listeners": 0, "buffering": False}
        assert (await sidecar.call("ping"))["sessions"] == 1
        assert await anyio.Path(auth_dir(tmp_path, "w")).is_dir()  # the sidecar created it


@pytest.mark.parametrize("mode", ["silent", "forbidden"])
async def test_stop_while_connecting_does_not_crash(tmp_path: Path, mode: Mode) -> None:
    async with against(tmp_path, mode) as (server, sidecar):
        for round_ in range(5):
            session = f"c{round_}"
            start = await sidecar.request_nowait(
                "session.start", {"session": session, "authDir": auth_dir(tmp_path, session)}
            )
            stop = await sidecar.request_nowait("session.stop", {"session": session})
            assert (await sidecar.reply(start))["ok"] is True
            assert (await sidecar.reply(stop))["ok"] is True
        await anyio.sleep(0.5)
        assert sidecar.process.returncode is None
        assert (await sidecar.call("ping"))["sessions"] == 0
        assert [e for e in sidecar.events if e["event"] in ("error", "close")] == []
        await server.wait_open(0)


async def test_reconnects_leave_one_connection_and_constant_listeners(tmp_path: Path) -> None:
    async with against(tmp_path, "silent") as (server, sidecar):
        params = start_params(tmp_path, "r")
        listeners: set[int] = set()
        for _ in range(20):
            await sidecar.call("session.start", params)
            await server.wait_open(1)
            listeners.add((await sidecar.call("debug.stats"))["sessions"]["r"]["listeners"])
            await sidecar.call("session.stop", params)
            await server.wait_open(0)
        for _ in range(20):
            await sidecar.call("session.start", params)
            stats = (await sidecar.call("debug.stats"))["sessions"]["r"]
            assert stats["sockets"] == 1
            listeners.add(stats["listeners"])
        await server.wait_open(1)
        await anyio.sleep(0.3)  # any leaked socket would have connected by now
        assert server.open == 1
        # Replaced sockets may be ended before their upgrade completes.
        assert server.accepted > 20
        assert listeners == {1}
        # Host-requested teardowns never produce a close event.
        assert [e for e in sidecar.events if e["event"] == "close"] == []
        await sidecar.call("session.stop", {"session": "r"})
        await server.wait_open(0)
        assert (await sidecar.call("debug.stats"))["sessions"] == {}


async def test_server_dropping_the_connection_is_a_428_close(tmp_path: Path) -> None:
    async with against(tmp_path, "drop") as (_server, sidecar):
        await sidecar.call("session.start", start_params(tmp_path, "d"))
        event = await sidecar.wait_event("close", "d")
        assert event["data"]["code"] == 428
        assert isinstance(event["data"]["reason"], str)
        stats = await sidecar.call("debug.stats")
        assert stats["sessions"]["d"]["sockets"] == 0
        assert stats["sessions"]["d"]["listeners"] == 0
        # One close per socket: no stale duplicates arrive later.
        await anyio.sleep(0.3)
        assert [e for e in sidecar.events if e["event"] == "close"] == []
        # The session can start again after a close.
        await sidecar.call("session.start", start_params(tmp_path, "d"))
        assert (await sidecar.wait_event("close", "d"))["data"]["code"] == 428


async def test_send_and_pairing_need_a_socket(tmp_path: Path) -> None:
    async with against(tmp_path, "silent", connectWatchdogMs=1000) as (_server, sidecar):
        await sidecar.call("session.start", start_params(tmp_path, "n"))
        reply = await sidecar.request(
            "message.sendText",
            {"session": "n", "jid": "1@s.whatsapp.net", "text": "hi", "quotedId": None},
        )
        assert reply["error"]["code"] == "not_connected"
        # No QR ever comes from a silent server: the wait is bounded.
        reply = await sidecar.request(
            "session.pairingCode", {"session": "n", "phone": "15551234567"}
        )
        assert reply["error"]["code"] == "not_connected"
        await sidecar.wait_event("close", "n")
        # logout of a session that never opened just tears it down.
        assert await sidecar.call("session.logout", {"session": "n"}) == {}
        assert await anyio.Path(auth_dir(tmp_path, "n")).is_dir()


async def test_ping_stays_prompt_with_many_sessions(tmp_path: Path) -> None:
    async with against(tmp_path, "silent") as (server, sidecar):
        count = 30
        ids = [
            await sidecar.request_nowait("session.start", start_params(tmp_path, f"m{i}"))
            for i in range(count)
        ]
        for request_id in ids:
            assert (await sidecar.reply(request_id))["ok"] is True
        await server.wait_open(count)
        rounds = []
        for _ in range(20):
            started = time.perf_counter()
            await sidecar.call("ping")
            rounds.append(time.perf_counter() - started)
        rounds.sort()
        assert rounds[len(rounds) // 2] < 0.25
        assert (await sidecar.call("ping"))["sessions"] == count
