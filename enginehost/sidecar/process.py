"""One sidecar process: start it, shake hands, exchange requests and events, watch it.

The wire format is documented in ``docs/sidecar-protocol.md``. A :class:`SidecarProcess`
knows nothing about sessions: it hands every event to ``on_event`` and every request
from the sidecar to ``on_request``; the pool (``enginehost.sidecar.pool``) routes them.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from enginehost.core.engine import EngineError
from enginehost.core.logging import get_logger
from enginehost.sidecar.lines import OverlongLine, bounded_lines

__all__ = [
    "PROTOCOL_VERSION",
    "Hello",
    "SidecarError",
    "SidecarGoneError",
    "SidecarProcess",
]

PROTOCOL_VERSION = 1
"""The protocol version this host speaks (see ``docs/sidecar-protocol.md``)."""

EventHandler = Callable[[str | None, str, Mapping[str, Any]], Awaitable[None]]
RequestHandler = Callable[[str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]

_log = get_logger("enginehost.sidecar")

# pino's numeric levels, as the sidecar writes them on stderr.
_PINO_LEVELS = {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "critical"}
_STDERR_LINE_MAX = 64 * 1024
_DRAIN_SECONDS = 2.0
_STDERR_KEPT = 20


class SidecarError(EngineError):
    """A request failed: the sidecar answered ``ok: false``, or no answer came in time."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SidecarGoneError(SidecarError):
    """The sidecar exited (or was killed) before it answered."""


@dataclass(frozen=True, slots=True)
class Hello:
    """What a sidecar says about itself in its first line."""

    protocol: int
    library: str
    library_version: str
    node: str
    pid: int


