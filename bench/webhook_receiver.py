"""A fast webhook receiver for the benchmarks, run as its own process.

    python bench/webhook_receiver.py        # prints "PORT <n>" once listening

HTTP/1.1 with keep-alive over asyncio's protocol API (no framework: the receiver must
cost the benchmark as little as possible). Every POST is answered 200 and counted; when
its body's ``data.body`` is a float (the sender's wall-clock time), the delivery's
latency is kept. ``GET /stats`` answers ``{"count", "latencies"}`` and resets nothing.
"""

from __future__ import annotations

import asyncio
import json
import time

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Stats:
    count = 0
    latencies: list[float] = []


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(" ", 2), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        assert self.transport is not None
        if request_line[0] == "GET":
            payload = json.dumps({"count": _Stats.count, "latencies": _Stats.latencies}).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            return
        _Stats.count += 1
        try:
            sent = float(json.loads(body)["data"]["body"])
            _Stats.latencies.append(time.time() - sent)
        except (ValueError, KeyError, TypeError):
            pass
        self.transport.write(_OK)


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
