"""Webhooks end to end, in process: a sandbox session lives a full life, and its webhook
(registered through the API) receives every catalogue event, signed and valid.

The host is the daemon's own wiring (tests/support/api.py runs the dispatcher); the
receiver is a real HTTP server on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from enginehost.core.engine import DisconnectClassification
from enginehost.core.events import HostEvent
from enginehost.core.webhooks import catalogue
from enginehost.core.webhooks.signing import verify_openwa, verify_timestamped
from tests.support.api import ApiHarness, api_harness
from tests.support.receiver import Received, receiver
from tests.support.wait import until
from tests.test_send import CHAT, OTHER, url

pytestmark = pytest.mark.anyio

SECRET = "end-to-end-secret-0123456789"


async def test_a_session_s_whole_life_reaches_the_webhook_valid_and_signed(
    tmp_path: Path,
) -> None:
    settings = {
        "webhook_allowed_hosts": ["127.0.0.0/8"],
        "reconnect_base": 0.1,
        "reconnect_cap": 1.0,
        "default_engine": "sandbox",
    }
    with receiver() as hook:
        async with api_harness(tmp_path, **settings) as api:
            bus_events: list[HostEvent] = []
            subscription = api.state.bus.subscribe(maxsize=10_000)
            async with anyio.create_task_group() as tasks:

                async def collect() -> None:
                    async for event in subscription:
                        bus_events.append(event)

                tasks.start_soon(collect)
                await _live_a_life(api, hook.url)
                try:
                    await until(
                        lambda: _types(hook.requests) >= set(catalogue.EVENT_TYPES), within=15
                    )
                except TimeoutError:
                    missing = set(catalogue.EVENT_TYPES) - _types(hook.requests)
                    on_bus = {e.type for e in bus_events}
                    raise AssertionError(
                        f"never delivered: {missing}; on the bus: {on_bus}"
                    ) from None
                # Then the last events too: everything published is delivered.
                deliveries = api.state.deliveries
                assert deliveries is not None

                def caught_up() -> bool:
                    published = [e for e in bus_events if e.type in catalogue.EVENT_TYPES]
                    return deliveries.quiet() and len(hook.requests) >= len(published)

                await until(caught_up, within=15)
                subscription.close()
    seen = _types(hook.requests)
    assert seen == set(catalogue.EVENT_TYPES), set(catalogue.EVENT_TYPES) - seen
    assert {e.type for e in bus_events} >= set(catalogue.EVENT_TYPES)
    for event in bus_events:
        if event.type in catalogue.EVENT_TYPES:
            catalogue.validate(event.type, event.data)
    for request in hook.requests:
        _check_delivery(request)
    # The same events, the same data: what the bus published is what was delivered.
    delivered = [(r.json()["event"], r.json()["data"]) for r in hook.requests]
    published = [(e.type, dict(e.data)) for e in bus_events if e.type in catalogue.EVENT_TYPES]
    assert sorted(map(repr, delivered)) == sorted(map(repr, published))


def _types(requests: list[Received]) -> set[str]:
    return {r.json()["event"] for r in requests}


def _check_delivery(request: Received) -> None:
    envelope = request.json()
    catalogue.Envelope.model_validate(envelope)
    catalogue.validate(envelope["event"], envelope["data"])
    headers = request.headers
    assert headers["x-openwa-event"] == envelope["event"]
    assert headers["x-openwa-idempotency-key"] == envelope["idempotencyKey"]
    assert headers["x-openwa-delivery-id"] == envelope["deliveryId"]
    assert headers["user-agent"].startswith("enginehost/")
    assert verify_openwa(SECRET, request.body, headers["x-openwa-signature"])
    assert verify_timestamped(
        SECRET, request.body, headers["x-enginehost-timestamp"], headers["x-enginehost-signature"]
    )


async def _live_a_life(api: ApiHarness, hook_url: str) -> None:
    admin = api.client(api.admin_secret)
    created = await admin.post("/api/sessions", json={"name": "alpha"})
    assert created.status_code == 201, created.text
    response = await admin.post(
        "/api/sessions/alpha/webhooks",
        json={"url": hook_url, "events": ["*"], "secret": SECRET},
    )
    assert response.status_code == 201, response.text
    session = await api.state.sessions.resolve("alpha")
    await admin.post("/api/sessions/alpha/start")
    plugin: Any = api.state.plugins.engines["sandbox"].instance
    with anyio.fail_after(15):
        while (engine := plugin.live_engines.get(session.id)) is None or not (
            engine.waiting_for_scan
        ):
            await anyio.sleep(0.02)
    await engine.scan()  # QR shown, then authenticated, then ready
    await _wait_ready(api, session.id)
    engine = _live_engine(api, session.id)
    inbound = await engine.receive_text(CHAT, "hello")
    await engine.compose_on_phone(OTHER, "typed on the phone")
    sent = await admin.post(url(session, "send-text"), json={"chatId": CHAT, "text": "hi"})
    assert sent.status_code == 201, sent.text
    with anyio.fail_after(10):  # the phone acks it: delivered, then read
        while (await api.state.send.messages.get(session.id, sent.json()["id"])).status != "read":
            await anyio.sleep(0.02)
    await engine.receive_reaction(CHAT, inbound.message_id, "👍")
    await engine.receive_revoke(CHAT, inbound.message_id)

    async def broken(message: Any) -> Any:
        raise RuntimeError("the network is gone")

    engine._send = broken  # type: ignore[method-assign]  # one failed send
    failed = await admin.post(url(session, "send-text"), json={"chatId": CHAT, "text": "lost"})
    assert failed.status_code >= 500 or failed.status_code in (409, 503), failed.text
    # Five quick drops in a row: the reconnect loop is reported.
    for _ in range(5):
        engine = _live_engine(api, session.id)
        await engine.drop(DisconnectClassification.TRANSIENT, reason="network gone")
        await _wait_ready(api, session.id, after=engine)


def _live_engine(api: ApiHarness, session_id: str) -> Any:
    plugin: Any = api.state.plugins.engines["sandbox"].instance
    return plugin.live_engines[session_id]


async def _wait_ready(api: ApiHarness, session_id: str, after: Any = None) -> None:
    plugin: Any = api.state.plugins.engines["sandbox"].instance
    with anyio.fail_after(15):
        while True:
            record = await api.state.sessions.resolve(session_id)
            engine = plugin.live_engines.get(session_id)
            if record.status == "ready" and engine is not None and engine is not after:
                return
            await anyio.sleep(0.02)
