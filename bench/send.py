"""Sends per second through the REST API of a real daemon, against a trivial request.

A real ``enginehost serve --port 0`` child process (sandbox engine, one session linked
at once, acks 50 ms apart) takes a fixed number of keep-alive connections, one request
in flight on each, for a fixed time after a warm-up: first the trivial authenticated
``GET /api/sessions/{id}`` (the baseline: HTTP, auth, the session look-up), then
``POST .../messages/send-text`` (a pending row, the engine call, its own-message echo
claimed by the send, three acks later). The load comes from ``wrk`` when installed
(little CPU of its own), else from httpx in this process. Printed per case: requests/s, p50/p99
latency, non-2xx answers, and CPU time per request of the daemon (all threads, from
/proc) and of the load generator. Targets: sends >= 1,000/s and >= 0.4 of the trivial
rate, no non-2xx answer. The load generator and the daemon share this machine's cores;
the ratios are what compare.

    python bench/send.py [--concurrency C] [--seconds S] [--warmup W] [--load auto|wrk|httpx]
                         [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from scratch_schema import maybe_scratch_schema

# The tests' daemon runner (this file runs as ``python bench/send.py``).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.daemon import Daemon, cli_env

SEND_TARGET = 1000.0
RATIO_TARGET = 0.4
_BOOT_TIMEOUT = 60.0
_READY_TIMEOUT = 30.0


# ------------------------------------------------------------------------------ daemon


def daemon_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    extra = {
        "ENGINEHOST_DEFAULT_ENGINE": "sandbox",
        "ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS": "0",
        "ENGINEHOST_ENGINES__SANDBOX__ACK_DELAY_SECONDS": "0.05",
        # Info, for the boot lines the runner waits for; nothing logs per request there.
        "ENGINEHOST_LOG_LEVEL": "info",
    }
    if database_url is not None:
        extra["ENGINEHOST_DATABASE_URL"] = database_url
    return cli_env(data_dir, **extra)


@contextlib.contextmanager
def running_daemon(data_dir: Path, database_url: str | None) -> Iterator[tuple[Daemon, str, str]]:
    """A ready daemon, its base URL and the admin key it wrote on first boot."""
    daemon = Daemon(daemon_env(data_dir, database_url))
    try:
        daemon.start(timeout=_BOOT_TIMEOUT)
        key = (data_dir / "admin-api-key").read_text().strip()
        yield daemon, daemon.url, key
    finally:
        try:
            code, _ = daemon.stop(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = None
        if code not in (0, None):
            print(f"  (daemon exit code {code})", file=sys.stderr)


# ------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class _Options:
    concurrency: int
    warmup: float
    seconds: float
    wrk: str | None
    """The wrk binary, or None for the httpx load generator."""


@dataclass
class Figures:
    rate: float
    count: int
    p50_ms: float
    p99_ms: float
    non_2xx: dict[str, int] = field(default_factory=dict)
    daemon_cpu_ms: float = float("nan")
    """Daemon CPU time (user + system, all threads) per counted request."""
    client_cpu_ms: float = float("nan")
    """The load generator's CPU time (this process, or the wrk child) per counted request."""


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ready_session(client: httpx.AsyncClient) -> str:
    answer = await client.post(
        "/api/sessions",
        json={"name": f"bench-{uuid.uuid4().hex[:8]}", "engine": "sandbox", "start": True},
    )
    answer.raise_for_status()
    session_id = str(answer.json()["id"])
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        status = (await client.get(f"/api/sessions/{session_id}")).json()["status"]
        if status == "ready":
            return session_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"the session is {status!r}, not ready, after {_READY_TIMEOUT} s")
        await asyncio.sleep(0.05)


