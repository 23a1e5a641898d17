"""The webjs bridge: time to a QR and the memory of one browser session, against plain
headless Chromium measured in the same run.

* **webjs**: the ``webjs`` plugin and its sidecar, with whatsapp-web.js served a local
  stub of WhatsApp Web (``tests/webjs``, through the library's own local version
  cache) so it reaches its ``qr`` event offline. For each of ``--sessions`` sessions
  started one after the other: seconds from the engine's start to its QR event; once
  all show a QR and have idled, the PSS (``/proc/<pid>/smaps_rollup``) of each browser's
  process group, and of the sidecar.
* **baseline**: the same Chromium, with the same flags and a fresh profile, opening the
  same stub page directly (no Node, no library): seconds until ``--dump-dom`` has
  loaded it, and the PSS of its process group once idle.

    .venv/bin/python bench/webjs.py [--sessions 3] [--idle 5]

Needs Node.js, ``make bridges`` and Chromium. Loopback only: nothing leaves the machine
(Chromium's host resolver maps every name to nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from enginehost import EngineEvent, QrEvent, SessionInfo
from enginehost.core.logging import configure_logging
from enginehost.core.services import BackgroundTasks, HostServices
from enginehost.core.settings import load_settings
from enginehost.plugins.webjs_bridge import WebjsPlugin
from enginehost.plugins.webjs_bridge.plugin import BASE_CHROMIUM_ARGS
from tests.support.procs import group_members, pss
from tests.support.webjs_stub import STUB_VERSION, stub_cache

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"


def group_pss(pgid: int) -> tuple[int, int]:
    """(PSS in bytes, process count) of a process group."""
    members = group_members(pgid)
    return sum(pss(pid) for pid in members), len(members)


# ------------------------------------------------------------------------------ baseline


def measure_baseline(chromium: str, stub_page: Path, idle: float, work: Path) -> dict[str, Any]:
    flags = [*BASE_CHROMIUM_ARGS, OFFLINE, "--headless=new"]
    began = time.perf_counter()
    subprocess.run(
        [chromium, *flags, f"--user-data-dir={work / 'dump'}", "--dump-dom", stub_page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    load_seconds = time.perf_counter() - began
    browser = subprocess.Popen(
        [chromium, *flags, f"--user-data-dir={work / 'idle'}", stub_page.as_uri()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(idle)
        memory, processes = group_pss(browser.pid)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(30)
    return {"load_s": load_seconds, "pss": memory, "processes": processes}


# ------------------------------------------------------------------------------ webjs


async def measure_webjs(sessions: int, idle: float, work: Path) -> dict[str, Any]:
    cache = stub_cache(work / "cache")
    plugin = WebjsPlugin(
        {
            "session_data_path": str(work / "profiles"),
            "web_version": STUB_VERSION,
            "web_version_cache_dir": str(cache),
            "chromium_args": [OFFLINE],
            "sessions_per_sidecar": sessions,
            "max_concurrent_connects": 1,
            "log_level": "error",
        },
        data_dir=work / "engine",
    )
    background = BackgroundTasks()
    services = HostServices(
        settings=load_settings(data_dir=work / "data"),
        data_dir=work / "data",
        version="bench",
        background=background,
    )
    times: list[float] = []
    alone: list[tuple[int, int]] = []  # each browser's (PSS, processes) when it started
    engines = []
    seen: set[int] = set()
    async with anyio.create_task_group() as tg:
        background.bind(tg)
        await plugin._host_enable(services)
        try:
            for index in range(sessions):
                shown = anyio.Event()

                async def sink(event: EngineEvent, shown: anyio.Event = shown) -> None:
                    if isinstance(event, QrEvent):
                        shown.set()

                engine = plugin.create_engine(SessionInfo(id=f"s{index}", name=f"s{index}"))
                engines.append(engine)
                began = time.perf_counter()
                await engine.start(sink, tg)
                with anyio.fail_after(120):
                    await shown.wait()
                times.append(time.perf_counter() - began)
                await anyio.sleep(idle)
                pool = plugin.pool
                assert pool is not None
                [member] = [m for m in pool._members if m.alive]
                [new] = set(member.process.child_process_groups) - seen
                seen.add(new)
                alone.append(group_pss(new))
            groups = sorted(member.process.child_process_groups)
            browsers = [group_pss(pgid) for pgid in groups]
            sidecar = pss(member.process.pid or 0)
        finally:
            for engine in engines:
                await engine.stop()
            await plugin.disable()
            tg.cancel_scope.cancel()
    return {"qr_s": times, "alone": alone, "browsers": browsers, "sidecar_pss": sidecar}


def report(base: dict[str, Any], ours: dict[str, Any]) -> None:
    mb = 1e6
    count = len(ours["browsers"])
    print(
        f"\nbaseline Chromium: loads the stub in {base['load_s']:.2f} s; idle "
        f"{base['pss'] / mb:.0f} MB PSS in {base['processes']} processes"
    )
    for index, (seconds, (memory, processes)) in enumerate(
        zip(ours["qr_s"], ours["alone"], strict=True)
    ):
        print(
            f"webjs session {index}: QR after {seconds:.2f} s; its browser "
            f"{memory / mb:.0f} MB PSS in {processes} processes when it started"
        )
    first, _ = ours["alone"][0]
    together = statistics.fmean(memory for memory, _ in ours["browsers"])
    sidecar = ours["sidecar_pss"]
    print(f"sidecar (Node, whatsapp-web.js) with {count} sessions: {sidecar / mb:.0f} MB PSS")
    print(
        f"one session alone: {first / mb:.0f} MB browser PSS, ratio to plain Chromium "
        f"{first / base['pss']:.2f}; with {count} running, {together / mb:.0f} MB a browser "
        f"(PSS splits the pages they share) + {sidecar / count / mb:.0f} MB of sidecar"
    )
    median = statistics.median(ours["qr_s"])
    print(
        f"time to QR: p50 {median:.2f} s, ratio to plain Chromium loading the page "
        f"{median / base['load_s']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging("warning", "console")
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("bench/webjs.py needs Chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="enginehost-bench-webjs-") as temporary:
        work = Path(temporary)
        page = stub_cache(work / "page-cache") / f"{STUB_VERSION}.html"
        base = measure_baseline(chromium, page, args.idle, work)
        ours = anyio.run(measure_webjs, args.sessions, args.idle, work)
        report(base, ours)


if __name__ == "__main__":
    main()
