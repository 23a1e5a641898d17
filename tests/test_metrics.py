"""``GET /metrics``: who may scrape, what the exposition says, and where its numbers come from.

The route is mounted at the root by the app; until it is, :func:`metrics_api` mounts it
on the test host itself, so these tests hold either way.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enginehost.core import metrics as metrics_module
from enginehost.core.engine import DisconnectClassification
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.http import metrics as metrics_route
from enginehost.core.http.auth import api_routes, route_rule
from enginehost.core.metrics import CONTENT_TYPE, HostMetrics
from enginehost.core.sessions.models import SessionRecord
from enginehost.plugins.sandbox import SandboxEngine
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

METRICS_TOKEN = "metrics-token-7f3a9c1e5b2d4086a1c3e5f7b9d0c2e4"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def metrics_api(tmp_path: Path, **settings: Any) -> AsyncIterator[ApiHarness]:
    values = {"default_engine": "sandbox", "session_teardown_timeout": 1.0, **settings}
    async with api_harness(tmp_path, **values) as api:
        yield api


class HostWith:
    """The host's state with attributes its :class:`AppState` may not have (a delivery
    dispatcher, its metrics): what the route reads, without the daemon wiring them."""

    def __init__(self, state: Any, **extra: Any) -> None:
        self._state = state
        self.__dict__.update(extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class FakeDeliveries:
    """A delivery dispatcher as far as the metrics can see."""

    def __init__(self, outcomes: Mapping[str, int], depth: int, dead: int) -> None:
        self.outcomes = dict(outcomes)
        self.depth = depth
        self.dead = dead

    def delivery_outcomes(self) -> Mapping[str, int]:
        return self.outcomes

    async def outbox_depth(self) -> int:
        return self.depth

    async def dead_letter_count(self) -> int:
        return self.dead


class BrokenDeliveries(FakeDeliveries):
    async def outbox_depth(self) -> int:
        raise RuntimeError("the outbox table is gone")


class HangingRows:
    async def list(self) -> Sequence[SessionRecord]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def parse(text: str) -> Samples:
    """Every sample of an exposition by name and labels (it must parse to be read)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(response.text)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 5) -> None:
    with anyio.fail_after(within):
        while not await check():
            await anyio.sleep(0.02)


async def wait_status(client: httpx.AsyncClient, session: str, status: str) -> None:
    async def reached() -> bool:
        response = await client.get(f"/api/sessions/{session}")
        return bool(response.json()["status"] == status)

    await wait_until(reached)


def sandbox(api: ApiHarness, session_id: str) -> SandboxEngine:
    plugin: Any = api.state.plugins.engines["sandbox"].instance
    engine: SandboxEngine = plugin.engine_for(session_id)
    return engine


# ---------------------------------------------------------------------------- access