async def _drive(
    request: Callable[[int], Any],
    daemon_pid: int,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> Figures:
    """``concurrency`` workers, each issuing one request after the other; counted are the
    requests that end within the ``seconds`` after ``warmup``."""
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    non_2xx: dict[str, int] = {}
    first_failures: dict[str, str] = {}
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while True:
            begun = time.perf_counter()
            if begun >= stop_at:
                return
            counter += 1
            try:
                answer = await request(counter)
                outcome = None if 200 <= answer.status_code < 300 else str(answer.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
                first_failures.setdefault(
                    outcome, f"{exc!r} after {time.perf_counter() - begun:.3f} s"
                )
            ended = time.perf_counter()
            if outcome is not None:
                non_2xx[outcome] = non_2xx.get(outcome, 0) + 1
                if outcome.isdigit():
                    first_failures.setdefault(outcome, answer.text[:300])
            elif measure_from <= ended <= stop_at:
                latencies.append(ended - begun)

    cpu: list[tuple[float, float]] = []

    async def cpu_meter() -> None:
        for moment in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, moment - time.perf_counter()))
            cpu.append((_process_cpu(daemon_pid), time.process_time()))

    async with asyncio.timeout(warmup + seconds + 60):
        await asyncio.gather(cpu_meter(), *(worker() for _ in range(concurrency)))
    for outcome, detail in first_failures.items():
        print(f"  first {outcome}: {detail}", file=sys.stderr)
    latencies.sort()
    if not latencies:
        return Figures(0.0, 0, float("nan"), float("nan"), non_2xx)
    count = len(latencies)
    return Figures(
        rate=count / seconds,
        count=count,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(count - 1, int(count * 0.99))] * 1000,
        non_2xx=non_2xx,
        daemon_cpu_ms=(cpu[1][0] - cpu[0][0]) / count * 1000,
        client_cpu_ms=(cpu[1][1] - cpu[0][1]) / count * 1000,
    )


async def _measure(
    url: str, key: str, daemon_pid: int, concurrency: int, warmup: float, seconds: float
) -> dict[str, Figures]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=30
    ) as client:
        session_id = await _ready_session(client)
        trivial_path = f"/api/sessions/{session_id}"
        send_path = f"/api/sessions/{session_id}/messages/send-text"

        def trivial(_: int) -> Any:
            return client.get(trivial_path)

        def send(index: int) -> Any:
            return client.post(
                send_path,
                json={"chatId": f"1555000{index % 10_000:04d}@c.us", "text": "hello, bench"},
            )

        figures = {"trivial": await _drive(trivial, daemon_pid, concurrency, warmup, seconds)}
        figures["send"] = await _drive(send, daemon_pid, concurrency, warmup, seconds)
        return figures


# ------------------------------------------------------------------------------ wrk

_SEND_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(
    '{"chatId":"1555000%04d@c.us","text":"hello, bench"}', counter % 10000))
end
"""
_WRK_TIMEOUT_S = 30


def _wrk_figures(output: str, seconds: float) -> Figures:
    """Figures from wrk's report (``--latency``): the rate over the measured run."""
    count = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    percentiles = {
        float(p): _wrk_ms(value, unit)
        for p, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    non_2xx: dict[str, int] = {}
    if failed:
        non_2xx["non-2xx"] = int(failed.group(1))
    if errors:
        non_2xx["socket errors"] = sum(int(n) for n in re.findall(r"\d+", errors.group(1)))
    return Figures(
        rate=count / seconds,
        count=count,
        p50_ms=percentiles.get(50.0, float("nan")),
        p99_ms=percentiles.get(99.0, float("nan")),
        non_2xx=non_2xx,
    )


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _wrk_case(
    wrk: str, url: str, key: str, daemon_pid: int, args: list[str], options: _Options
) -> Figures:
    """A warm-up run, then the measured run with the daemon's CPU read around it."""
    base = [wrk, "-t1", f"-c{options.concurrency}", "--latency", "-H", f"X-API-Key: {key}"]
    base += ["--timeout", f"{_WRK_TIMEOUT_S}s", *args, url]

    def run(seconds: float) -> str:
        done = subprocess.run(
            [*base[:1], f"-d{max(1, round(seconds))}s", *base[1:]],
            capture_output=True,
            text=True,
            timeout=seconds + _WRK_TIMEOUT_S + 30,
            check=True,
        )
        return done.stdout

    if options.warmup > 0:
        run(options.warmup)
    cpu_before, wrk_before = _process_cpu(daemon_pid), _children_cpu()
    output = run(options.seconds)
    cpu_after, wrk_after = _process_cpu(daemon_pid), _children_cpu()
    figures = _wrk_figures(output, max(1, round(options.seconds)))
    if figures.count:
        figures.daemon_cpu_ms = (cpu_after - cpu_before) / figures.count * 1000
        figures.client_cpu_ms = (wrk_after - wrk_before) / figures.count * 1000
    return figures


def _measure_wrk(
    wrk: str, base_url: str, key: str, daemon_pid: int, options: _Options
) -> dict[str, Figures]:
    async def ready() -> str:
        async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}) as client:
            return await _ready_session(client)

    session_id = asyncio.run(ready())
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_SEND_SCRIPT)
        script.flush()
        trivial_url = f"{base_url}/api/sessions/{session_id}"
        send_url = f"{trivial_url}/messages/send-text"
        return {
            "trivial": _wrk_case(wrk, trivial_url, key, daemon_pid, [], options),
            "send": _wrk_case(wrk, send_url, key, daemon_pid, ["-s", script.name], options),
        }


