"""The engine base class: single-use life, background work isolation, config refinement."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from enginehost import (
    Capability,
    Engine,
    EngineClosedError,
    EngineConfig,
    EngineEvent,
    EngineNotRunningError,
    EnginePlugin,
    EngineState,
    ErrorEvent,
    EventSink,
    ReadyEvent,
    SessionInfo,
    UnsupportedOperationError,
)
from enginehost.core.backoff import Backoff

pytestmark = pytest.mark.anyio


class Probe(Engine):
    """Counts teardown calls; its start can be made slow or failing."""

    def __init__(self, start_delay: float = 0, fail: bool = False) -> None:
        super().__init__(SessionInfo(id="s1", name="one"), engine_name="probe")
        self.start_delay = start_delay
        self.fail = fail
        self.calls: list[str] = []

    async def _start(self, sink: EventSink) -> None:
        self.calls.append("start")
        await anyio.sleep(self.start_delay)
        if self.fail:
            raise RuntimeError("cannot connect")
        await sink(ReadyEvent(own_id="1@c.us"))

    async def _stop(self) -> None:
        self.calls.append("stop")

    async def _logout(self) -> None:
        self.calls.append("logout")


class Collector:
    def __init__(self) -> None:
        self.events: list[EngineEvent] = []

    async def __call__(self, event: EngineEvent) -> None:
        self.events.append(event)


async def test_life_is_new_running_closed_and_single_use() -> None:
    engine, sink = Probe(), Collector()
    assert engine.state is EngineState.NEW
    async with anyio.create_task_group() as tg:
        await engine.start(sink, tg)
        assert engine.state is EngineState.RUNNING
        assert sink.events == [ReadyEvent(own_id="1@c.us")]
        await engine.stop()
        await engine.stop()  # idempotent
        assert engine.state is EngineState.CLOSED
        with pytest.raises(EngineClosedError, match="single-use"):
            await engine.start(sink, tg)
    assert engine.calls == ["start", "stop"]


async def test_stop_during_start_wins() -> None:
    engine = Probe(start_delay=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.start, Collector(), tg)
        await anyio.sleep(0.05)
        await engine.stop()
    assert engine.state is EngineState.CLOSED  # not resurrected to running by _start returning


async def test_failed_start_closes_and_skips_stop() -> None:
    engine = Probe(fail=True)
    async with anyio.create_task_group() as tg:
        with pytest.raises(RuntimeError, match="cannot connect"):
            await engine.start(Collector(), tg)
    assert engine.state is EngineState.CLOSED
    await engine.stop()
    assert engine.calls == ["start"]


async def test_logout_runs_once_even_without_start() -> None:
    engine = Probe()
    await engine.logout()
    await engine.logout()
    assert engine.calls == ["logout"]
    stopped_first = Probe()
    async with anyio.create_task_group() as tg:
        await stopped_first.start(Collector(), tg)
        await stopped_first.stop()
    await stopped_first.logout()  # wiping auth after a stop is still possible
    assert stopped_first.calls == ["start", "stop", "logout"]


async def test_background_failure_becomes_an_error_event_not_a_crash() -> None:
    engine, sink = Probe(), Collector()

    async def explode() -> None:
        raise ValueError("socket went away")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await engine.start(sink, tg)
            engine.spawn(explode)
            await anyio.sleep(0.05)
            await engine.stop()
    assert ErrorEvent(message="background task failed: socket went away") in sink.events


async def test_background_work_is_cancelled_at_teardown() -> None:
    engine = Probe()
    finished = False

    async def forever() -> None:
        nonlocal finished
        await anyio.sleep(60)
        finished = True

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await engine.start(Collector(), tg)
            engine.spawn(forever)
            await engine.stop()
    assert finished is False
    with pytest.raises(EngineNotRunningError):
        engine.spawn(forever)


async def test_unsupported_operations_name_the_capability() -> None:
    engine = Probe()
    with pytest.raises(UnsupportedOperationError, match="does not support send_location") as caught:
        await engine.send_location("1@c.us", 1.0, 2.0)
    assert caught.value.capability is Capability.SEND_LOCATION
    with pytest.raises(EngineNotRunningError, match="is new"):
        engine.require_running()


class Paths(EngineConfig):
    auth_dir: str = "default"
    retries: int = 1


class Refining(EnginePlugin[Paths]):
    name = "refining"
    config_model = Paths

    def create_engine(self, session: SessionInfo) -> Engine:
        return Probe()


def test_refine_config_validates_and_applies_only_after_enable() -> None:
    plugin = Refining({"auth_dir": "/operator"}, data_dir=Path("/unused"))
    assert plugin.config.auth_dir == "/operator"
    with pytest.raises(ValidationError):
        plugin.refine_config(retries="many")
    plugin.refine_config(retries="3")
    assert plugin.config.retries == 1  # proposed, not applied: enable has not returned


def test_backoff_is_capped_full_jitter() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert [backoff.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.ceiling(10_000) == 60
    assert backoff.delay(3, uniform=lambda low, high: high) == 8
    assert backoff.delay(3, uniform=lambda low, high: low) == 0
    with pytest.raises(ValueError, match="base <= cap"):
        Backoff(base=5, cap=1)


def test_reconnect_attempts_count_from_one_on_the_shared_backoff() -> None:
    from enginehost.core.sessions.reconnect import ReconnectPolicy

    policy = ReconnectPolicy(base=2.0, cap=30.0)
    assert [policy.ceiling(attempt) for attempt in (1, 2, 3, 4, 5, 1_000)] == [2, 4, 8, 16, 30, 30]
    assert 0 <= policy.delay(3) <= 8