async def test_an_admin_key_scrapes_the_text_format(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        for client in (api.client(api.admin_secret), api.client(api.admin_secret, bearer=True)):
            samples = await scrape(client)
            assert value(samples, "enginehost_info", version=api.state.version) == 1
            assert value(samples, "enginehost_messages_total", direction="received") == 0
            assert value(samples, "enginehost_metrics_source_up", source="sessions") == 1
            assert value(samples, "enginehost_sessions", status="created", engine="sandbox") == 0
            # The host's own dispatcher, with an empty outbox.
            assert value(samples, "enginehost_webhook_outbox_depth") == 0
            assert value(samples, "enginehost_webhook_dead_letters") == 0
            assert value(samples, "enginehost_metrics_source_up", source="webhooks") == 1


async def test_refusals_use_the_error_model(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        nobody = await api.client().get("/metrics")
        assert_error(nobody, 401, "unauthorized")
        assert nobody.headers["WWW-Authenticate"].startswith("Bearer")
        unknown = await api.client("ehk_" + "x" * 43, bearer=True).get("/metrics")
        assert_error(unknown, 401, "unauthorized")
        for role in ("viewer", "operator"):
            lesser = await api.client(await api.key(role)).get("/metrics")
            assert_error(lesser, 403, "forbidden_role")
        limited = await api.client(await api.key("operator", sessions=["alpha"])).get("/metrics")
        assert_error(limited, 403, "forbidden_role")
        # No token is set: a bearer that is not a key is just a wrong key.
        assert_error(
            await api.client(METRICS_TOKEN, bearer=True).get("/metrics"), 401, "unauthorized"
        )


async def test_the_metrics_token_scrapes_and_is_never_echoed(tmp_path: Path) -> None:
    async with metrics_api(tmp_path, metrics_token=METRICS_TOKEN) as api:
        samples = await scrape(api.client(METRICS_TOKEN, bearer=True))
        assert value(samples, "enginehost_metrics_source_up", source="sessions") == 1
        lowercase = await api.client().get(
            "/metrics", headers={"Authorization": f"bearer   {METRICS_TOKEN} "}
        )
        assert lowercase.status_code == 200
        # Admin keys still work beside the token.
        assert (await api.client(api.admin_secret).get("/metrics")).status_code == 200

        refused = [
            await api.client(METRICS_TOKEN[:-1] + "0", bearer=True).get("/metrics"),
            await api.client(METRICS_TOKEN + "0", bearer=True).get("/metrics"),
            # The token is a bearer token only, not an API key in X-API-Key.
            await api.client(METRICS_TOKEN).get("/metrics"),
            await api.client().get("/metrics", headers={"Authorization": f"Basic {METRICS_TOKEN}"}),
        ]
        for response in refused:
            assert_error(response, 401, "unauthorized")
            assert METRICS_TOKEN[:16] not in response.text
            assert METRICS_TOKEN[:16] not in str(response.headers)
        viewer = await api.client(await api.key("viewer")).get("/metrics")
        assert_error(viewer, 403, "forbidden_role")


async def test_the_route_declares_its_rule_and_is_documented(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        [route] = [r for r in api_routes(api.app) if r.path == "/metrics"]
        assert route_rule(route) == metrics_route.RULE
        assert route.methods == {"GET"}
        document = (await api.client().get("/api/openapi.json")).json()
        operation = document["paths"]["/metrics"]["get"]
        assert operation["x-access-rule"] == {"public": False, "role": "admin", "scope": "global"}
        assert "ENGINEHOST_METRICS_TOKEN" in operation["description"]
        assert set(operation["responses"]["200"]["content"]) == {"text/plain"}
        assert {"401", "403", "500", "503"} <= set(operation["responses"])


async def test_the_host_metrics_object_is_found_or_made_once(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        made = metrics_route.host_metrics(api.app)
        assert metrics_route.host_metrics(api.app) is made
        own = HostMetrics(version="9.9.9", process=False)
        api.app.state.host = HostWith(api.state, metrics=own)
        assert metrics_route.host_metrics(api.app) is own
        samples = await scrape(api.client(api.admin_secret))
        assert value(samples, "enginehost_info", version="9.9.9") == 1


# ---------------------------------------------------------------------------- numbers


async def test_session_gauges_follow_sessions_made_through_the_api(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        admin = api.client(api.admin_secret)
        for name in ("alpha", "beta"):
            response = await admin.post("/api/sessions", json={"name": name})
            assert response.status_code == 201, response.text
        samples = await scrape(admin)
        assert value(samples, "enginehost_sessions", status="created", engine="sandbox") == 2
        assert value(samples, "enginehost_sessions", status="ready", engine="sandbox") == 0
        stopped = value(
            samples, "enginehost_sessions_desired", desired_state="stopped", engine="sandbox"
        )
        assert stopped == 2

        assert (await admin.post("/api/sessions/beta/start")).status_code == 200
        await wait_status(admin, "beta", "qr_ready")
        samples = await scrape(admin)
        assert value(samples, "enginehost_sessions", status="created", engine="sandbox") == 1
        assert value(samples, "enginehost_sessions", status="qr_ready", engine="sandbox") == 1
        running = value(
            samples, "enginehost_sessions_desired", desired_state="running", engine="sandbox"
        )
        assert running == 1
        total = sum(v for (name, _), v in samples.items() if name == "enginehost_sessions")
        assert total == 2


async def test_counters_follow_a_session_s_life_on_the_bus(tmp_path: Path) -> None:
    async with metrics_api(tmp_path, reconnect_base=0.1, reconnect_cap=1.0) as api:
        admin = api.client(api.admin_secret)
        # The host's metrics count the bus as in the daemon (the harness runs them).
        assert metrics_route.host_metrics(api.app) is api.state.metrics
        created = await admin.post("/api/sessions", json={"name": "alpha"})
        session_id = created.json()["id"]
        await admin.post("/api/sessions/alpha/start")
        await wait_status(admin, "alpha", "qr_ready")
        await sandbox(api, session_id).scan()
        await wait_status(admin, "alpha", "ready")
        engine = sandbox(api, session_id)
        await engine.receive_text("15551234567@c.us", "hello")
        await engine.receive_text("15551234567@c.us", "again")
        await engine.compose_on_phone("15551234567@c.us", "from the phone")
        await engine.drop(DisconnectClassification.TRANSIENT, reason="network gone")
        await wait_until(lambda: _reached(admin, "enginehost_session_reconnects_total", 1))
        await wait_status(admin, "alpha", "ready")
        # A send the engine fails: the store announces message.failed.
        engine = sandbox(api, session_id)

        async def broken(message: Any) -> Any:
            raise RuntimeError("the network is gone")

        engine._send = broken  # type: ignore[method-assign]
        body = {"chatId": "15551234567@c.us", "text": "lost"}
        failed = await admin.post(f"/api/sessions/{session_id}/messages/send-text", json=body)
        assert failed.status_code >= 400, failed.text
        await wait_until(lambda: _reached(admin, "enginehost_message_send_failures_total", 1))
        await wait_until(
            lambda: _reached(admin, "enginehost_session_transitions_total", 2, status="ready")
        )
        samples = await scrape(admin)
        assert value(samples, "enginehost_messages_total", direction="received") == 2
        assert value(samples, "enginehost_messages_total", direction="sent") == 1
        assert value(samples, "enginehost_session_reconnects_total") == 1
        assert value(samples, "enginehost_session_transitions_total", status="qr_ready") == 1
        assert value(samples, "enginehost_session_transitions_total", status="failed") == 0


async def _reached(client: httpx.AsyncClient, name: str, at_least: float, **labels: str) -> bool:
    return value(await scrape(client), name, **labels) >= at_least


async def test_only_counted_events_move_the_counters() -> None:
    metrics = HostMetrics(version="1.0", process=False)
    bus = EventBus()
    events = [
        HostEvent("message.received", "s1", {"messageId": "A"}),
        HostEvent("message.sent", "s1"),
        HostEvent("message.sent", "s2"),
        HostEvent("message.failed", "s1", {"error": "no such chat"}),
        HostEvent("message.ack", "s1", {"status": "read"}),
        HostEvent("session.qr", "s1", {"qr": "x"}),
        HostEvent("session.status", "s1", {"status": "initializing", "reason": "starting"}),
        HostEvent(
            "session.status",
            "s1",
            {"status": "initializing", "reason": "reconnecting (attempt 3): network gone"},
        ),
        HostEvent("session.status", "s1", {"status": "ready", "reason": None}),
        # A reason that merely mentions reconnecting is not a reconnect.
        HostEvent("session.status", "s2", {"status": "failed", "reason": "gave up reconnecting"}),
    ]
    async with anyio.create_task_group() as tg:
        await tg.start(metrics.run, bus)
        for event in events:
            bus.publish(event)
        await wait_until(
            lambda: _rendered(metrics, 'enginehost_session_transitions_total{status="failed"} 1.0')
        )
        tg.cancel_scope.cancel()
    samples = parse((await metrics.render(_NoRows())).decode())
    assert value(samples, "enginehost_messages_total", direction="received") == 1
    assert value(samples, "enginehost_messages_total", direction="sent") == 2
    assert value(samples, "enginehost_message_send_failures_total") == 1
    assert value(samples, "enginehost_session_reconnects_total") == 1
    assert value(samples, "enginehost_session_transitions_total", status="initializing") == 2
    assert value(samples, "enginehost_session_transitions_total", status="ready") == 1
    assert value(samples, "enginehost_session_transitions_total", status="qr_ready") == 0


class _NoRows:
    async def list(self) -> Sequence[SessionRecord]:
        return []


async def _rendered(metrics: HostMetrics, line: str) -> bool:
    return line in (await metrics.render(_NoRows())).decode().splitlines()


async def test_counting_is_inline_and_misses_nothing() -> None:
    """A burst published with no await in between is counted whole, and a counter
    that stopped (the daemon shutting down) counts nothing more."""
    metrics = HostMetrics(version="1.0", process=False)
    bus = EventBus()
    async with anyio.create_task_group() as tg:
        await tg.start(metrics.run, bus)
        for _ in range(5_000):  # no await between: no task could have taken any
            bus.publish(HostEvent("message.received", "s1"))
        samples = parse((await metrics.render(_NoRows())).decode())
        assert value(samples, "enginehost_messages_total", direction="received") == 5_000
        tg.cancel_scope.cancel()
    bus.publish(HostEvent("message.received", "s1"))
    samples = parse((await metrics.render(_NoRows())).decode())
    assert value(samples, "enginehost_messages_total", direction="received") == 5_000


async def test_hosts_in_one_process_keep_their_own_metrics() -> None:
    first, second = HostMetrics(version="1.0"), HostMetrics(version="2.0")
    first.count(HostEvent("message.received", "s1"))
    one = parse((await first.render(_NoRows())).decode())
    two = parse((await second.render(_NoRows())).decode())
    assert value(one, "enginehost_messages_total", direction="received") == 1
    assert value(two, "enginehost_messages_total", direction="received") == 0
    assert value(two, "enginehost_info", version="2.0") == 1
    assert ("enginehost_info", frozenset({("version", "1.0")})) not in two
    if sys.platform == "linux":  # the process collector reads /proc
        assert value(two, "process_cpu_seconds_total") >= 0


# ----------------------------------------------------------------------------- webhooks


async def test_delivery_statistics_come_from_the_dispatcher(tmp_path: Path) -> None:
    async with metrics_api(tmp_path) as api:
        deliveries = FakeDeliveries({"delivered": 7, "failed_attempt": 3, "dead_lettered": 1}, 4, 2)
        api.app.state.host = HostWith(api.state, deliveries=deliveries)
        admin = api.client(api.admin_secret)
        samples = await scrape(admin)
        assert value(samples, "enginehost_metrics_source_up", source="webhooks") == 1
        assert value(samples, "enginehost_webhook_deliveries_total", outcome="delivered") == 7
        assert value(samples, "enginehost_webhook_deliveries_total", outcome="failed_attempt") == 3
        assert value(samples, "enginehost_webhook_deliveries_total", outcome="dead_lettered") == 1
        assert value(samples, "enginehost_webhook_outbox_depth") == 4
        assert value(samples, "enginehost_webhook_dead_letters") == 2

        deliveries.outcomes["delivered"] = 9
        deliveries.outcomes["dropped"] = 1
        deliveries.depth = 0
        samples = await scrape(admin)  # read afresh on every scrape
        assert value(samples, "enginehost_webhook_deliveries_total", outcome="delivered") == 9
        assert value(samples, "enginehost_webhook_deliveries_total", outcome="dropped") == 1
        assert value(samples, "enginehost_webhook_outbox_depth") == 0


async def test_a_failing_source_costs_only_its_own_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with metrics_api(tmp_path) as api:
        await api.session("alpha")
        api.app.state.host = HostWith(
            api.state, deliveries=BrokenDeliveries({"delivered": 1}, 0, 0)
        )
        samples = await scrape(api.client(api.admin_secret))
        assert value(samples, "enginehost_metrics_source_up", source="webhooks") == 0
        assert not {name for name in names(samples) if name.startswith("enginehost_webhook")}
        assert value(samples, "enginehost_metrics_source_up", source="sessions") == 1
        assert value(samples, "enginehost_sessions", status="created", engine="sandbox") == 1

    monkeypatch.setattr(metrics_module, "READ_TIMEOUT", 0.05)
    metrics = HostMetrics(version="1.0", process=False)
    with anyio.fail_after(5):
        samples = parse((await metrics.render(HangingRows(), engines=["sandbox"])).decode())
    assert value(samples, "enginehost_metrics_source_up", source="sessions") == 0
    assert "enginehost_sessions" not in names(samples)
    assert value(samples, "enginehost_messages_total", direction="sent") == 0
