"""One HTTP attempt at delivering a webhook event, and what came of it.

:class:`WebhookClient` makes the POST and turns every way it can end into an
:class:`AttemptOutcome`: delivered, failed and worth retrying, or failed for good. It
never decides *when* to retry (that is :mod:`enginehost.core.webhooks.retry`, applied
by the dispatcher) and never raises for a network or HTTP problem, so one bad receiver
cannot break the loop that serves all of them.

The HTTP client is aiohttp, for its cost: the dispatcher must deliver at least 2,000
events per second on a 2-core host. Measured there (small JSON bodies to a keep-alive
receiver on loopback), one shared httpx client managed 270-330 requests/s at 32 in
flight, about 3 ms of CPU each (its pool's bookkeeping grows with concurrency), and
~1,400/s at best with a client per worker; aiohttp managed 11,500/s at 0.09 ms each.
aiohttp runs on asyncio only, which is what the host runs on (anyio's asyncio
backend). Its session is made on the first attempt, inside the running loop, and
belongs to that loop.

Receivers are untrusted:

* Every name is resolved through
  :class:`enginehost.core.webhooks.guarded_resolver.GuardedResolver`, and aiohttp
  connects to the addresses it returned, so a webhook URL cannot make the host reach
  its own loopback, private networks or cloud metadata unless the operator's
  allow-list says so. An IP literal never reaches a resolver: it is vetted before the
  request. Environment proxies are ignored; redirects are not followed.
* The whole attempt, connecting through reading the answer, is bounded by one
  deadline: per-operation timeouts alone let a receiver trickle a byte at a time forever.
* Only the first ``response_max_bytes`` of an answer are read, undecoded (the request
  asks for ``identity`` encoding and compressed bytes are never inflated); a connection
  whose answer did not arrive in full is then dropped, never reused.
* Outcome errors are fixed phrases plus, at most, a host name and an address: never
  the URL (it may hold a token), the secret, or the values of a webhook's extra headers.
* No cookies are kept: one receiver's cookies are never sent to another, or back.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp
import anyio
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from enginehost.core.net.guard import AddressPolicy
from enginehost.core.webhooks.guarded_resolver import (
    GuardedResolver,
    PolicyRefusalError,
    literal_address,
)
from enginehost.core.webhooks.retry import (
    is_retryable_status,
    is_success_status,
    parse_retry_after,
)
from enginehost.core.webhooks.signing import (
    OPENWA_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    openwa_signature,
    timestamped_signature,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RESPONSE_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "DELIVERY_ID_HEADER",
    "EVENT_HEADER",
    "IDEMPOTENCY_KEY_HEADER",
    "KEEPALIVE_EXPIRY",
    "RESERVED_HEADERS",
    "RESERVED_PREFIXES",
    "RETRY_COUNT_HEADER",
    "Attempt",
    "AttemptOutcome",
    "WebhookClient",
    "default_user_agent",
    "is_reserved_header",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_RESPONSE_MAX_BYTES = 4096
KEEPALIVE_EXPIRY = 4.0
"""Seconds an idle connection is kept for reuse: just under the 5 s idle timeout of
common receiver stacks (Node.js, uvicorn), so the host rarely reuses a connection the
receiver is closing at that very moment."""
_DNS_CACHE_TTL = 10
"""Seconds a resolved (and vetted) name is reused before it is resolved, and vetted,
again: short, so a receiver moving to new addresses is followed quickly."""

EVENT_HEADER = "X-OpenWA-Event"
IDEMPOTENCY_KEY_HEADER = "X-OpenWA-Idempotency-Key"
DELIVERY_ID_HEADER = "X-OpenWA-Delivery-Id"
RETRY_COUNT_HEADER = "X-OpenWA-Retry-Count"

RESERVED_HEADERS = frozenset(
    {
        name.lower()
        for name in (
            # Set by the host on every attempt.
            "Content-Type",
            "User-Agent",
            "Accept-Encoding",
            EVENT_HEADER,
            IDEMPOTENCY_KEY_HEADER,
            DELIVERY_ID_HEADER,
            RETRY_COUNT_HEADER,
            OPENWA_SIGNATURE_HEADER,
            TIMESTAMP_HEADER,
            SIGNATURE_HEADER,
            # Framing and connection management belong to the HTTP client: a webhook
            # that set them could desynchronise the request or the shared connection.
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Expect",
        )
    }
)
"""Header names (lower-case) a webhook's extra headers can never set."""

RESERVED_PREFIXES = ("x-openwa-", "x-enginehost-")
"""Header name prefixes kept for the host, so a header it adds later cannot clash with
one a webhook already has."""

_ERROR_MAX = 300
# RFC 9110 token characters for names; visible ASCII, space and tab for values (CR/LF
# would split the header, and other bytes are encoded differently by each client).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def is_reserved_header(name: str) -> bool:
    """Whether a webhook's extra header ``name`` is the host's to set (any case)."""
    lowered = name.strip().lower()
    return lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES)


