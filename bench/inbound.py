"""Inbound messages persisted per second: sandbox-injected, through the session manager.

Many "contacts" write to one ready sandbox session at once; each message goes engine →
sink → group-committed insert → published, and counts once it is on disk. Beside it, in
the same run, the baseline: the same messages stored one transaction each. Target
(issue 5): at least 5,000 messages/s on this 2-core machine.

    python bench/inbound.py [--messages N] [--senders K] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import anyio
from sandbox_engines import SandboxEngines
from scratch_schema import maybe_scratch_schema

from enginehost import EngineMessage
from enginehost.core.db import open_databases, prepare_schemas
from enginehost.core.events import EventBus
from enginehost.core.messages.store import MessageStore
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import load_settings
from enginehost.plugins.sandbox import SandboxPlugin


async def _ready_session(store: SessionStore, manager: SessionManager) -> str:
    record = await store.create(f"bench-{uuid.uuid4().hex[:8]}", engine="sandbox")
    await manager.start(record.id)
    with anyio.fail_after(10):
        while (await store.resolve(record.id)).status != "ready":  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return record.id


async def _measure(
    url: str | None, data_dir: Path, messages: int, senders: int
) -> dict[str, float]:
    settings = load_settings(data_dir=data_dir, database_url=url, session_restore_stagger=0)
    databases = open_databases(settings, data_dir)
    prepare_schemas(databases, auto_migrate=True)
    try:
        sandbox = SandboxPlugin(
            {"auth_dir": str(data_dir / "auth"), "auto_scan_seconds": 0},
            data_dir=data_dir / "sandbox",
        )
        store = SessionStore(databases.data)
        # Wired as the daemon wires it: every stored message is announced on the bus
        # (and staged for webhooks, of which there are none here).
        bus = EventBus()
        message_store = MessageStore(databases.data, bus=bus)
        engines = SandboxEngines(sandbox)
        manager = SessionManager(store, engines, bus, settings, message_store)
        async with manager.running():
            session_id = await _ready_session(store, manager)
            engine = sandbox.engine_for(session_id)
            per_sender = messages // senders

            async def sender(index: int) -> None:
                chat = f"1555{index:07d}@c.us"
                for _ in range(per_sender):
                    await engine.receive_text(chat, "a message of about the usual length, hi!")

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for index in range(senders):
                    tg.start_soon(sender, index)
            grouped = time.perf_counter() - started
            stored = per_sender * senders

            baseline_count = max(stored // 10, 500)
            started = time.perf_counter()
            for index in range(baseline_count):
                await message_store.store_inbound(
                    session_id,
                    EngineMessage(
                        message_id=f"BASE{index:08d}",
                        chat_id="15559999999@c.us",
                        sender="15559999999@c.us",
                        from_me=False,
                        body="a message of about the usual length, hi!",
                    ),
                )
            single = time.perf_counter() - started
        return {
            "grouped_rate": stored / grouped,
            "grouped_count": stored,
            "single_rate": baseline_count / single,
            "single_count": baseline_count,
        }
    finally:
        databases.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=100, help="concurrent contacts")
    parser.add_argument("--postgres-url", default=os.environ.get("ENGINEHOST_TEST_POSTGRES_URL"))
    args = parser.parse_args()

    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres_url:
        backends.append(("postgresql", args.postgres_url))
    print(f"{args.messages} messages from {args.senders} concurrent senders per backend")
    for name, url in backends:
        with maybe_scratch_schema(url) as scoped, tempfile.TemporaryDirectory() as directory:
            figures = anyio.run(_measure, scoped, Path(directory), args.messages, args.senders)
        ratio = figures["grouped_rate"] / figures["single_rate"]
        verdict = "met" if figures["grouped_rate"] >= 5000 else "NOT met"
        print(
            f"{name:10s} group commit: {figures['grouped_rate']:8,.0f} msg/s "
            f"({figures['grouped_count']:,.0f})   one per transaction: "
            f"{figures['single_rate']:8,.0f} msg/s ({figures['single_count']:,.0f})   "
            f"ratio {ratio:.1f}x   target >= 5,000/s: {verdict}"
        )
    if not args.postgres_url:
        print("postgresql skipped: pass --postgres-url or set ENGINEHOST_TEST_POSTGRES_URL")


if __name__ == "__main__":
    main()
