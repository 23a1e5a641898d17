"""The outbound request guard: which addresses are refused, and that the refusal is made
when connecting (a name that passed an earlier check cannot re-resolve its way in)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from enginehost.core.messages import send as send_module
from enginehost.core.net import guard
from enginehost.core.net.guard import AddressPolicy, RefusedAddressError, guarded_transport


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # loopback, IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # metadata through NAT64
        "64:ff9b:1::a00:1",  # 10.0.0.1 through local-use NAT64
        "2002:7f00:1::",  # loopback in 6to4
        "2002:a9fe:a9fe::1",  # metadata in 6to4
        "::7f00:1",  # loopback, IPv4-compatible
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    reason = AddressPolicy().refusal("example.test", ipaddress.ip_address(address))
    assert reason is not None and "loopback, private or link-local" in reason
    assert AddressPolicy(allow_private=True).refusal("x", ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822", "2002:5db8:d822::1"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressPolicy().refusal("example.test", ipaddress.ip_address(address)) is None


def test_allow_lists_by_host_name_and_network() -> None:
    policy = AddressPolicy(
        hosts=frozenset({"hooks.internal"}),
        networks=(ipaddress.ip_network("10.20.0.0/16"),),
    )
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal("hooks.internal", loopback) is None
    assert policy.refusal("HOOKS.internal.", loopback) is None  # case and root dot
    assert policy.refusal("other.internal", loopback) is not None
    assert policy.refusal("any", ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal("any", ipaddress.ip_address("10.21.3.4")) is not None


@pytest.mark.anyio
async def test_the_refusal_is_made_when_connecting(loopback_server: int) -> None:
    url = f"http://localhost:{loopback_server}/"
    async with httpx.AsyncClient(transport=guarded_transport(AddressPolicy())) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(url)
    assert isinstance(caught.value.__cause__, RefusedAddressError)
    # The same request goes through once the name is allowed: the guard connects for real.
    allowed = AddressPolicy(hosts=frozenset({"localhost"}))
    async with httpx.AsyncClient(transport=guarded_transport(allowed)) as client:
        response = await client.get(url)
    assert (response.status_code, response.text) == (200, "hello")


def test_the_guarded_pool_keeps_the_transport_settings_and_refuses_detours() -> None:
    """httpx has no public way to give its pool a network backend: the pool is rebuilt,
    and must keep what the caller asked for. A proxy or a unix socket would bypass the
    address check, so they are refused."""
    transport: Any = guarded_transport(AddressPolicy(), local_address="127.0.0.1", retries=2)
    pool = transport._pool
    assert isinstance(pool._network_backend, guard._GuardedBackend)
    assert (pool._local_address, pool._retries) == ("127.0.0.1", 2)
    for detour in ({"proxy": "http://127.0.0.1:9"}, {"uds": "/run/some.sock"}):
        with pytest.raises(ValueError, match="TCP only, without a proxy"):
            guarded_transport(AddressPolicy(), **detour)


@pytest.mark.anyio
async def test_a_name_that_rebinds_after_the_early_check_is_refused(
    tmp_path: Any, loopback_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send path's early check sees a public address; the connection would reach
    loopback: refused all the same, with the clear message."""
    from tests.support.api import api_harness

    real = guard.anyio.getaddrinfo
    calls: list[str] = []

    async def rebinding(host: str, port: int, **kwargs: Any) -> Any:
        calls.append(host)
        if len(calls) == 1:  # the early check: a public address
            return [(2, 1, 6, "", ("93.184.216.34", port))]
        return await real("127.0.0.1", port, **kwargs)

    monkeypatch.setattr(send_module.anyio, "getaddrinfo", rebinding)
    async with api_harness(tmp_path) as api:
        with pytest.raises(send_module.MediaFetchError) as caught:
            await api.state.send._fetch(f"http://rebind.test:{loopback_server}/x.png")
    assert calls == ["rebind.test", "rebind.test"]  # the check, then the connection
    assert "loopback, private or link-local" in caught.value.message
