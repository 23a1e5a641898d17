"""Webhook deliveries per second, and end-to-end latency from an inbound message.

Two cases, each against a fast keep-alive receiver in a process of its own
(``webhook_receiver.py``):

* **deliveries/s**: an outbox of N staged deliveries over many chats (lanes) is drained
  by the host's dispatcher at the default concurrency; timed from the dispatcher's start
  to the last delivery arriving. Baseline in the same run: plain aiohttp (the client the
  dispatcher uses) POSTing the same bodies with as many concurrent workers as the
  dispatcher may use for one webhook, with no outbox, signing or bookkeeping. Target (issue 6):
  at least 2,000 deliveries/s on this 2-core machine.
* **latency**: a ready sandbox session receives messages at a steady rate from several
  chats; each goes engine → session manager → stored with its outbox row → dispatcher →
  receiver, which computes the latency from the send time in the message. p50/p99.

    python bench/webhooks.py [--deliveries N] [--rate R] [--seconds S] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx
from sandbox_engines import SandboxEngines
from scratch_schema import maybe_scratch_schema

from enginehost.core.db import Database, open_databases, prepare_schemas
from enginehost.core.events import EventBus
from enginehost.core.messages.store import MessageStore
from enginehost.core.net.guard import AddressPolicy
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import Settings, load_settings
from enginehost.core.webhooks.delivery import WebhookClient, default_user_agent
from enginehost.core.webhooks.dispatcher import Dispatcher
from enginehost.core.webhooks.matching import WebhookIndex, WebhookSnapshot
from enginehost.core.webhooks.models import WebhookRecord
from enginehost.core.webhooks.outbox import Outbox
from enginehost.plugins.sandbox import SandboxPlugin

HERE = Path(__file__).parent
LOOPBACK = AddressPolicy.from_allow_list(["127.0.0.0/8"])
CHATS = 256


class Receiver:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "webhook_receiver.py")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        # One client for every poll: a client per poll builds a TLS context each time,
        # which cost more than the deliveries being measured.
        self._stats = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._stats.get("/stats").json()
        return result

    def stop(self) -> None:
        self._stats.close()
        self.process.terminate()  # our own child, by its handle
        self.process.wait(timeout=10)


class Host:
    """What the daemon wires for webhooks, in process."""

    def __init__(self, settings: Settings, databases: Any) -> None:
        data: Database = databases.data
        self.data = data
        self.index = WebhookIndex()
        self.outbox = Outbox(self.index, max_payload_bytes=settings.webhook_max_payload_bytes)
        self.sessions = SessionStore(data, outbox=self.outbox)
        self.messages = MessageStore(data, outbox=self.outbox)
        self.outbox.name_sessions_with(self.sessions.cached_name)
        client = WebhookClient(
            policy=LOOPBACK,
            timeout=settings.webhook_timeout,
            max_connections=settings.webhook_concurrency,
            user_agent=default_user_agent(),
        )
        self.dispatcher = Dispatcher(data, self.messages.writes, self.outbox, client, settings)

    async def webhook(self, url: str, events: list[str]) -> None:
        record = WebhookRecord(url=url, events=events, secret="bench-secret-0123456789")

        def work(session: Any) -> WebhookRecord:
            session.add(record)
            session.flush()
            return record

        self.index.put(WebhookSnapshot.of(await self.data.run(work)))


async def _wait(condition: Any, within: float) -> None:
    with anyio.fail_after(within):
        while not await condition():  # noqa: ASYNC110 (another process to ask)
            await anyio.sleep(0.1)


async def _delivery_rate(
    settings: Settings, databases: Any, receiver: Receiver, n: int
) -> dict[str, float]:
    host = Host(settings, databases)
    await host.dispatcher.prepare()
    await host.webhook(receiver.url, ["*"])
    session = await host.sessions.create(f"bench-{uuid.uuid4().hex[:8]}", engine="sandbox")
    payload = {"chatId": "", "body": "x" * 200, "fromMe": False, "type": "text"}
    events = [
        (
            "message.received",
            session.id,
            {**payload, "chatId": f"{i % CHATS}@c.us"},
            f"{i % CHATS}@c.us",
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        chunk = events[start : start + 1000]
        await host.messages.writes.submit(lambda c, chunk=chunk: host.outbox.stage_many(c, chunk))
    before = receiver.stats()["count"]
    cpu, started = time.process_time(), time.perf_counter()

    async def delivered() -> bool:
        return bool(receiver.stats()["count"] - before >= n)

    async with anyio.create_task_group() as tasks:
        await tasks.start(host.dispatcher.run)
        await _wait(delivered, 300)
        took, used = time.perf_counter() - started, time.process_time() - cpu

        async def written() -> bool:
            return await host.dispatcher.outbox_depth() == 0

        await _wait(written, 60)
        all_done = time.perf_counter() - started
        tasks.cancel_scope.cancel()
    await host.messages.writes.drain()
    await host.dispatcher.aclose()
    return {
        "rate": n / took,
        "rate_with_bookkeeping": n / all_done,
        "cpu_ms": used / n * 1000,
    }


async def _baseline_rate(receiver: Receiver, n: int, workers: int) -> dict[str, float]:
    """The floor: the same client library POSTing the same bodies, nothing else."""
    body = json.dumps({"event": "message.received", "data": {"body": "x" * 200}}).encode()
    before = receiver.stats()["count"]
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as client:
        remaining = n
        cpu, started = time.process_time(), time.perf_counter()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with client.post(
                    receiver.url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()

        async with anyio.create_task_group() as tasks:
            for _ in range(workers):
                tasks.start_soon(worker)
        took, used = time.perf_counter() - started, time.process_time() - cpu
    assert receiver.stats()["count"] - before >= n
    return {"rate": n / took, "cpu_ms": used / n * 1000}


async def _latency(
    settings: Settings,
    databases: Any,
    receiver: Receiver,
    data_dir: Path,
    rate: float,
    seconds: float,
) -> dict[str, float]:
    host = Host(settings, databases)
    await host.dispatcher.prepare()
    await host.webhook(receiver.url, ["message.received"])
    sandbox = SandboxPlugin(
        {"auth_dir": str(data_dir / "auth"), "auto_scan_seconds": 0}, data_dir=data_dir / "sandbox"
    )
    manager = SessionManager(
        host.sessions, SandboxEngines(sandbox), EventBus(), settings, host.messages, host.outbox
    )
    before = len(receiver.stats()["latencies"])
    sent = 0
    async with anyio.create_task_group() as tasks, manager.running():
        await tasks.start(host.dispatcher.run)
        record = await host.sessions.create(f"bench-{uuid.uuid4().hex[:8]}", engine="sandbox")
        await manager.start(record.id)
        with anyio.fail_after(10):
            while (await host.sessions.resolve(record.id)).status != "ready":  # noqa: ASYNC110
                await anyio.sleep(0.02)
        engine = sandbox.engine_for(record.id)
        interval, started = 1 / rate, time.perf_counter()
        while time.perf_counter() - started < seconds:
            chat = f"{4915100000 + sent % 16}@c.us"
            tasks.start_soon(engine.receive_text, chat, repr(time.time()))
            sent += 1
            await anyio.sleep(max(0.0, started + sent * interval - time.perf_counter()))

        async def arrived() -> bool:
            return len(receiver.stats()["latencies"]) - before >= sent

        await _wait(arrived, 120)
        tasks.cancel_scope.cancel()
    await host.messages.writes.drain()
    await host.dispatcher.aclose()
    latencies = sorted(receiver.stats()["latencies"][before:])
    return {
        "messages": sent,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def _run_backend(label: str, url: str | None, args: argparse.Namespace, receiver: Receiver) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = load_settings(
            data_dir=data_dir,
            database_url=url,
            webhook_allowed_hosts=["127.0.0.0/8"],
            session_restore_stagger=0,
        )
        databases = open_databases(settings, data_dir)
        prepare_schemas(databases, auto_migrate=True)
        try:
            drain = anyio.run(_delivery_rate, settings, databases, receiver, args.deliveries)
            base = anyio.run(
                _baseline_rate, receiver, args.deliveries, settings.webhook_concurrency
            )
            latency = anyio.run(
                _latency, settings, databases, receiver, data_dir, args.rate, args.seconds
            )
        finally:
            databases.dispose()
    print(f"\n== {label}")
    print(
        f"deliveries/s      {drain['rate']:>9,.0f}   ({drain['rate_with_bookkeeping']:,.0f}/s "
        f"until the outbox was empty; {drain['cpu_ms']:.3f} ms CPU per delivery)"
    )
    print(f"baseline aiohttp/s {base['rate']:>8,.0f}   ({base['cpu_ms']:.3f} ms CPU per request)")
    print(f"ratio dispatcher/baseline  {drain['rate'] / base['rate']:.2f}")
    print(
        f"latency inbound → receiver at {args.rate:g} msg/s for {args.seconds:g} s "
        f"({latency['messages']:.0f} messages): p50 {latency['p50_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0, help="inbound messages/s")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--postgres-url", default=os.environ.get("ENGINEHOST_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    receiver = Receiver()
    try:
        _run_backend("SQLite", None, args, receiver)
        if args.postgres_url:
            with maybe_scratch_schema(args.postgres_url) as url:
                _run_backend("PostgreSQL", url, args, receiver)
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
