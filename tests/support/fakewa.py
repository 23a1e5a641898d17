"""A loopback fake WhatsApp service for async tests, and a bare Baileys client to drive it.

``fake_whatsapp()`` runs ``tests/fakewa/server.js`` (real Baileys connects to its ``url``)
and talks to it over its JSON-lines control protocol. ``bare_client()`` runs
``tests/fakewa/bare_client.js``: real Baileys sockets with no project code in between.

Every wait takes a ``timeout`` in seconds and is bounded by it (``anyio.fail_after``).

Both need the baileys_bridge sidecar's node_modules (``npm ci`` in the sidecar directory);
tests call ``require_node_modules()`` first, which skips without them, or fails when the
``CI`` variable is set, since CI installs them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

REPO = Path(__file__).parents[2]
SIDECAR_NODE_MODULES = REPO / "enginehost/plugins/baileys_bridge/sidecar/node_modules"
FAKEWA_DIR = REPO / "tests/fakewa"
SERVER_JS = FAKEWA_DIR / "server.js"
BARE_CLIENT_JS = FAKEWA_DIR / "bare_client.js"
QR_TAP_JS = FAKEWA_DIR / "qr_tap.js"

#: The contact a fake inbound message comes from unless a test names another.
DEFAULT_CONTACT = "15551234567"

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

_REQUIRED_MODULES = ("baileys", "libsignal", "ws", "pino")
_MAX_LINE = 64 * 1024 * 1024
_STDERR_LINES = 2000
_EVENT_HISTORY = 20000
_STOP_WAIT = 5.0


def node_modules_ready() -> bool:
    """True when node is on PATH and the sidecar's node_modules hold what the fake needs."""
    return shutil.which("node") is not None and all(
        (SIDECAR_NODE_MODULES / name / "package.json").is_file() for name in _REQUIRED_MODULES
    )


def require_node_modules() -> None:
    """Skip the calling test when node or Baileys is missing; fail instead under CI."""
    if node_modules_ready():
        return
    reason = f"node and Baileys are needed: run `npm ci` in {SIDECAR_NODE_MODULES.parent}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def node_env(**extra: str) -> dict[str, str]:
    """The current environment with NODE_PATH pointing at the sidecar's node_modules."""
    return {**os.environ, "NODE_PATH": str(SIDECAR_NODE_MODULES), **extra}


class FakeWhatsAppError(RuntimeError):
    """The fake service refused a command (its reply had ``ok: false``)."""


class ChildExited(RuntimeError):
    """The child process ended while a test was waiting on it."""


class _JsonLinesChild:
    """A node child process speaking JSON lines on stdout, its stderr drained and kept."""

    name = "child"

    def __init__(self, process: Process) -> None:
        self.process = process
        self.stderr_lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self.lines: deque[Event] = deque(maxlen=_EVENT_HISTORY)
        self._seq = 0
        self._changed = anyio.Event()
        self._exited = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, count: int = 40) -> str:
        return "\n".join(list(self.stderr_lines)[-count:])

    def mark(self) -> int:
        """The sequence number of the latest line: pass it as ``since`` to ignore older ones."""
        return self._seq

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        stream = BufferedByteReceiveStream(self.process.stderr)
        try:
            while True:
                line = await stream.receive_until(b"\n", _MAX_LINE)
                self.stderr_lines.append(line.decode(errors="replace"))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            return

    async def _first_line(self, within: float) -> Event:
        assert self.process.stdout is not None
        self._stdout = BufferedByteReceiveStream(self.process.stdout)
        try:
            with anyio.fail_after(within):
                raw = await self._stdout.receive_until(b"\n", _MAX_LINE)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} printed nothing within {within} s:\n{self.stderr_tail()}"
            ) from None
        except (anyio.EndOfStream, anyio.IncompleteRead):
            await anyio.sleep(0.1)  # let the stderr reader catch the reason
            raise ChildExited(f"{self.name} exited at start:\n{self.stderr_tail()}") from None
        return dict(json.loads(raw))

    async def _read_stdout(self) -> None:
        try:
            while True:
                raw = await self._stdout.receive_until(b"\n", _MAX_LINE)
                self._on_line(json.loads(raw))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            pass
        finally:
            self._exited = True
            self._on_exit()
            self._notify()

    def _on_line(self, line: Event) -> None:
        self._record(line)

    def _on_exit(self) -> None:
        pass

    def _record(self, line: Event) -> None:
        self._seq += 1
        line["seq"] = self._seq
        self.lines.append(line)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_line(self, match: Predicate, what: str, within: float, since: int) -> Event:
        """The first recorded line after ``since`` that ``match`` accepts, waiting for it."""
        try:
            with anyio.fail_after(within):
                while True:
                    changed = self._changed
                    for line in self.lines:
                        if line["seq"] > since and match(line):
                            return line
                    if self._exited:
                        raise ChildExited(
                            f"{self.name} exited while waiting for {what}:\n{self.stderr_tail()}"
                        )
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"no {what} from {self.name} within {within} s; stderr tail:\n" + self.stderr_tail()
            ) from None

    async def _write(self, message: Event) -> None:
        if self._exited or self.process.stdin is None:
            raise ChildExited(f"{self.name} has exited:\n{self.stderr_tail()}")
        await self.process.stdin.send((json.dumps(message) + "\n").encode())

    async def _stop(self) -> None:
        """Close stdin, give the child a few seconds, then kill it by its PID."""
        if self.process.stdin is not None:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.process.stdin.aclose()
        with anyio.move_on_after(_STOP_WAIT):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def _run_child(
    child_type: Callable[[Process], _JsonLinesChild],
    command: Sequence[str],
    env: dict[str, str],
    start_timeout: float,
    first_line: Callable[[_JsonLinesChild, Event], None],
) -> AsyncIterator[Any]:
    process = await anyio.open_process(list(command), stdin=PIPE, stdout=PIPE, stderr=PIPE, env=env)
    child = child_type(process)
    error: BaseException | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(child._drain_stderr)
        try:
            first_line(child, await child._first_line(start_timeout))
            tasks.start_soon(child._read_stdout)
            yield child
        except BaseException as exc:
            # Re-raised below, outside the task group, so a failing test shows its own
            # error rather than an exception group.
            error = exc
        finally:
            with anyio.CancelScope(shield=True):
                await child._stop()
            tasks.cancel_scope.cancel()
    if error is not None:
        raise error