def parent_death_prefix() -> list[str]:
    """A command prefix that makes the child get SIGKILL when the host dies, if available.

    ``setpriv --pdeathsig KILL`` sets the parent-death signal and then *execs* the
    command, so the child keeps the PID the host knows. Without setpriv the sidecar
    still exits on end of stdin, which also follows the host's death.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class SidecarProcess:
    """A running sidecar. Start it with ``await task_group.start(process.run)``.

    ``run`` returns the :class:`Hello` through ``task_status`` once the handshake and
    ``init`` succeeded, then keeps reading until the process ends; afterwards
    :attr:`exited` is set and :attr:`exit_reason` says why. Every request still waiting
    then fails with :class:`SidecarGoneError`.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        init_params: Mapping[str, Any],
        on_event: EventHandler,
        on_request: RequestHandler,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        max_line_bytes: int = 1024 * 1024,
        handshake_timeout: float = 20.0,
        request_timeout: float = 30.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
    ) -> None:
        self.command = list(command)
        self.name = name
        self._init_params = dict(init_params)
        self._on_event = on_event
        self._on_request = on_request
        self._cwd = cwd
        self._env = env
        self._max_line_bytes = max_line_bytes
        self._handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._process: anyio.abc.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, MemoryObjectSendStream[Mapping[str, Any]]] = {}
        self._write_lock = anyio.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_KEPT)
        self.hello: Hello | None = None
        self.exited = anyio.Event()
        self.exit_reason = ""
        self._handing_over = 0
        self._last_handover = 0.0
        self._children: dict[int, str | None] = {}  # process group -> leader's start time
        self.closing_by_host = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def stderr_tail(self) -> list[str]:
        """The sidecar's last few stderr lines, for error messages."""
        return list(self._stderr_tail)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: anyio.abc.TaskStatus[Hello]) -> None:
        try:
            self._process = await anyio.open_process(
                self.command,
                cwd=self._cwd,
                env=self._env,
                stdin=-1,
                stdout=-1,
                stderr=-1,
                # Its own session: a Ctrl-C meant for the host (the terminal signals
                # the whole foreground group) must not kill the sidecar before the
                # host has stopped its sessions. It ends with the host all the same
                # (end of stdin, and the parent-death signal where available).
                start_new_session=True,
            )
        except OSError as exc:
            self.exit_reason = f"could not start {self.command[0]!r}: {exc}"
            self.exited.set()
            raise SidecarGoneError("spawn_failed", self.exit_reason) from exc
        process = self._process
        log = _log.bind(sidecar=self.name, pid=process.pid)
        log.info("sidecar.started", command=self.command[-1])
        hello_ready: anyio.Event = anyio.Event()
        stdout_done: anyio.Event = anyio.Event()
        failure: SidecarGoneError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_stderr, log)
                tg.start_soon(self._read_stdout, log, hello_ready, stdout_done, tg)
                failure = await self._handshake(hello_ready, process)
                if failure is None:
                    assert self.hello is not None  # the handshake checked it
                    task_status.started(self.hello)
                    tg.start_soon(self._heartbeat, log)
                    await process.wait()
                    # What the sidecar wrote before it ended (its last events and
                    # replies) is still in the pipe: read it before giving up.
                    with anyio.move_on_after(_DRAIN_SECONDS):
                        await stdout_done.wait()
                tg.cancel_scope.cancel()
        finally:
            if failure is not None:
                self.exit_reason = str(failure)
            with anyio.CancelScope(shield=True):
                await self._reap(process, log)
        if failure is not None:
            # Raised outside the task group, so the caller of ``start`` gets it plainly.
            raise failure

    async def _handshake(
        self, hello_ready: anyio.Event, process: anyio.abc.Process
    ) -> SidecarGoneError | None:
        """Wait for the hello, check its protocol, send ``init``; the failure, if any."""
        with anyio.move_on_after(self._handshake_timeout):
            await hello_ready.wait()
        if self.hello is None:
            return SidecarGoneError("handshake_failed", self._describe_failure("no hello", process))
        if self.hello.protocol != PROTOCOL_VERSION:
            return SidecarGoneError(
                "protocol_mismatch",
                f"sidecar {self.name} speaks protocol {self.hello.protocol}, "
                f"this host speaks {PROTOCOL_VERSION}: reinstall the bridge "
                "(enginehost bridges install)",
            )
        try:
            await self.request("init", self._init_params, seconds=self._handshake_timeout)
        except SidecarError as exc:
            return SidecarGoneError("init_failed", f"sidecar {self.name} refused init: {exc}")
        return None

    @property
    def child_process_groups(self) -> frozenset[int]:
        """Process groups the sidecar reported starting (browsers) and not yet ending."""
        return frozenset(self._children)

    def _track_child(self, data: Mapping[str, Any], log: Any) -> None:
        pid, state = data.get("pid"), data.get("state")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            log.warning("sidecar.bad_process_event", data=str(data)[:200])
        elif state == "started":
            self._children[pid] = _start_time(pid)
        elif state == "exited":
            self._children.pop(pid, None)

    def _kill_children(self, log: Any) -> None:
        """Kill the process groups the sidecar left behind: a browser started detached
        outlives a sidecar killed with SIGKILL otherwise."""
        for pgid, started in sorted(self._children.items()):
            if started is not None and _start_time(pgid) != started:
                continue  # that process ended and its PID went to another: not ours
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it ended with its sidecar
            except PermissionError as exc:
                log.error("sidecar.child_kill_refused", pgid=pgid, error=str(exc))
                continue
            log.warning("sidecar.child_killed", pgid=pgid)
        self._children.clear()

    async def _reap(self, process: anyio.abc.Process, log: Any) -> None:
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(5):
            await process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
        self._kill_children(log)
        if not self.exit_reason:
            self.exit_reason = self._describe_failure("exited", process)
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.close()
        self.exited.set()
        log.log(
            20 if self.closing_by_host else 40,
            "sidecar.exited",
            returncode=process.returncode,
            reason=self.exit_reason,
        )

    def _describe_failure(self, what: str, process: anyio.abc.Process) -> str:
        code = process.returncode
        status = (
            f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        )
        tail = " | ".join(self._stderr_tail)
        return f"sidecar {self.name} {what} ({status}){': ' + tail if tail else ''}"

    async def close(self, grace: float = 3.0) -> None:
        """End the sidecar gently: close its stdin (it ends its sockets and exits), then
        kill it by PID if it is still there after ``grace`` seconds."""
        process = self._process
        if process is None or self.exited.is_set():
            return
        self.closing_by_host = True
        self.exit_reason = self.exit_reason or "closed by the host"
        if process.stdin is not None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await process.stdin.aclose()
        with anyio.move_on_after(grace):
            await self.exited.wait()
        if not self.exited.is_set():
            self.kill("did not exit after its stdin closed")
            with anyio.move_on_after(5):
                await self.exited.wait()

    def kill(self, reason: str) -> None:
        """SIGKILL the sidecar (by its PID); :attr:`exited` follows shortly."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self.exit_reason = self.exit_reason or reason
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    # ------------------------------------------------------------------ requests

    async def request(
        self, method: str, params: Mapping[str, Any], *, seconds: float | None = None
    ) -> Mapping[str, Any]:
        """Send a request and wait for its reply's ``result``.

        Raises :class:`SidecarError` (the sidecar's code and message, or ``timeout``) or
        :class:`SidecarGoneError` when the sidecar is gone.
        """
        if self.exited.is_set() or self._process is None:
            raise SidecarGoneError("gone", f"sidecar {self.name} is not running")
        request_id = f"h{next(self._ids)}"
        send, receive = anyio.create_memory_object_stream[Mapping[str, Any]](1)
        self._pending[request_id] = send
        try:
            limit = self.request_timeout if seconds is None else seconds
            reply: Mapping[str, Any] | None = None
            # One deadline for writing and answering: a sidecar that stopped reading
            # its stdin must not hold a caller (or the heartbeat) forever.
            with anyio.move_on_after(limit):
                await self._write(
                    {"type": "request", "id": request_id, "method": method, "params": params}
                )
                try:
                    reply = await receive.receive()
                except anyio.EndOfStream:
                    raise SidecarGoneError(
                        "gone", f"sidecar {self.name} exited during {method}: {self.exit_reason}"
                    ) from None
            if reply is None:
                raise SidecarError(
                    "timeout", f"sidecar {self.name} did not answer {method} within {limit:g} s"
                )
        finally:
            self._pending.pop(request_id, None)
            receive.close()
        if reply.get("ok") is True:
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        error = reply.get("error")
        error = error if isinstance(error, dict) else {}
        raise SidecarError(
            str(error.get("code") or "error"), str(error.get("message") or f"{method} failed")
        )

    async def _write(self, message: Mapping[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise SidecarGoneError("gone", f"sidecar {self.name} is not running")
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if len(line) > self._max_line_bytes:
            raise SidecarError(
                "line_too_long",
                f"request of {len(line)} bytes exceeds the protocol's {self._max_line_bytes}",
            )
        async with self._write_lock:
            try:
                await process.stdin.send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise SidecarGoneError(
                    "gone", f"sidecar {self.name} is gone: {self.exit_reason or exc}"
                ) from None

    # ------------------------------------------------------------------ readers

    async def _read_stdout(
        self,
        log: Any,
        hello_ready: anyio.Event,
        stdout_done: anyio.Event,
        tg: anyio.abc.TaskGroup,
    ) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        try:
            async for line in bounded_lines(process.stdout, self._max_line_bytes):
                if isinstance(line, OverlongLine):
                    log.warning(
                        "sidecar.line_too_long", bytes=line.length, limit=self._max_line_bytes
                    )
                    continue
                try:
                    await self._dispatch(line, log, hello_ready, tg)
                except Exception as exc:
                    # One bad line must never end the reader: every session of the
                    # sidecar hangs on it.
                    log.error("sidecar.line_failed", error=repr(exc), exc_info=exc)
        finally:
            stdout_done.set()
            hello_ready.set()  # no hello is coming any more: the handshake can fail now

    async def _dispatch(
        self, line: bytes, log: Any, hello_ready: anyio.Event, tg: anyio.abc.TaskGroup
    ) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            log.warning("sidecar.stdout_not_json", line=line[:200].decode(errors="replace"))
            return
        kind = message.get("type")
        if kind == "reply":
            waiter = self._pending.get(str(message.get("id")))
            if waiter is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    waiter.send_nowait(message)  # a duplicate reply finds the slot taken
        elif kind == "event":
            session = message.get("session")
            data = message.get("data")
            if message.get("event") == "process" and isinstance(data, dict):
                self._track_child(data, log)
            # While an event is being handed over the host, not the sidecar, is slow:
            # the heartbeat must not take that for a hung sidecar.
            self._handing_over += 1
            try:
                await self._on_event(
                    session if isinstance(session, str) else None,
                    str(message.get("event")),
                    data if isinstance(data, dict) else {},
                )
            finally:
                self._handing_over -= 1
                self._last_handover = time.monotonic()
        elif kind == "request":
            tg.start_soon(self._answer, message, log)
        elif kind == "hello" and self.hello is None:
            self.hello = _parse_hello(message)
            hello_ready.set()
        else:
            log.warning("sidecar.unknown_message", type=kind)

    async def _answer(self, message: Mapping[str, Any], log: Any) -> None:
        request_id = message.get("id")
        params = message.get("params")
        try:
            result = await self._on_request(
                str(message.get("method")), params if isinstance(params, dict) else {}
            )
            reply: dict[str, Any] = {
                "type": "reply",
                "id": request_id,
                "ok": True,
                "result": result,
            }
        except Exception as exc:
            log.warning("sidecar.request_failed", method=message.get("method"), error=str(exc))
            code = exc.code if isinstance(exc, SidecarError) else "internal"
            reply = {
                "type": "reply",
                "id": request_id,
                "ok": False,
                "error": {"code": code, "message": str(exc)},
            }
        # Gone meanwhile (or not reading): nobody is waiting for the answer any more.
        with contextlib.suppress(SidecarError), anyio.move_on_after(self.request_timeout):
            await self._write(reply)

    async def _read_stderr(self, log: Any) -> None:
        process = self._process
        assert process is not None
        assert process.stderr is not None
        async for line in bounded_lines(process.stderr, _STDERR_LINE_MAX):
            if isinstance(line, OverlongLine):
                continue
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            self._stderr_tail.append(text[:500])
            _log_stderr_line(log, text)

    async def _heartbeat(self, log: Any) -> None:
        while True:
            await anyio.sleep(self._heartbeat_interval)
            began = time.monotonic()
            try:
                await self.request("ping", {}, seconds=self._heartbeat_timeout)
            except SidecarGoneError:
                return
            except SidecarError as exc:
                if self._handing_over or self._last_handover >= began:
                    # The reply may be queued behind events the host is slow to take:
                    # the host is behind, the sidecar is not hung.
                    log.warning("sidecar.heartbeat_late_host_busy", error=str(exc))
                    continue
                log.error("sidecar.unresponsive", error=str(exc))
                self.kill(f"no heartbeat answer within {self._heartbeat_timeout:g} s")
                return


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), to tell it from a later
    process given the same PID; ``None`` when it is gone or unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _parse_hello(message: Mapping[str, Any]) -> Hello:
    protocol = message.get("protocol")
    pid = message.get("pid")
    return Hello(
        protocol=protocol if isinstance(protocol, int) else -1,
        library=str(message.get("library", "")),
        library_version=str(message.get("libraryVersion", "")),
        node=str(message.get("node", "")),
        pid=pid if isinstance(pid, int) else -1,
    )


def _log_stderr_line(log: Any, text: str) -> None:
    """Copy one stderr line into the host's log: JSON lines keep their fields."""
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        log.info("sidecar.stderr", line=text[:2000])
        return
    level = entry.pop("level", 30)
    name = _PINO_LEVELS.get(level, "info") if isinstance(level, int) else str(level)
    message = str(entry.pop("msg", "") or "")
    session = entry.pop("session", None)
    for noise in ("time", "pid", "hostname", "v"):
        entry.pop(noise, None)
    fields = {f"sidecar_{key}": value for key, value in list(entry.items())[:12]}
    method = getattr(log, name if name != "critical" else "critical", log.info)
    method("sidecar.log", message=message[:2000], session_id=session, **fields)


def node_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a sidecar runs with: the host's, minus what is no business of
    Node's (nothing secret of the host's is meant for the sidecar), plus ``extra``."""
    keep = {key: value for key, value in os.environ.items() if not key.startswith("ENGINEHOST_")}
    keep.update(extra or {})
    return keep