def default_user_agent() -> str:
    """``enginehost/<version> (+webhooks)``, the User-Agent of deliveries."""
    from enginehost import __version__

    return f"enginehost/{__version__} (+webhooks)"


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt to make. ``retry_count`` is 0 on the first attempt.

    ``headers`` are the webhook's extra headers; reserved names among them are ignored.
    The secret, headers and body stay out of ``repr`` so the attempt can be logged.
    """

    url: str
    body: bytes = field(repr=False)
    event: str
    idempotency_key: str
    delivery_id: str
    retry_count: int
    secret: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class AttemptOutcome:
    """How an attempt ended.

    ``status`` is the receiver's HTTP status, None when none arrived. ``error`` is None
    when ``delivered``, else a short reason safe to show and store. ``retry_after`` is
    the wait (s) a 429 or 503 asked for. ``duration`` is the attempt's wall time (s).
    ``response_excerpt`` is the start of the answer's body, decoded leniently.
    """

    delivered: bool
    status: int | None
    error: str | None
    retryable: bool
    retry_after: float | None
    duration: float
    response_excerpt: str


class _InvalidHeaderError(Exception):
    """An extra header that cannot be sent; the message names it, never its value."""


def _request_headers(attempt: Attempt, user_agent: str, timestamp: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in attempt.headers.items():
        if is_reserved_header(name):
            continue  # the registry refuses these too; the host's own values win
        if not _HEADER_NAME.fullmatch(name):
            raise _InvalidHeaderError("an extra header has an invalid name")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise _InvalidHeaderError(f"the extra header {name!r} has an invalid value")
        headers[name] = value
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": user_agent,
            # Answers are kept raw and capped; inflating one could cost far more than
            # the cap (a small compressed body can expand enormously).
            "Accept-Encoding": "identity",
            EVENT_HEADER: attempt.event,
            IDEMPOTENCY_KEY_HEADER: attempt.idempotency_key,
            DELIVERY_ID_HEADER: attempt.delivery_id,
            RETRY_COUNT_HEADER: str(attempt.retry_count),
        }
    )
    # An empty secret would sign with a key anyone knows: treated as no secret.
    if attempt.secret:
        headers[OPENWA_SIGNATURE_HEADER] = openwa_signature(attempt.secret, attempt.body)
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = timestamped_signature(attempt.secret, timestamp, attempt.body)
    return headers


def _describe(exc: Exception) -> tuple[str, bool]:
    """A safe reason for a request that got no answer, and whether to retry it.

    Never the exception's own text, except the guard's and the operating system's
    (they name at most a host and an address): aiohttp puts the URL in some messages.
    """
    if isinstance(exc, aiohttp.ClientSSLError):
        # Before the generic connector error: these do not all carry an os_error.
        return f"cannot connect to {exc.host}: the TLS handshake failed", True
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, PolicyRefusalError):
            # Resolving the name again later gives the same answer: an operator must act.
            return f"refused by the address policy: {cause}", False
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"cannot connect: {exc.host!r} does not resolve ({_os_reason(cause)})", True
        return f"cannot connect to {exc.host}: {_os_reason(cause)}", True
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return "the URL is not an http or https URL", False
    if isinstance(exc, aiohttp.InvalidURL):
        return "the URL is not valid", False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without answering", True
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised for an answer that is not valid HTTP (the status is never checked).
        return "the receiver answered malformed HTTP", True
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
        return "the connection broke", True
    if isinstance(exc, ValueError):
        # aiohttp refuses some requests it cannot form with a plain ValueError, e.g. an
        # Authorization header next to credentials in the URL.
        return "the request could not be formed (check the URL and the extra headers)", False
    return f"the request failed ({type(exc).__name__})", True


def _os_reason(error: OSError) -> str:
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__


def _short(text: str) -> str:
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 1] + "…"


# CPython before 3.12.7 (and 3.13.0) can leak the transport of a TLS connection that is
# aborted, as a capped answer's is; aiohttp then cleans them up when asked, and warns
# when asked on a version that does not need it.
_CLEANUP_CLOSED = sys.version_info < (3, 12, 7) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


class WebhookClient:
    """Makes delivery attempts over one pool of keep-alive connections.

    Create one per process (or per dispatcher) and close it with :meth:`aclose` or
    ``async with``. ``timeout`` bounds a whole attempt; ``max_connections`` sizes the
    pool (attempts beyond it wait for a free connection, within their timeout). The
    client may be built anywhere; it must be used and closed in one asyncio loop.
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        response_max_bytes: int = DEFAULT_RESPONSE_MAX_BYTES,
        user_agent: str,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if response_max_bytes < 0:
            raise ValueError(f"response_max_bytes cannot be negative, got {response_max_bytes}")
        self.timeout = timeout
        self.response_max_bytes = response_max_bytes
        self.user_agent = user_agent
        self._policy = policy
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; the client cannot send afterwards."""
        self._closed = True
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()  # a connector does not close a resolver it was given

    def _open(self) -> aiohttp.ClientSession:
        """The session, made in the running loop on first use (aiohttp binds it there)."""
        if self._closed:
            raise RuntimeError("the webhook client is closed")
        # The system resolver in a thread, as for any other name the host resolves
        # (/etc/hosts included), vetted by the policy.
        resolver = GuardedResolver(self._policy, ThreadedResolver())
        connector = aiohttp.TCPConnector(
            resolver=resolver,
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=_DNS_CACHE_TTL,
            keepalive_timeout=KEEPALIVE_EXPIRY,
            enable_cleanup_closed=_CLEANUP_CLOSED,
        )
        self._resolver = resolver
        self._session = aiohttp.ClientSession(
            connector=connector,
            # aiohttp's own bound on the whole request, reading the body included; the
            # deadline in send() is the exact one (aiohttp rounds long timeouts up).
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def send(self, attempt: Attempt) -> AttemptOutcome:
        """POST ``attempt.body`` to ``attempt.url`` and report how it went.

        The receiver's status decides the outcome as soon as it arrives: a problem
        while reading the rest of the answer (it is only kept as an excerpt) only
        shortens the excerpt.
        """
        started = time.monotonic()
        try:
            headers = _request_headers(attempt, self.user_agent, int(time.time()))
        except _InvalidHeaderError as exc:
            return self._failed(started, str(exc), retryable=False)
        try:
            url = URL(attempt.url)
            host = url.raw_host or ""
            address = literal_address(host)
        except (ValueError, TypeError):
            return self._failed(started, "the URL is not valid", retryable=False)
        if url.scheme not in ("http", "https"):
            return self._failed(started, "the URL is not an http or https URL", retryable=False)
        if not host:
            return self._failed(started, "the URL is not valid", retryable=False)
        if url.raw_user is not None or url.raw_password is not None:
            # Credentials in the URL are sent as Basic auth and win over an extra
            # Authorization header (aiohttp would refuse the pair).
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if address is not None:
            # aiohttp connects to a literal without asking the resolver: vetted here.
            refusal = self._policy.refusal(host, address)
            if refusal is not None:
                reason = f"refused by the address policy: {refusal}"
                return self._failed(started, reason, retryable=False)
        session = self._session or self._open()
        status: int | None = None
        retry_after_header: str | None = None
        kept = bytearray()
        response: aiohttp.ClientResponse | None = None
        try:
            with anyio.fail_after(self.timeout):
                response = await session.post(
                    url, data=attempt.body, headers=headers, allow_redirects=False
                )
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
                await self._read_excerpt(response.content, kept)
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
            if status is None:
                reason = f"the receiver did not answer within {self.timeout:g} s"
                return self._failed(started, reason, retryable=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if status is None:
                reason, retryable = _describe(exc)
                return self._failed(started, reason, retryable=retryable)
        finally:
            if response is not None:
                if response.content.is_eof() and response.content.exception() is None:
                    response.release()  # nothing left on the wire: kept for reuse
                else:
                    response.close()  # the rest is never read: the connection is dropped
        assert status is not None  # every path that got no status has returned
        return self._answered(started, status, retry_after_header, bytes(kept))

    async def _read_excerpt(self, content: aiohttp.StreamReader, kept: bytearray) -> None:
        """Append at most ``response_max_bytes`` of the raw body to ``kept``.

        Filled in place so that what arrived survives a timeout or a broken stream.
        """
        limit = self.response_max_bytes
        while len(kept) < limit and not content.at_eof():
            chunk = await content.read(limit - len(kept))
            if not chunk:
                return
            kept.extend(chunk)

    @staticmethod
    def _failed(started: float, error: str, *, retryable: bool) -> AttemptOutcome:
        return AttemptOutcome(
            delivered=False,
            status=None,
            error=_short(error),
            retryable=retryable,
            retry_after=None,
            duration=time.monotonic() - started,
            response_excerpt="",
        )

    @staticmethod
    def _answered(
        started: float, status: int, retry_after_header: str | None, excerpt: bytes
    ) -> AttemptOutcome:
        delivered = is_success_status(status)
        error: str | None = None
        if not delivered:
            error = f"the receiver answered HTTP {status}"
            if 300 <= status < 400:
                error += " (a redirect: redirects are not followed, fix the URL)"
        retry_after = parse_retry_after(retry_after_header) if status in (429, 503) else None
        return AttemptOutcome(
            delivered=delivered,
            status=status,
            error=error,
            retryable=not delivered and is_retryable_status(status),
            retry_after=retry_after,
            duration=time.monotonic() - started,
            response_excerpt=excerpt.decode("utf-8", errors="replace"),
        )
