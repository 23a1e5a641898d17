"""Many sandbox sessions in one host: memory per session, and restoring them all at boot.

For each N (default 100 and 1,000), in a fresh interpreter (so figures do not leak from
one N to the next) over a fresh data directory, in-process: a ``SessionManager`` over
the project's own stores, with the sandbox plugin linking at once (``auto_scan_seconds:
0``). One warm-up session is linked first and not counted.

* **RSS per session**: VmRSS (``/proc/self/status``) just before starting N sessions and
  once all N rows say ``ready``, delta / N (``link s`` is that time).
* **restore**: the manager is stopped (the sessions keep ``desired_state=running`` and
  their auth files), then a new manager over a new plugin instance, as at boot, runs
  ``restore()`` with the stagger off, at concurrency 10 and then 100, timed until every
  row says ``ready`` again.
* **heap per session**: the tracemalloc-traced Python heap over one more restore (from
  no session running to all N ready), delta / N. It runs alone, untimed: tracing slows
  the host about threefold and its own tables would swell the RSS.

Memory counts the host's supervision of a session (its slot, task, engine task group)
*and* the sandbox engine object's own state, since the sandbox runs in-process. Target:
at most 100 KB a session.

    python bench/sessions.py [--sessions 100,1000] [--concurrency 10,100] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
from sandbox_engines import SandboxEngines
from scratch_schema import maybe_scratch_schema

from enginehost.core.db import Database, open_databases, prepare_schemas
from enginehost.core.events import EventBus
from enginehost.core.logging import configure_logging
from enginehost.core.messages.store import MessageStore
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import Settings, load_settings
from enginehost.plugins.sandbox import SandboxPlugin

MEMORY_TARGET_KB = 100.0
_CHILD_TIMEOUT = 300.0
"""Seconds one N may take, all phases included (the child is killed past it)."""
_PHASE_TIMEOUT = 120.0
"""Seconds one phase (linking N sessions, or one restore) may take."""


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _sandbox(data_dir: Path) -> SandboxPlugin:
    return SandboxPlugin(
        {"auth_dir": str(data_dir / "auth"), "auto_scan_seconds": 0},
        data_dir=data_dir / "sandbox",
    )


async def _ready_count(database: Database) -> int:
    def work(session: Any) -> int:
        statement = "SELECT count(*) FROM sessions WHERE status = 'ready'"
        return int(session.connection().exec_driver_sql(statement).scalar_one())

    return await database.run(work, readonly=True)


async def _wait_all_ready(database: Database, count: int, what: str) -> None:
    with anyio.move_on_after(_PHASE_TIMEOUT):
        while (ready := await _ready_count(database)) < count:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        return
    raise TimeoutError(f"{what}: {ready} of {count} ready after {_PHASE_TIMEOUT:.0f} s")


async def _child(
    url: str | None, data_dir: Path, sessions: int, concurrencies: list[int], heap: bool
) -> dict[str, Any]:
    """One N: RSS while linking N sessions, one timed restore per concurrency, then the
    traced heap over one more restore (tracemalloc slows the host about threefold and
    its own tables swell the RSS, so it runs alone, untimed)."""
    configure_logging("warning", "json")
    settings: Settings = load_settings(
        data_dir=data_dir, database_url=url, session_restore_stagger=0
    )
    databases = open_databases(settings, data_dir)
    prepare_schemas(databases, auto_migrate=True)
    store = SessionStore(databases.data)
    messages = MessageStore(databases.data)
    figures: dict[str, Any] = {"sessions": sessions}

    def manager_for(concurrency: int) -> SessionManager:
        # A new plugin instance and manager each time, as at boot.
        boot = settings.model_copy(
            update={"session_restore_concurrency": concurrency, "session_restore_stagger": 0}
        )
        return SessionManager(store, SandboxEngines(_sandbox(data_dir)), EventBus(), boot, messages)

    async def restore(manager: SessionManager) -> float:
        if await _ready_count(databases.data):
            raise RuntimeError("sessions still ready after the manager stopped")
        started = time.perf_counter()
        restored = await manager.restore()
        await _wait_all_ready(databases.data, sessions, "restored sessions")
        if restored != sessions:
            raise RuntimeError(f"restore started {restored} of {sessions} sessions")
        return time.perf_counter() - started

    try:
        # Rows first: they live in the database, not in the host's memory.
        ids = [
            (await store.create(f"bench-{index:05d}", engine="sandbox")).id
            for index in range(sessions + 1)
        ]
        warm, ids = ids[0], ids[1:]
        manager = manager_for(settings.session_restore_concurrency)
        async with manager.running():
            # One session first, uncounted: imports, statement caches, first-use setup.
            await manager.start(warm)
            await _wait_all_ready(databases.data, 1, "the warm-up session")
            gc.collect()
            rss_before = _rss_kb()
            started = time.perf_counter()
            for session_id in ids:
                await manager.start(session_id)
            await _wait_all_ready(databases.data, sessions + 1, f"{sessions} sessions")
            figures["link_seconds"] = time.perf_counter() - started
            gc.collect()
            figures["rss_kb_per_session"] = (_rss_kb() - rss_before) / sessions
            # Restores below bring back exactly the N: the warm-up session stays stopped.
            await manager.stop(warm)
        # Leaving running() stopped every session; their desired state stays running.
        figures["restore"] = {}
        for concurrency in concurrencies:
            async with manager_for(concurrency).running() as manager:
                figures["restore"][str(concurrency)] = await restore(manager)
        if not heap:
            return figures
        async with manager_for(max(concurrencies)).running() as manager:
            gc.collect()
            tracemalloc.start()
            heap_before = tracemalloc.get_traced_memory()[0]
            await restore(manager)
            gc.collect()
            figures["heap_kb_per_session"] = (
                (tracemalloc.get_traced_memory()[0] - heap_before) / 1024 / sessions
            )
            tracemalloc.stop()
        return figures
    finally:
        databases.dispose()


# ------------------------------------------------------------------------------ main


def _run_child(
    url: str | None, sessions: int, concurrencies: list[int], heap: bool
) -> dict[str, Any]:
    """One N in a fresh interpreter and data directory (and schema, for PostgreSQL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEHOST_")}
    with maybe_scratch_schema(url) as scoped, tempfile.TemporaryDirectory() as directory:
        command = [
            sys.executable,
            __file__,
            "--child",
            directory,
            "--sessions",
            str(sessions),
            "--concurrency",
            ",".join(map(str, concurrencies)),
        ]
        if scoped is not None:
            command += ["--postgres-url", scoped]
        if heap:
            command.append("--heap-everywhere")
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=_CHILD_TIMEOUT,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the run for N={sessions} failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="100,1000", help="comma list of N")
    parser.add_argument(
        "--concurrency", default="10,100", help="comma list of restore concurrencies"
    )
    parser.add_argument("--postgres-url", default=os.environ.get("ENGINEHOST_TEST_POSTGRES_URL"))
    parser.add_argument(
        "--heap-everywhere",
        action="store_true",
        help="trace the heap on PostgreSQL too (default: on SQLite only; the sessions' "
        "Python objects do not depend on the database, and tracing costs ~25 s at N=1000)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one N, this data dir
    args = parser.parse_args()
    concurrencies = _numbers(args.concurrency)

    if args.child is not None:
        figures = anyio.run(
            _child,
            args.postgres_url,
            Path(args.child),
            int(args.sessions),
            concurrencies,
            args.heap_everywhere,
        )
        print(json.dumps(figures))
        return

    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres_url:
        backends.append(("postgresql", args.postgres_url))
    print(
        "sandbox sessions in one in-process host, one fresh interpreter per N.\n"
        "memory per session counts the host's supervision AND the sandbox engine's own "
        "state (in-process); RSS over the first link of N, heap over a traced restore.\n"
        "restore: stagger off, auth files kept, timed until every row is ready."
    )
    header = (
        f"{'backend':10s} {'N':>5s} {'link s':>7s} {'RSS KB/session':>15s} "
        f"{'heap KB/session':>16s} {'target':>8s}"
        + "".join(f" {f'restore c={c} s':>16s}" for c in concurrencies)
    )
    print(header)
    for name, url in backends:
        for sessions in _numbers(args.sessions):
            figures = _run_child(url, sessions, concurrencies, url is None or args.heap_everywhere)
            heap = figures.get("heap_kb_per_session")
            worst = max(figures["rss_kb_per_session"], heap or 0.0)
            verdict = "met" if worst <= MEMORY_TARGET_KB else "NOT met"
            print(
                f"{name:10s} {sessions:5d} {figures['link_seconds']:7.2f} "
                f"{figures['rss_kb_per_session']:15.1f} "
                + (f"{heap:16.1f}" if heap is not None else f"{'(sqlite)':>16s}")
                + f" {verdict:>8s}"
                + "".join(f" {figures['restore'][str(c)]:16.2f}" for c in concurrencies),
                flush=True,
            )
    print(f"target: <= {MEMORY_TARGET_KB:.0f} KB of host memory per session (RSS and heap)")
    if args.postgres_url and not args.heap_everywhere:
        print("heap traced on SQLite only (the same Python objects); --heap-everywhere for both")
    if not args.postgres_url:
        print("postgresql skipped: pass --postgres-url or set ENGINEHOST_TEST_POSTGRES_URL")


if __name__ == "__main__":
    main()