class FakeWhatsApp(_JsonLinesChild):
    """Control of a running fake service. Every wait is bounded; nothing here blocks forever."""

    name = "fake WhatsApp server"

    def __init__(self, process: Process) -> None:
        super().__init__(process)
        self.url = ""
        self.port = 0
        self._next_id = 0
        self._replies: dict[int, Event] = {}
        self._open_connections = 0

    # -------------------------------------------------------------- plumbing

    def _on_line(self, line: Event) -> None:
        if line.get("type") == "event":
            if line.get("event") == "connection":
                self._open_connections += 1 if line.get("state") == "opened" else -1
            self._record(line)
        elif "id" in line:
            self._replies[line["id"]] = line
            self._notify()
        else:
            self._record(line)

    async def request(self, cmd: str, timeout: float = 15.0, **args: Any) -> Event:  # noqa: ASYNC109
        """Send one control command; return its reply, or raise FakeWhatsAppError."""
        self._next_id += 1
        request_id = self._next_id
        await self._write({"id": request_id, "cmd": cmd, **args})
        try:
            with anyio.fail_after(timeout):
                while request_id not in self._replies:
                    if self._exited:
                        raise ChildExited(
                            f"{self.name} exited during {cmd!r}:\n{self.stderr_tail()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"no reply to {cmd!r} within {timeout} s:\n{self.stderr_tail()}"
            ) from None
        reply = self._replies.pop(request_id)
        if not reply.get("ok"):
            raise FakeWhatsAppError(f"{cmd}: {reply.get('error')}")
        return reply

    # -------------------------------------------------------------- commands

    async def status(self) -> Event:
        """``{"connections": int, "devices": [{"jid", "connected", "phase"}]}``."""
        reply = await self.request("status")
        return {"connections": reply["connections"], "devices": reply["devices"]}

    async def stats(self) -> Event:
        """The server's memory (``rss``, ``heapUsed``, ... in bytes) after a full GC."""
        return await self.request("stats")

    async def scan(
        self,
        qr: str,
        *,
        phone: str | None = None,
        push_name: str | None = None,
        share_app_state_key: bool | None = None,
    ) -> str:
        """The phone ``phone`` scans ``qr``; returns the new device jid."""
        args: Event = {"qr": qr}
        if phone is not None:
            args["phone"] = phone
        if push_name is not None:
            args["pushName"] = push_name
        if share_app_state_key is not None:
            args["shareAppStateKey"] = share_app_state_key
        reply = await self.request("scan", **args)
        return str(reply["jid"])

    async def send_text(
        self,
        to: str,
        text: str,
        *,
        sender: str = DEFAULT_CONTACT,
        message_id: str | None = None,
        push_name: str | None = None,
    ) -> str:
        """Contact ``sender`` texts every logged-in device of ``to`` (digits or a device
        jid), Signal-encrypted; returns the message id."""
        args: Event = {"to": to, "from": sender, "text": text}
        if message_id is not None:
            args["messageId"] = message_id
        if push_name is not None:
            args["pushName"] = push_name
        reply = await self.request("sendText", **args)
        return str(reply["messageId"])

    async def outbound(self) -> list[Event]:
        """Every message the devices sent, decrypted: ``[{"id", "from", "to", "text"}]``."""
        reply = await self.request("outbound")
        return list(reply["messages"])

    async def disconnect(self, code: int, jid: str | None = None, *, drop: bool = False) -> int:
        """Send the stanza that makes Baileys close with ``code`` (to one device, or to every
        connection), then hang up; ``drop=True`` only closes TCP. Returns how many closed."""
        args: Event = {"code": code, "drop": drop}
        if jid is not None:
            args["jid"] = jid
        reply = await self.request("disconnect", **args)
        return int(reply["closed"])

    async def reject_upgrades(self, status: int | None) -> None:
        """Answer new WebSocket upgrades with this HTTP status (``None``: accept again)."""
        await self.request("rejectUpgrades", status=status)

    async def silent(self, on: bool) -> None:
        """While on, new connections are accepted and never answered."""
        await self.request("silent", on=on)

    async def ack(self, message_id: str, status: str) -> None:
        """The recipient's phone reports ``"delivered"`` or ``"read"`` for an outbound message."""
        await self.request("ack", messageId=message_id, status=status)

    async def auto_scan(self, on: bool, *, share_app_state_key: bool | None = None) -> None:
        """While on, every QR posted to the service's /qr endpoint is scanned at once by a
        new phone number (see tests/fakewa/qr_tap.js)."""
        args: Event = {"on": on}
        if share_app_state_key is not None:
            args["shareAppStateKey"] = share_app_state_key
        await self.request("autoScan", **args)

    # -------------------------------------------------------------- waiting

    async def wait_for(
        self,
        event_name: str,
        predicate: Predicate | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        since: int = 0,
    ) -> Event:
        """The first ``event_name`` event after ``since`` (see ``mark()``) that ``predicate``
        accepts, already seen or yet to come; TimeoutError after ``timeout`` seconds."""

        def match(line: Event) -> bool:
            return line.get("event") == event_name and (predicate is None or predicate(line))

        return await self._wait_line(match, f"{event_name!r} event", timeout, since)

    async def wait_connections(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once exactly ``n`` WebSocket connections are open."""
        try:
            with anyio.fail_after(timeout):
                while self._open_connections != n:
                    if self._exited:
                        raise ChildExited(f"{self.name} exited:\n{self.stderr_tail()}")
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self._open_connections} connections open, not {n}, after {timeout} s"
            ) from None

    @property
    def qr_url(self) -> str:
        """Where a client posts its QR for auto-scan."""
        return f"http://127.0.0.1:{self.port}/qr"


def _listening(child: _JsonLinesChild, line: Event) -> None:
    assert isinstance(child, FakeWhatsApp)
    if line.get("type") != "listening":
        raise RuntimeError(f"unexpected first line from the fake server: {line}")
    child.url = str(line["url"])
    child.port = int(line["port"])


@asynccontextmanager
async def fake_whatsapp(
    *, auto_scan: bool = False, start_timeout: float = 15.0
) -> AsyncIterator[FakeWhatsApp]:
    """Run the fake service on a free loopback port for the duration of the block."""
    command = ["node", "--expose-gc", str(SERVER_JS), "--port", "0"]
    if auto_scan:
        command.append("--auto-scan")
    async with _run_child(FakeWhatsApp, command, node_env(), start_timeout, _listening) as fake:
        yield fake


class BareClient(_JsonLinesChild):
    """``bare_client.js``: its stdout lines are recorded; commands go to its stdin."""

    name = "bare Baileys client"

    async def command(self, cmd: str, **args: Any) -> None:
        await self._write({"cmd": cmd, **args})

    async def wait_line(
        self,
        line_type: str,
        predicate: Predicate | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        since: int = 0,
    ) -> Event:
        """The first ``{"type": line_type}`` line after ``since`` that ``predicate`` accepts."""

        def match(line: Event) -> bool:
            return line.get("type") == line_type and (predicate is None or predicate(line))

        return await self._wait_line(match, f"{line_type!r} line", timeout, since)

    async def ask(
        self,
        cmd: str,
        reply_type: str,
        timeout: float = 10.0,  # noqa: ASYNC109
        **args: Any,
    ) -> Event:
        """Send a command and return its ``reply_type`` line; an error line raises."""
        since = self.mark()
        await self.command(cmd, **args)

        def match(line: Event) -> bool:
            kind = line.get("type")
            return kind == reply_type or (kind == "error" and line.get("cmd") == cmd)

        line = await self._wait_line(match, f"reply to {cmd!r}", timeout, since)
        if line.get("type") == "error":
            raise RuntimeError(f"bare client {cmd}: {line.get('error')}")
        return line

    def saw(self, line_type: str, predicate: Predicate | None = None, *, since: int = 0) -> bool:
        """Whether such a line has been recorded after ``since`` (no waiting)."""
        return any(
            line["seq"] > since
            and line.get("type") == line_type
            and (predicate is None or predicate(line))
            for line in self.lines
        )


def _first_client_line(child: _JsonLinesChild, line: Event) -> None:
    child._record(line)


@asynccontextmanager
async def bare_client(
    url: str,
    auth_dir: Path,
    *,
    sessions: int = 1,
    options: Sequence[str] = (),
    start_timeout: float = 30.0,
) -> AsyncIterator[BareClient]:
    """Run ``bare_client.js`` against ``url``; ``options`` are extra command-line flags
    (``--events``, ``--no-tap``, ``--login-only``, ``--connect-timeout-ms``, ...)."""
    command = [
        "node",
        "--expose-gc",
        str(BARE_CLIENT_JS),
        "--url",
        url,
        "--sessions",
        str(sessions),
        "--auth-dir",
        str(auth_dir),
        *options,
    ]
    async with _run_child(BareClient, command, node_env(), start_timeout, _first_client_line) as c:
        yield c
