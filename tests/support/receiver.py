"""A webhook receiver for tests: a real HTTP/1.1 server on loopback, in a thread.

It records every request (headers and exact body bytes) and answers what the test's
``answer`` function says, so tests can make it fail, delay or throttle on purpose.
Keep-alive works (HTTP/1.1), as it would with a real receiver.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]
"""Status, extra headers, body."""


def ok(_: Received) -> Answer:
    return 200, {}, b"ok"


class Receiver:
    """Use :func:`receiver` to run one."""

    def __init__(self, answer: Callable[[Received], Answer]) -> None:
        self.answer = answer
        self.requests: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait (bounded) until ``count`` requests arrived; all requests so far."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        raise AssertionError(f"{len(self.requests)} requests arrived, {count} expected")

    async def arrived(self, count: int, within: float = 10.0) -> list[Received]:
        """:meth:`wait_for` for async tests (it leaves the event loop running)."""
        import anyio

        with anyio.move_on_after(within):
            while len(self.requests) < count:
                await anyio.sleep(0.01)
        return self.wait_for(count, timeout=0)

    def _record(self, request: Received) -> Answer:
        with self._lock:
            self.requests.append(request)
        return self.answer(request)


def _handler(owner: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with owner._lock:
                owner.connections += 1

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = owner._record(Received(self.path, headers, body))
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet tests

    return Handler


@contextmanager
def receiver(answer: Callable[[Received], Answer] = ok) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) for the block's duration."""
    owner = Receiver(answer)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(owner))
    server.daemon_threads = True
    owner.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield owner
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
