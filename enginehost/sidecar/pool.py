"""Sessions multiplexed onto sidecar processes, which are supervised and replaced.

A bridge plugin owns one :class:`SidecarPool`. Each session connection attaches to a
sidecar with room (at most ``sessions_per_sidecar``), starting a new sidecar when none
has. When a sidecar exits or stops answering its heartbeat, every session attached to
it is told through :meth:`SessionLink.on_lost`, so its engine reports a transient
disconnect and the host's reconnect policy brings it back on a fresh sidecar. New
sidecars after crashes start with capped, jittered backoff; an idle sidecar lingers a
little (a reconnecting session reuses it) and is then closed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc

from enginehost.core.backoff import Backoff
from enginehost.core.logging import get_logger
from enginehost.sidecar.process import Hello, SidecarGoneError, SidecarProcess

__all__ = ["SessionLink", "SidecarLease", "SidecarPool", "SidecarSpec", "TaskStarter"]

_log = get_logger("enginehost.sidecar.pool")

RequestHandler = Callable[[str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


class TaskStarter(Protocol):
    """Where the pool runs its sidecars: an anyio task group, or the host's
    :class:`~enginehost.core.services.BackgroundTasks`. It must outlive the sidecars."""

    async def start(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any: ...

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...


class SessionLink(Protocol):
    """What an attached session connection hears from its sidecar."""

    async def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        """A session event (``qr``, ``open``, ``message`` ...), in the sidecar's order."""

    async def on_lost(self, reason: str) -> None:
        """The sidecar died; nothing more will come through this lease."""


@dataclass(frozen=True, slots=True)
class SidecarSpec:
    """How a bridge's sidecars are started and how many sessions each may hold."""

    name: str
    command: Sequence[str]
    init_params: Mapping[str, Any]
    sessions_per_sidecar: int
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    max_line_bytes: int = 1024 * 1024
    handshake_timeout: float = 20.0
    request_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    restart_backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0))
    stable_after: float = 60.0
    """A sidecar that lived this long resets the crash count (and so the backoff)."""
    idle_close_after: float = 30.0
    """Seconds a sidecar with no session lingers before it is closed."""


class _Member:
    """A sidecar of the pool and the sessions attached to it."""

    def __init__(self, process: SidecarProcess) -> None:
        self.process = process
        self.links: dict[str, SessionLink] = {}
        self.reserved = 0  # attaches in progress, counted so a burst spreads out
        self.started_at = time.monotonic()
        self.idle_since: float | None = None

    @property
    def load(self) -> int:
        return len(self.links) + self.reserved

    @property
    def alive(self) -> bool:
        return not self.process.exited.is_set()


class SidecarLease:
    """One session's attachment to one sidecar. Requests name the session for you."""

    def __init__(
        self, pool: SidecarPool, member: _Member, session_id: str, link: SessionLink
    ) -> None:
        self._pool = pool
        self._member = member
        self.session_id = session_id
        self._link = link
        self._detached = False

    @property
    def pid(self) -> int | None:
        return self._member.process.pid

    @property
    def hello(self) -> Hello | None:
        return self._member.process.hello

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, *, seconds: float | None = None
    ) -> Mapping[str, Any]:
        if self._detached:
            raise SidecarGoneError("detached", f"session {self.session_id} left its sidecar")
        return await self._member.process.request(
            method, {**(params or {}), "session": self.session_id}, seconds=seconds
        )

    def detach(self) -> None:
        """Stop hearing this sidecar's events for the session. Idempotent."""
        if self._detached:
            return
        self._detached = True
        self._pool._release(self._member, self.session_id, self._link)


