"""A guard against server-side request forgery for the host's outbound HTTP requests.

Someone who may make the host fetch a URL (media to send, later webhooks) must not be
able to reach what only the host can reach: its loopback, its private networks, cloud
metadata addresses. Checking the URL's name before the request is not enough: a name
can resolve to a public address for the check and to a private one for the connection
(DNS rebinding). So the check is made where the connection is made: a network backend
resolves the name itself, refuses it when any of its addresses is not allowed, and
connects to the vetted address (TLS still verifies the certificate against the name).

Environment proxies are ignored by guarded clients: through a proxy, the address the
host connects to says nothing about where the request goes.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore
import httpx

__all__ = [
    "AddressPolicy",
    "RefusedAddressError",
    "embedded_ipv4",
    "guarded_transport",
    "parse_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


class RefusedAddressError(httpcore.ConnectError):
    """A connection the policy refuses: the message says which name and why."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses outbound requests may connect to.

    Public (globally routable) addresses always; others only when ``allow_private`` is
    set, when the host name is in ``hosts``, or when the address is in ``networks``.
    """

    allow_private: bool = False
    hosts: frozenset[str] = field(default_factory=frozenset)
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_allow_list(cls, entries: Iterable[str]) -> AddressPolicy:
        """A policy allowing, beyond public addresses, the host names and CIDR ranges
        (or single addresses) of an operator's allow-list; ValueError names a bad entry."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if "/" in name or not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{entry!r} is neither a host name nor a CIDR range")
            hosts.add(name)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None."""
        if self.allow_private or host.lower().rstrip(".") in self.hosts:
            return None
        if isinstance(address, ipaddress.IPv6Address):
            # ::ffff:127.0.0.1 is 127.0.0.1; so, where a translator or relay carries them,
            # are the IPv4 addresses inside NAT64, 6to4, Teredo and IPv4-compatible forms.
            address = embedded_ipv4(address) or address
        if any(address in network for network in self.networks):
            return None
        if address.is_global and not address.is_multicast:
            return None
        return f"{host!r} resolves to {address}, a loopback, private or link-local address"


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets, then connects to the vetted address (see the module docs)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"{host!r} did not resolve in time") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"{host!r} does not resolve: {exc}") from exc
        addresses = list(dict.fromkeys(parse_address(info[4][0]) for info in infos))
        # One refused address refuses the name: which one a connection would get is
        # not ours to choose.
        for address in addresses:
            reason = self._policy.refusal(host, address)
            if reason is not None:
                raise RefusedAddressError(reason)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"{host!r} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddressError("guarded requests never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that
    reach an IPv4 host: mapped, NAT64, 6to4, Teredo (its client) or IPv4-compatible."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in network for network in _NAT64):
        return low32
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1
        return low32
    return None


def parse_address(text: str) -> IPAddress:
    """An address as ``getaddrinfo`` gives it (an IPv6 zone dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        if kwargs.get("uds") or kwargs.get("proxy"):
            raise ValueError("a guarded transport connects over TCP only, without a proxy")
        super().__init__(trust_env=False, **kwargs)
        # httpx builds its connection pool in __init__ and has no public way to give it
        # a network backend yet: the pool is rebuilt with the same settings plus ours.
        # (tests/test_net_guard.py fails if the guard is ever not in effect.)
        pool = self._pool
        assert isinstance(pool, httpcore.AsyncConnectionPool)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=pool._ssl_context,
            max_connections=pool._max_connections,
            max_keepalive_connections=pool._max_keepalive_connections,
            keepalive_expiry=pool._keepalive_expiry,
            http1=pool._http1,
            http2=pool._http2,
            retries=pool._retries,
            local_address=pool._local_address,
            socket_options=pool._socket_options,
            network_backend=_GuardedBackend(policy),
        )


def guarded_transport(policy: AddressPolicy, **kwargs: Any) -> httpx.AsyncBaseTransport:
    """An httpx transport whose every connection obeys ``policy``; ``kwargs`` go to
    :class:`httpx.AsyncHTTPTransport` (not ``trust_env``: proxies are never used)."""
    if policy.allow_private:
        return httpx.AsyncHTTPTransport(**kwargs)
    return _GuardedTransport(policy, **kwargs)
