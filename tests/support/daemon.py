"""Run the real ``enginehost`` CLI as a child process and read its JSON log lines."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Tests never reach WhatsApp: a baileys session a test starts by mistake connects to a
# loopback port where nothing listens (the discard port), not to the real service.
LOOPBACK_WHATSAPP = "ws://127.0.0.1:9/ws/chat"


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without ENGINEHOST_*, plus a data dir and JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEHOST_")}
    env.update(
        ENGINEHOST_DATA_DIR=str(data_dir),
        ENGINEHOST_LOG_FORMAT="json",
        ENGINEHOST_ENGINES__BAILEYS__WEBSOCKET_URL=LOOPBACK_WHATSAPP,
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enginehost", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class Daemon:
    """``enginehost serve --port 0`` in a child process; stopped by its own PID only."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enginehost", "serve", "--port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.lines.append(record)
            self._queue.put(record)

    def wait_for(self, event: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no {event!r} log line within {timeout} s:\n{''.join(self.raw)}"
                )
            try:
                record = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self._queue.empty():
                    raise RuntimeError(
                        f"daemon exited ({self.process.returncode}) before {event!r}:\n"
                        + "".join(self.raw)
                    ) from None
                continue
            if record.get("event") == event:
                return record

    def start(self, timeout: float = 20) -> Daemon:
        self.port = int(self.wait_for("http.listening", timeout)["port"])
        self.wait_for("daemon.ready", timeout)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        """Send ``signum`` and wait; return the exit code and the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the process to end by itself; its exit code, with all its output read."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
