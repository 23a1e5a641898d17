"""The outbound address guard for aiohttp, as a resolver.

:mod:`enginehost.core.net.guard` explains why the check must be made where the
connection is made (a name can resolve to a public address for an early check and to
a private one for the connection). aiohttp connects to exactly the addresses its
resolver returns, so a resolver that refuses a name when *any* of its addresses is
refused, and otherwise returns those same addresses, vets what is connected to.
aiohttp caches a resolver's answers for the connector's ``ttl_dns_cache``; only
answers that passed the policy are ever cached.

aiohttp does not ask the resolver about an IP literal (``http://127.0.0.1/``,
``http://[::1]/``): :func:`literal_address` finds those, and the caller must vet them
itself before the request. A literal cannot rebind, so checking it up front is sound.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from enginehost.core.net.guard import AddressPolicy, IPAddress, parse_address

__all__ = ["GuardedResolver", "PolicyRefusalError", "literal_address"]


class PolicyRefusalError(OSError):
    """A name the policy refuses; the message names the host and the address.

    An :class:`OSError`, as resolution failures are: aiohttp then reports it as a
    ``ClientConnectorDNSError`` whose ``os_error`` is this exception.
    """


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner``, then refuses the whole name if the policy refuses any
    of its addresses: which one a connection would get is not ours to choose."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self._policy.refusal(host, parse_address(result["host"]))
            if reason is not None:
                raise PolicyRefusalError(reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` (a URL's raw host, IPv6 without brackets) spells, or None
    for a name; ValueError when it looks like an address but is not a valid one.

    "Looks like an address" is aiohttp's own test for skipping its resolver (a colon,
    or only digits and dots), so whatever skips the resolver is vetted here or refused.
    """
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    return parse_address(host)  # a zone ("%25eth0") is dropped; ValueError if invalid