class SidecarPool:
    """The sidecars of one bridge (see the module docstring)."""

    def __init__(self, spec: SidecarSpec, on_request: RequestHandler) -> None:
        if spec.sessions_per_sidecar < 1:
            raise ValueError("sessions_per_sidecar must be at least 1")
        self.spec = spec
        self._on_request = on_request
        self._members: list[_Member] = []
        self._spawn_lock = anyio.Lock()
        self._crashes = 0
        self._next_spawn_at = 0.0
        self._closed = False
        self._task_group: TaskStarter | None = None
        self._serial = 0

    # ------------------------------------------------------------------ attaching

    async def attach(
        self, session_id: str, link: SessionLink, task_group: TaskStarter
    ) -> SidecarLease:
        """Attach a session to a sidecar with room, starting one if needed.

        ``task_group`` runs the sidecars and must outlive them (in a plugin: the host's
        ``services.background``).
        Raises :class:`SidecarGoneError` when a sidecar cannot be started.
        """
        if self._closed:
            raise SidecarGoneError("closed", f"the {self.spec.name} bridge is shutting down")
        self._task_group = task_group
        async with self._spawn_lock:
            member = self._member_with_room()
            if member is None:
                member = await self._spawn(task_group)
            member.reserved += 1
        try:
            if session_id in member.links:
                # A replacement connection of the same session: the old link is done.
                member.links.pop(session_id)
            member.links[session_id] = link
            member.idle_since = None
        finally:
            member.reserved -= 1
        return SidecarLease(self, member, session_id, link)

    def _member_with_room(self) -> _Member | None:
        # Fill sidecars in order: fewer processes, and the fixed cost of each (a Node
        # runtime with the library loaded) is paid as rarely as possible.
        for member in self._members:
            if member.alive and member.load < self.spec.sessions_per_sidecar:
                return member
        return None

    async def _spawn(self, task_group: TaskStarter) -> _Member:
        wait = self._next_spawn_at - time.monotonic()
        if wait > 0:
            _log.info("sidecar.restart_backoff", bridge=self.spec.name, seconds=round(wait, 2))
            await anyio.sleep(wait)
        self._serial += 1
        spec = self.spec
        member_box: list[_Member] = []

        async def on_event(session: str | None, event: str, data: Mapping[str, Any]) -> None:
            await self._route(member_box[0], session, event, data)

        process = SidecarProcess(
            spec.command,
            name=f"{spec.name}-{self._serial}",
            init_params=spec.init_params,
            on_event=on_event,
            on_request=self._on_request,
            cwd=spec.cwd,
            env=spec.env,
            max_line_bytes=spec.max_line_bytes,
            handshake_timeout=spec.handshake_timeout,
            request_timeout=spec.request_timeout,
            heartbeat_interval=spec.heartbeat_interval,
            heartbeat_timeout=spec.heartbeat_timeout,
        )
        member = _Member(process)
        member_box.append(member)
        try:
            await task_group.start(self._supervise, member)
        except BaseException:
            self._note_crash()
            raise
        if self._closed:  # the pool closed while this one was starting
            await member.process.close()
            raise SidecarGoneError("closed", f"the {self.spec.name} bridge is shutting down")
        self._members.append(member)
        return member

    async def _supervise(self, member: _Member, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False

        class _Started:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started()

        try:
            await member.process.run(task_status=_Started())
        except Exception as exc:
            if not started:
                raise
            _log.error("sidecar.failed", sidecar=member.process.name, error=str(exc))
        finally:
            if started:
                with anyio.CancelScope(shield=True):
                    await self._lost(member)

    async def _lost(self, member: _Member) -> None:
        if member in self._members:
            self._members.remove(member)
        links, member.links = dict(member.links), {}
        if not member.process.closing_by_host:
            if time.monotonic() - member.started_at >= self.spec.stable_after:
                self._crashes = 0
            self._note_crash()
        reason = member.process.exit_reason
        for session_id, link in links.items():
            try:
                await link.on_lost(reason)
            except Exception as exc:  # one session's handler must not starve the others
                _log.error("sidecar.lost_handler_failed", session_id=session_id, error=str(exc))

    def _note_crash(self) -> None:
        delay = self.spec.restart_backoff.delay(self._crashes)
        self._crashes += 1
        self._next_spawn_at = time.monotonic() + delay

    # ------------------------------------------------------------------ routing

    async def _route(
        self, member: _Member, session: str | None, event: str, data: Mapping[str, Any]
    ) -> None:
        if session is None:
            level = "error" if event == "error" else "info"
            getattr(_log, level)(
                "sidecar.event", sidecar=member.process.name, sidecar_event=event, **_safe(data)
            )
            return
        link = member.links.get(session)
        if link is None:
            # Late events of a session that already left (or never came) change nothing.
            _log.debug("sidecar.event_unrouted", session_id=session, sidecar_event=event)
            return
        await link.on_event(event, data)

    def _release(self, member: _Member, session_id: str, link: SessionLink) -> None:
        # Only this lease's link: a newer connection of the session may hold the slot.
        if member.links.get(session_id) is link:
            del member.links[session_id]
        if member.load == 0 and member.alive and not self._closed:
            member.idle_since = time.monotonic()
            if self._task_group is not None:
                self._task_group.start_soon(self._close_if_idle, member)

    async def _close_if_idle(self, member: _Member) -> None:
        await anyio.sleep(self.spec.idle_close_after)
        idle_since = member.idle_since
        if (
            idle_since is not None
            and member.load == 0
            and time.monotonic() - idle_since >= self.spec.idle_close_after * 0.99
            and member in self._members
        ):
            # Out of the pool first, so no session attaches to a sidecar that is closing.
            self._members.remove(member)
            await member.process.close()

    # ------------------------------------------------------------------ inspection, close

    def snapshot(self) -> list[dict[str, Any]]:
        """The live sidecars: name, PID and attached session ids."""
        return [
            {
                "name": member.process.name,
                "pid": member.process.pid,
                "sessions": sorted(member.links),
            }
            for member in self._members
            if member.alive
        ]

    async def broadcast(self, method: str) -> list[Mapping[str, Any]]:
        """Ask every live sidecar ``method`` (no params); the answers, in pool order."""
        return [
            await member.process.request(method, {}) for member in self._members if member.alive
        ]

    def pids(self) -> list[int]:
        return [m.process.pid for m in self._members if m.alive and m.process.pid is not None]

    async def aclose(self) -> None:
        """Close every sidecar (each ends its sockets and exits), killing stragglers."""
        self._closed = True
        async with anyio.create_task_group() as tg:
            for member in list(self._members):
                tg.start_soon(member.process.close)


def _safe(data: Mapping[str, Any]) -> dict[str, Any]:
    return {f"data_{key}": str(value)[:500] for key, value in list(data.items())[:8]}