# ------------------------------------------------------------------------------ main


def _line(name: str, figures: Figures) -> str:
    return (
        f"  {name:38s} {figures.rate:8,.0f} req/s ({figures.count:,})   "
        f"p50 {figures.p50_ms:6.1f} ms   p99 {figures.p99_ms:6.1f} ms   "
        f"non-2xx {sum(figures.non_2xx.values())}"
        + (f" {figures.non_2xx}" if figures.non_2xx else "")
        + f"\n  {'':38s} CPU per request: daemon {figures.daemon_cpu_ms:5.2f} ms, "
        f"load generator {figures.client_cpu_ms:5.2f} ms"
    )


def run_backend(name: str, url: str | None, options: _Options) -> bool:
    """Measure one backend and print its figures; True when every target is met."""
    with (
        maybe_scratch_schema(url) as scoped,
        tempfile.TemporaryDirectory() as directory,
        running_daemon(Path(directory), scoped) as (daemon, base_url, key),
    ):
        if options.wrk is not None:
            figures = _measure_wrk(options.wrk, base_url, key, daemon.process.pid, options)
        else:
            figures = asyncio.run(
                _measure(
                    base_url,
                    key,
                    daemon.process.pid,
                    options.concurrency,
                    options.warmup,
                    options.seconds,
                )
            )
    # Warnings and errors are news (the first boot's key notice aside).
    problems = [
        json.dumps(line)
        for line in daemon.lines
        if line.get("level") in ("warning", "error", "critical")
        and line.get("event") != "auth.initial_admin_key_created"
    ]
    trivial, send = figures["trivial"], figures["send"]
    ratio = send.rate / trivial.rate if trivial.rate else 0.0
    errors = sum(trivial.non_2xx.values()) + sum(send.non_2xx.values())
    rate_met = send.rate >= SEND_TARGET
    ratio_met = ratio >= RATIO_TARGET
    print(f"{name}:")
    print(_line("GET /api/sessions/{id} (baseline)", trivial))
    print(_line("POST .../messages/send-text", send))
    cpu_ratio = trivial.daemon_cpu_ms / send.daemon_cpu_ms if send.daemon_cpu_ms else 0.0
    print(
        f"  ratio send/trivial: {ratio:.2f} (rates)   "
        f"{cpu_ratio:.2f} (inverse ratio of daemon CPU per request)"
    )
    print(
        f"  target send >= {SEND_TARGET:,.0f}/s: {'met' if rate_met else 'NOT met'}   "
        f"target ratio >= {RATIO_TARGET}: {'met' if ratio_met else 'NOT met'}   "
        f"non-2xx = 0: {'met' if errors == 0 else 'NOT met'}"
    )
    if problems:
        print(f"  daemon log: {len(problems)} warning/error line(s), the first ones:")
        for line in problems[:5]:
            print(f"    {line[:300]}")
    return rate_met and ratio_met and errors == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per case")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per case")
    parser.add_argument("--postgres-url", default=os.environ.get("ENGINEHOST_TEST_POSTGRES_URL"))
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator: wrk (C, little CPU of its own) when installed, else httpx",
    )
    args = parser.parse_args()

    wrk = shutil.which("wrk") if args.load in ("auto", "wrk") else None
    if args.load == "wrk" and wrk is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    options = _Options(args.concurrency, args.warmup, args.seconds, wrk)
    cores = len(os.sched_getaffinity(0))
    generator = "wrk, one thread" if wrk else "httpx, one pool"
    print(
        f"{args.concurrency} keep-alive connections ({generator}), "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per case; "
        f"the load generator and the daemon share {cores} core(s)"
    )
    if wrk is None:
        print("  (httpx costs about 2 ms of CPU per request itself: install wrk for rates")
        print("   that the daemon, not the load generator, limits)")
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres_url:
        backends.append(("postgresql", args.postgres_url))
    for name, url in backends:
        run_backend(name, url, options)
    if not args.postgres_url:
        print("postgresql skipped: pass --postgres-url or set ENGINEHOST_TEST_POSTGRES_URL")


if __name__ == "__main__":
    main()
