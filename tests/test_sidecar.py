"""The sidecar toolkit (enginehost.sidecar) against a scripted sidecar process:
line framing, handshake, requests both ways, heartbeat, supervision and multiplexing."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from structlog.testing import capture_logs

from enginehost.core.backoff import Backoff
from enginehost.sidecar import (
    SidecarError,
    SidecarGoneError,
    SidecarPool,
    SidecarProcess,
    SidecarSpec,
)
from enginehost.sidecar.lines import OverlongLine, bounded_lines
from tests.support.procs import alive
from tests.support.wait import until

SCRIPT = Path(__file__).parent / "support" / "scripted_sidecar.py"

pytestmark = pytest.mark.anyio


def _command(*behaviours: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *behaviours]


# ----------------------------------------------------------------------------- lines


class _Chunks(anyio.abc.ByteReceiveStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._chunks:
            raise anyio.EndOfStream
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        self._chunks.clear()


async def _collect(chunks: list[bytes], limit: int) -> list[bytes | OverlongLine]:
    return [line async for line in bounded_lines(_Chunks(chunks), limit)]


async def test_lines_split_across_chunks_and_keep_a_last_unterminated_line() -> None:
    lines = await _collect([b'{"a":', b"1}\n{", b'"b":2}\n\nlast'], 100)
    assert lines == [b'{"a":1}', b'{"b":2}', b"", b"last"]


async def test_an_overlong_line_is_skipped_whole_and_reported_once() -> None:
    lines = await _collect([b"ok\n", b"x" * 30, b"y" * 30, b"z\nnext\n"], 40)
    assert lines == [b"ok", OverlongLine(61), b"next"]
    # Overlong inside one chunk too, and at the end of the stream.
    assert await _collect([b"a" * 50 + b"\nb\n" + b"c" * 45], 40) == [
        OverlongLine(50),
        b"b",
        OverlongLine(45),
    ]


# ----------------------------------------------------------------------------- process


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str | None, str, Mapping[str, Any]]] = []
        self.requests: list[tuple[str, Mapping[str, Any]]] = []

    async def on_event(self, session: str | None, event: str, data: Mapping[str, Any]) -> None:
        self.events.append((session, event, data))

    async def on_request(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        self.requests.append((method, params))
        return {"text": "stored body"}


def _process(recorder: _Recorder, *behaviours: str, **options: Any) -> SidecarProcess:
    return SidecarProcess(
        _command(*behaviours),
        name="scripted",
        init_params={"answer": 42},
        on_event=recorder.on_event,
        on_request=recorder.on_request,
        **options,
    )


async def test_handshake_requests_events_and_requests_from_the_sidecar() -> None:
    recorder = _Recorder()
    process = _process(recorder, "noise", "stderr", max_line_bytes=1000)
    with capture_logs() as logs:
        await _exercise(process, recorder)
    # stdout noise was logged and skipped; stderr lines joined the host's log, the
    # sidecar's JSON log line with its level and session id.
    events = [entry["event"] for entry in logs]
    assert "sidecar.stdout_not_json" in events and "sidecar.line_too_long" in events
    [copied] = [entry for entry in logs if entry.get("message") == "scripted warning"]
    assert copied["log_level"] == "warning" and copied["session_id"] == "s-1"
    assert any(entry.get("line") == "plain stderr text" for entry in logs)


async def _exercise(process: SidecarProcess, recorder: _Recorder) -> None:
    async with anyio.create_task_group() as tg:
        hello = await tg.start(process.run)
        assert hello.protocol == 1
        assert hello.library == "scripted"
        assert hello.pid == process.pid
        # The non-JSON line and the overlong line before the hello were skipped.
        assert await process.request("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        await process.request("session.start", {"session": "s-1"})
        await until(lambda: recorder.events != [])
        assert recorder.events == [("s-1", "qr", {"qr": "Q"})]
        answer = await process.request("ask", {"session": "s-1"})
        assert answer["answer"]["result"] == {"text": "stored body"}
        assert recorder.requests[0][0] == "store.getMessage"
        with pytest.raises(SidecarError) as error:
            await process.request("nope", {})
        assert error.value.code == "unknown_method"
        assert "scripted warning" in " ".join(process.stderr_tail)
        await process.close()
        tg.cancel_scope.cancel()
    assert process.exited.is_set()
    assert process.pid is not None and not alive(process.pid)
    with pytest.raises(SidecarGoneError):
        await process.request("echo", {})


async def test_a_protocol_mismatch_fails_the_start_and_leaves_no_process() -> None:
    process = _process(_Recorder(), "protocol=99")
    async with anyio.create_task_group() as tg:
        with pytest.raises(SidecarGoneError, match="speaks protocol 99"):
            await tg.start(process.run)
    assert process.pid is not None and not alive(process.pid)


async def test_no_hello_within_the_handshake_timeout_fails_clearly() -> None:
    process = _process(_Recorder(), "no-hello", handshake_timeout=0.5)
    async with anyio.create_task_group() as tg:
        with pytest.raises(SidecarGoneError, match="no hello"):
            await tg.start(process.run)
    assert process.pid is not None and not alive(process.pid)


async def test_a_missing_binary_is_a_clear_error() -> None:
    process = SidecarProcess(
        ["/nonexistent/node"],
        name="missing",
        init_params={},
        on_event=_Recorder().on_event,
        on_request=_Recorder().on_request,
    )
    async with anyio.create_task_group() as tg:
        with pytest.raises(SidecarGoneError, match="could not start"):
            await tg.start(process.run)


async def test_an_unanswered_heartbeat_kills_the_sidecar() -> None:
    process = _process(_Recorder(), "hang-pings", heartbeat_interval=0.1, heartbeat_timeout=0.3)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        with anyio.fail_after(5):
            await process.exited.wait()
    assert "heartbeat" in process.exit_reason
    assert process.pid is not None and not alive(process.pid)


async def test_a_slow_host_is_not_taken_for_a_hung_sidecar() -> None:
    # The host takes each event slowly; the sidecar's ping replies queue behind them in
    # the pipe, so pings time out although the sidecar is fine.
    taken: list[int] = []

    async def slow(session: str | None, event: str, data: Mapping[str, Any]) -> None:
        await anyio.sleep(0.05)
        taken.append(data["n"])

    process = SidecarProcess(
        _command("flood=30"),
        name="flooding",
        init_params={},
        on_event=slow,
        on_request=_Recorder().on_request,
        heartbeat_interval=0.05,
        heartbeat_timeout=0.2,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await until(lambda: len(taken) == 30, within=10)
        assert not process.exited.is_set()
        assert await process.request("ping", {}) == {"sessions": 0, "rss": 1, "heapUsed": 1}
        await process.close()
    assert taken == list(range(30))


async def test_process_groups_a_dead_sidecar_reported_are_killed() -> None:
    recorder = _Recorder()
    process = _process(recorder, "child", heartbeat_interval=60)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await until(lambda: process.child_process_groups != frozenset())
        [child] = process.child_process_groups
        assert alive(child)
        assert recorder.events[0][1] == "process"  # still forwarded to the bridge
        assert process.pid is not None
        os.kill(process.pid, 9)  # the sidecar dies without a word; its child would stay
        with anyio.fail_after(10):
            await process.exited.wait()
    await until(lambda: not alive(child), within=5)


async def test_requests_waiting_when_the_sidecar_dies_fail_at_once() -> None:
    process = _process(_Recorder(), "hang-pings", heartbeat_interval=60)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await process.request("ping", {})

        async def kill_soon() -> None:
            await anyio.sleep(0.2)
            process.kill("test kill")

        tg.start_soon(kill_soon)
        with anyio.fail_after(5), pytest.raises(SidecarGoneError):
            await process.request("ping", {})  # never answered: the kill ends the wait
    assert process.exit_reason == "test kill"


# ----------------------------------------------------------------------------- pool


class _Link:
    def __init__(self) -> None:
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self.lost: list[str] = []

    async def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.events.append((event, data))

    async def on_lost(self, reason: str) -> None:
        self.lost.append(reason)


def _spec(*behaviours: str, per_sidecar: int = 2, **options: Any) -> SidecarSpec:
    values: dict[str, Any] = {
        "restart_backoff": Backoff(base=0.05, cap=0.1),
        "idle_close_after": 0.3,
        **options,
    }
    return SidecarSpec(
        name="scripted",
        command=_command(*behaviours),
        init_params={},
        sessions_per_sidecar=per_sidecar,
        **values,
    )


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


async def test_sessions_fill_sidecars_up_to_the_limit_and_events_reach_their_session(
    task_group: anyio.abc.TaskGroup,
) -> None:
    pool = SidecarPool(_spec(per_sidecar=2), _Recorder().on_request)
    links = {name: _Link() for name in ("a", "b", "c")}
    leases = {name: await pool.attach(name, link, task_group) for name, link in links.items()}
    snapshot = pool.snapshot()
    assert [entry["sessions"] for entry in snapshot] == [["a", "b"], ["c"]]
    assert leases["a"].pid == leases["b"].pid != leases["c"].pid
    for name, lease in leases.items():
        await lease.request("session.start")
        await until(lambda name=name: links[name].events != [])
        assert links[name].events == [("qr", {"qr": "Q"})]
    pids = pool.pids()
    await pool.aclose()
    assert not any(alive(pid) for pid in pids)
    # Sessions still attached hear that their connection ended, and why.
    assert all(link.lost == ["closed by the host"] for link in links.values())


async def test_a_dead_sidecar_tells_each_of_its_sessions_and_is_replaced(
    task_group: anyio.abc.TaskGroup,
) -> None:
    pool = SidecarPool(_spec(per_sidecar=5), _Recorder().on_request)
    links = [_Link(), _Link()]
    first = [await pool.attach(f"s{i}", link, task_group) for i, link in enumerate(links)]
    old_pid = first[0].pid
    assert old_pid is not None
    os.kill(old_pid, 9)
    await until(lambda: all(link.lost for link in links))
    assert "signal 9" in links[0].lost[0]
    assert pool.snapshot() == []
    with pytest.raises(SidecarGoneError):
        await first[0].request("echo")
    # The reconnect attaches to a fresh sidecar (after the crash backoff).
    again = await pool.attach("s0", _Link(), task_group)
    assert again.pid not in (None, old_pid)
    assert await again.request("echo", {"v": 1}) == {"v": 1, "session": "s0"}
    await pool.aclose()


async def test_an_idle_sidecar_is_closed_after_its_grace_period(
    task_group: anyio.abc.TaskGroup,
) -> None:
    pool = SidecarPool(_spec(idle_close_after=0.2), _Recorder().on_request)
    lease = await pool.attach("s", _Link(), task_group)
    pid = lease.pid
    assert pid is not None
    lease.detach()
    # A session coming back within the grace period keeps the same process...
    again = await pool.attach("s", _Link(), task_group)
    assert again.pid == pid
    again.detach()
    # ... and once it is really idle, the process ends.
    await until(lambda: pool.snapshot() == [] and not alive(pid), within=5)
    await pool.aclose()


async def test_a_sidecar_that_fails_to_start_fails_the_attach_with_its_reason(
    task_group: anyio.abc.TaskGroup,
) -> None:
    pool = SidecarPool(_spec("protocol=7"), _Recorder().on_request)
    with pytest.raises(SidecarGoneError, match="protocol 7"):
        await pool.attach("s", _Link(), task_group)
    assert pool.snapshot() == []
