"""The baileys bridge against the loopback fake WhatsApp service: memory per session,
time to ready, and the send round trip, with bare Baileys as the floor in the same run.

* **Floor**: ``tests/fakewa/bare_client.js``, real Baileys sockets in one plain Node
  process and nothing else. It pairs the largest N once (timed), then for each N logs
  N sockets back in from the saved credentials (timed) and reports RSS and JS heap
  after a forced GC, once idle.
* **Sidecar**: the same through the project: the ``baileys`` plugin, its sidecar pool
  (one sidecar holding every session) and engine objects, driven by a minimal stand-in
  for the host's session supervision (scan the QR, restart on 515, wait for ready).
  Pairing the largest N from nothing is timed, then for each N a fresh sidecar logs N
  sessions in from saved credentials (timed, at the plugin's bounded connect
  concurrency) and, idle, reports the sidecar's RSS (``/proc``) and its JS heap after
  a forced GC (``debug.gc``).
* **Per session**: the slope of a least-squares line over N, so the fixed cost of a
  Node process (about 80 MB with the library loaded) is its intercept and never
  divided into the per-session figure. Target: the sidecar's slope within 1.5x of the
  floor's.
* **Send round trip**: sequential ``send_text`` calls of one session to a contact,
  Python -> sidecar -> Baileys (encrypt, frame) -> the service's socket -> reply:
  p50/p99.

    .venv/bin/python bench/baileys.py [--sizes 1,10,100,500] [--sends 300] [--idle 3]

Needs Node.js and the sidecar's dependencies (``make bridges``). Loopback only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from enginehost import (
    DisconnectClassification,
    DisconnectedEvent,
    EngineEvent,
    QrEvent,
    ReadyEvent,
    SessionInfo,
)
from enginehost.core.logging import configure_logging
from enginehost.core.services import BackgroundTasks, HostServices
from enginehost.core.settings import load_settings
from enginehost.plugins.baileys_bridge import BaileysEngine, BaileysPlugin
from tests.support.fakewa import (
    FakeWhatsApp,
    bare_client,
    fake_whatsapp,
    require_node_modules,
)

SLOPE_RATIO_TARGET = 1.5
_PHASE_TIMEOUT = 600.0
CONTACT = "15557654321"


def _phone(index: int) -> str:
    return f"1556{index:07d}"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept of value over N."""
    if len(points) < 2:
        return float("nan"), float("nan")
    xs = [float(n) for n, _ in points]
    ys = [value for _, value in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return slope, mean_y - slope * mean_x


# ------------------------------------------------------------------------------ floor


async def measure_floor(
    fake: FakeWhatsApp, sizes: list[int], idle: float, work: Path
) -> dict[str, Any]:
    auth = work / "bare"
    largest = max(sizes)
    await fake.auto_scan(True)
    began = time.perf_counter()
    async with bare_client(
        fake.url, auth, sessions=largest, options=["--concurrency", "25"]
    ) as client:
        await client.wait_line("ready", timeout=_PHASE_TIMEOUT)
        pair_seconds = time.perf_counter() - began
        await client.command("quit")
    await fake.auto_scan(False)
    rows = []
    for n in sizes:
        began = time.perf_counter()
        async with bare_client(
            fake.url, auth, sessions=n, options=["--login-only", "--concurrency", "25"]
        ) as client:
            await client.wait_line("ready", timeout=_PHASE_TIMEOUT)
            login_seconds = time.perf_counter() - began
            await anyio.sleep(idle)
            stats = await client.ask("stats", "stats", timeout=60)
            rows.append(
                {
                    "n": n,
                    "login_s": login_seconds,
                    "rss": stats["rss"],
                    "heap": stats["heapUsed"],
                }
            )
            await client.command("quit")
    return {"pair_s": pair_seconds, "rows": rows}


# ------------------------------------------------------------------------------ sidecar


class MiniHost:
    """What the host's session supervision does for these sessions, and no more."""

    def __init__(self, plugin: BaileysPlugin, fake: FakeWhatsApp, tg: anyio.abc.TaskGroup):
        self.plugin = plugin
        self.fake = fake
        self.tg = tg
        self.ready: dict[str, anyio.Event] = {}
        self.engines: dict[str, BaileysEngine] = {}
        self.failures: list[str] = []

    async def start(self, index: int) -> None:
        session_id = f"s{index}"
        self.ready.setdefault(session_id, anyio.Event())
        engine = self.plugin.create_engine(SessionInfo(id=session_id, name=session_id))
        self.engines[session_id] = engine

        async def sink(event: EngineEvent) -> None:
            if isinstance(event, QrEvent):
                self.tg.start_soon(self._scan, event.payload, index)
            elif isinstance(event, ReadyEvent):
                self.ready[session_id].set()
            elif isinstance(event, DisconnectedEvent):
                self.tg.start_soon(self._ended, index, engine, event)

        await engine.start(sink, self.tg)

    async def _scan(self, qr: str, index: int) -> None:
        try:
            await self.fake.scan(qr, phone=_phone(index))
        except Exception as exc:  # a QR that rotated meanwhile: the next one is scanned
            self.failures.append(f"s{index}: scan: {exc}")

    async def _ended(self, index: int, engine: BaileysEngine, event: DisconnectedEvent) -> None:
        await engine.stop()
        if event.classification is DisconnectClassification.RESTART_NOW:
            await self.start(index)  # the restart that follows every pairing
        else:
            self.failures.append(f"s{index}: {event.reason}")

    async def all_ready(self, count: int) -> float:
        began = time.perf_counter()
        with anyio.fail_after(_PHASE_TIMEOUT):
            for index in range(count):
                await self.ready[f"s{index}"].wait()
        return time.perf_counter() - began

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for engine in self.engines.values():
                tg.start_soon(engine.stop)


def _plugin(fake: FakeWhatsApp, auth: Path, work: Path) -> BaileysPlugin:
    return BaileysPlugin(
        {
            "websocket_url": fake.url,
            "auth_dir": str(auth),
            "sessions_per_sidecar": 5000,
            "log_level": "error",
        },
        data_dir=work / "engine",
    )


async def _with_plugin(fake: FakeWhatsApp, auth: Path, work: Path, body: Any) -> Any:
    plugin = _plugin(fake, auth, work)
    background = BackgroundTasks()
    services = HostServices(
        settings=load_settings(data_dir=work / "data"),
        data_dir=work / "data",
        version="bench",
        background=background,
    )
    async with anyio.create_task_group() as tg:
        background.bind(tg)
        await plugin._host_enable(services)
        host = MiniHost(plugin, fake, tg)
        try:
            return await body(plugin, host)
        finally:
            await host.stop_all()
            await plugin.disable()
            tg.cancel_scope.cancel()


async def measure_sidecar(
    fake: FakeWhatsApp, sizes: list[int], idle: float, sends: int, work: Path
) -> dict[str, Any]:
    auth = work / "sidecar-auth"
    largest = max(sizes)

    async def pair_all(plugin: BaileysPlugin, host: MiniHost) -> float:
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(largest):
                tg.start_soon(host.start, index)
        await host.all_ready(largest)
        return time.perf_counter() - began

    pair_seconds = await _with_plugin(fake, auth, work, pair_all)
    rows = []
    for n in sizes:

        async def restore(plugin: BaileysPlugin, host: MiniHost, n: int = n) -> dict[str, Any]:
            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for index in range(n):
                    tg.start_soon(host.start, index)
            await host.all_ready(n)
            login_seconds = time.perf_counter() - began
            await anyio.sleep(idle)
            [pid] = plugin.sidecar_pids()
            [stats] = await plugin.pool.broadcast("debug.gc")  # type: ignore[union-attr]
            return {"n": n, "login_s": login_seconds, "rss": _rss(pid), "heap": stats["heapUsed"]}

        rows.append(await _with_plugin(fake, auth, work, restore))

    async def round_trips(plugin: BaileysPlugin, host: MiniHost) -> list[float]:
        await host.start(0)
        await host.all_ready(1)
        engine = host.engines["s0"]
        times = []
        for number in range(sends):
            began = time.perf_counter()
            await engine.send_text(f"{CONTACT}@c.us", f"round trip {number}")
            times.append(time.perf_counter() - began)
        return times

    times = await _with_plugin(fake, auth, work, round_trips)
    return {"pair_s": pair_seconds, "rows": rows, "send_times": times}


# ------------------------------------------------------------------------------ report


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def _kb(value: float) -> str:
    return f"{value / 1e3:,.0f} KB"


def report(floor: Mapping[str, Any], sidecar: Mapping[str, Any], sizes: list[int]) -> None:
    print(
        f"\n{'N':>5} | {'bare RSS':>10} {'bare heap':>10} {'login s':>8} | "
        f"{'sidecar RSS':>11} {'heap':>10} {'login s':>8}"
    )
    for bare, ours in zip(floor["rows"], sidecar["rows"], strict=True):
        print(
            f"{bare['n']:>5} | {_mb(bare['rss']):>10} {_mb(bare['heap']):>10} "
            f"{bare['login_s']:>8.2f} | {_mb(ours['rss']):>11} {_mb(ours['heap']):>10} "
            f"{ours['login_s']:>8.2f}"
        )
    largest = max(sizes)
    print(
        f"\npairing {largest} from nothing: bare {floor['pair_s']:.1f} s, "
        f"sidecar {sidecar['pair_s']:.1f} s"
    )
    for key, label in (("rss", "RSS"), ("heap", "JS heap")):
        bare_slope, bare_fixed = _fit([(r["n"], r[key]) for r in floor["rows"]])
        our_slope, our_fixed = _fit([(r["n"], r[key]) for r in sidecar["rows"]])
        ratio = our_slope / bare_slope if bare_slope > 0 else float("nan")
        verdict = "ok" if ratio <= SLOPE_RATIO_TARGET else "ABOVE TARGET"
        print(
            f"{label} per session (slope): bare {_kb(bare_slope)}, sidecar {_kb(our_slope)}, "
            f"ratio {ratio:.2f} (target <= {SLOPE_RATIO_TARGET}: {verdict}); "
            f"fixed: bare {_mb(bare_fixed)}, sidecar {_mb(our_fixed)}"
        )
    times = sorted(sidecar["send_times"])
    p50 = times[len(times) // 2] * 1000
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
    print(f"send round trip ({len(times)} sends): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


async def main_async(sizes: list[int], sends: int, idle: float) -> None:
    require_node_modules()
    with tempfile.TemporaryDirectory(prefix="enginehost-bench-baileys-") as temporary:
        work = Path(temporary)
        async with fake_whatsapp() as fake:
            print(f"fake service at {fake.url}; sizes {sizes}")
            floor = await measure_floor(fake, sizes, idle, work)
            print("floor done")
            sidecar = await measure_sidecar(fake, sizes, idle, sends, work)
            print("sidecar done")
            report(floor, sidecar, sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,100,500")
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before measuring")
    args = parser.parse_args()
    configure_logging("warning", "console")
    sizes = sorted({int(part) for part in args.sizes.split(",")})
    anyio.run(main_async, sizes, args.sends, args.idle)


if __name__ == "__main__":
    main()
