"""Webhook delivery attempts against a real receiver on loopback: headers, signatures,
status handling, the bounds on time and response size, the address guard (names through
the guarded resolver, IP literals before the request), keep-alive; plus the retry
policy, Retry-After parsing, and the verifier published in the docs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from enginehost.core.net.guard import AddressPolicy
from enginehost.core.webhooks import delivery
from enginehost.core.webhooks.delivery import (
    RESERVED_HEADERS,
    Attempt,
    AttemptOutcome,
    WebhookClient,
    default_user_agent,
    is_reserved_header,
)
from enginehost.core.webhooks.guarded_resolver import (
    GuardedResolver,
    PolicyRefusalError,
    literal_address,
)
from enginehost.core.webhooks.retry import (
    RETRY_AFTER_MAX,
    RetryPolicy,
    is_retryable_status,
    parse_retry_after,
)
from enginehost.core.webhooks.signing import (
    openwa_signature,
    timestamped_signature,
    verify_openwa,
    verify_timestamped,
)

DOCS = Path(__file__).parent.parent / "docs" / "webhooks.md"
LOOPBACK = AddressPolicy.from_allow_list(["127.0.0.0/8"])
SECRET = "s3cret-for-tests"
# Non-ASCII, odd spacing and a trailing newline: any re-serialisation would change it.
BODY = b'{"event":"message.received",  "text":"caf\xc3\xa9 \\u00e9"}\n'

# ----------------------------------------------------------------------------- receiver


@dataclass
class Reply:
    """What the receiver answers: ``delay`` before the status line; ``trickle`` sends
    the body a byte every ``trickle`` seconds; ``endless`` streams body without end;
    ``raw`` is sent instead of an answer; ``hang_up`` closes without answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    trickle: float = 0.0
    endless: bool = False
    raw: bytes | None = None
    hang_up: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, f"{name} sent {len(found)} times"
        return found[0] if found else None

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)


@dataclass
class Receiver:
    port: int
    reply: Callable[[Request], Reply] = lambda request: Reply()
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    body_bytes_sent: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, stream: SocketStream) -> None:
        self.connections += 1
        connection = self.connections
        buffered = BufferedByteReceiveStream(stream)
        async with stream:
            try:
                for _ in range(100):  # requests per connection, bounded
                    head = await buffered.receive_until(b"\r\n\r\n", 65536)
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    method, path, _version = request_line.split(" ", 2)
                    headers = [(name, value) for name, _, value in map(_split_header, lines)]
                    length = int({k.lower(): v for k, v in headers}["content-length"])
                    body = await buffered.receive_exactly(length) if length else b""
                    request = Request(method, path, headers, body, connection)
                    self.requests.append(request)
                    reply = self.reply(request)
                    if reply.hang_up:
                        return
                    await self._answer(stream, reply)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                pass  # the client closed the connection
            except OSError:
                pass  # reset by the client while we were writing

    async def _answer(self, stream: SocketStream, reply: Reply) -> None:
        await anyio.sleep(reply.delay)
        if reply.raw is not None:
            await stream.send(reply.raw)
            return
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        if reply.endless:
            headers["Content-Length"] = str(1 << 40)
        head = f"HTTP/1.1 {reply.status} Whatever\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        await stream.send(head.encode("latin-1") + b"\r\n")
        if reply.endless:
            chunk = b"x" * 65536
            for _ in range(20_000):  # about 1.3 GB at most: far more than any cap
                await stream.send(chunk)
                self.body_bytes_sent += len(chunk)
        elif reply.trickle:
            for byte in reply.body:
                await anyio.sleep(reply.trickle)
                await stream.send(bytes([byte]))
                self.body_bytes_sent += 1
        else:
            await stream.send(reply.body)
            self.body_bytes_sent += len(reply.body)


def _split_header(line: str) -> tuple[str, str, str]:
    return line.partition(": ")


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    receiver = Receiver(port=listener.extra(SocketAttribute.local_port))
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, receiver.serve)
        try:
            yield receiver
        finally:
            group.cancel_scope.cancel()
    await listener.aclose()


def attempt(url: str, **changes: Any) -> Attempt:
    values: dict[str, Any] = {
        "url": url,
        "body": BODY,
        "event": "message.received",
        "idempotency_key": "idem-1",
        "delivery_id": "delivery-1",
        "retry_count": 0,
        "secret": SECRET,
        "headers": {},
        **changes,
    }
    return Attempt(**values)


def client(**changes: Any) -> WebhookClient:
    values: dict[str, Any] = {
        "policy": LOOPBACK,
        "timeout": 5.0,
        "user_agent": "enginehost/test (+webhooks)",
        **changes,
    }
    return WebhookClient(**values)


async def deliver(reply: Reply | None = None, **changes: Any) -> tuple[AttemptOutcome, Receiver]:
    """One attempt against a fresh receiver answering ``reply``."""
    async with running_receiver() as receiver, client() as webhooks:
        receiver.reply = lambda request: reply or Reply()
        outcome = await webhooks.send(attempt(receiver.url(), **changes))
    return outcome, receiver


# ----------------------------------------------------------------------------- headers


@pytest.mark.anyio
async def test_an_attempt_sends_the_headers_and_the_exact_body() -> None:
    outcome, receiver = await deliver(retry_count=3)
    assert (outcome.delivered, outcome.status, outcome.error) == (True, 200, None)
    assert (outcome.retryable, outcome.response_excerpt) == (False, "ok")
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook", BODY)
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == "enginehost/test (+webhooks)"
    assert request.header("X-OpenWA-Event") == "message.received"
    assert request.header("X-OpenWA-Idempotency-Key") == "idem-1"
    assert request.header("X-OpenWA-Delivery-Id") == "delivery-1"
    assert request.header("X-OpenWA-Retry-Count") == "3"
    assert request.header("Content-Length") == str(len(BODY))
    assert request.header("Accept-Encoding") == "identity"


def test_the_default_user_agent_names_the_version() -> None:
    from enginehost import __version__

    assert default_user_agent() == f"enginehost/{__version__} (+webhooks)"


@pytest.mark.anyio
async def test_both_signatures_verify_and_a_changed_byte_breaks_them() -> None:
    before = int(time.time())
    _, receiver = await deliver()
    [request] = receiver.requests
    timestamp = request.header("X-Enginehost-Timestamp")
    signature = request.header("X-Enginehost-Signature")
    openwa = request.header("X-OpenWA-Signature")
    assert timestamp is not None and before <= int(timestamp) <= time.time()
    assert openwa == openwa_signature(SECRET, BODY)
    assert signature == timestamped_signature(SECRET, int(timestamp), BODY)
    assert verify_openwa(SECRET, request.body, openwa)
    assert verify_timestamped(SECRET, request.body, timestamp, signature)

    tampered = request.body.replace(b"caf", b"cag")
    assert not verify_openwa(SECRET, tampered, openwa)
    assert not verify_timestamped(SECRET, tampered, timestamp, signature)
    assert not verify_openwa("another secret", request.body, openwa)
    # The timestamp is part of what is signed: moving it breaks the signature.
    assert not verify_timestamped(SECRET, request.body, str(int(timestamp) + 1), signature)


def test_timestamps_outside_the_tolerance_and_malformed_headers_are_rejected() -> None:
    signature = timestamped_signature(SECRET, 1_000_000, BODY)
    assert verify_timestamped(SECRET, BODY, "1000000", signature, now=1_000_300)
    assert verify_timestamped(SECRET, BODY, "1000000", signature, now=999_700)
    assert not verify_timestamped(SECRET, BODY, "1000000", signature, now=1_000_301)  # stale
    assert not verify_timestamped(SECRET, BODY, "1000000", signature, now=999_699)  # future
    assert not verify_timestamped(SECRET, BODY, "1000000", signature, tolerance=10, now=1_000_011)
    # Same seconds spelled differently sign different bytes.
    assert not verify_timestamped(SECRET, BODY, "01000000", signature, now=1_000_000)
    for bad_timestamp in (None, "", "-1000000", "1e6", "1000000.0", "\u0661" + "\u0660" * 6):
        assert not verify_timestamped(SECRET, BODY, bad_timestamp, signature, now=1_000_000)
    hex_part = signature.removeprefix("sha256=")
    for bad_signature in (None, "", hex_part, "sha1=" + hex_part, signature[:-1], signature + "0"):
        assert not verify_timestamped(SECRET, BODY, "1000000", bad_signature, now=1_000_000)
        assert not verify_openwa(SECRET, BODY, bad_signature)
    assert verify_openwa(SECRET, BODY, openwa_signature(SECRET, BODY).upper().replace("SHA", "sha"))
    assert not verify_openwa(SECRET, BODY, "sha256=" + "é" * 64)


@pytest.mark.anyio
@pytest.mark.parametrize("secret", [None, ""])
async def test_no_signature_headers_without_a_secret(secret: str | None) -> None:
    _, receiver = await deliver(secret=secret)
    [request] = receiver.requests
    names = {name.lower() for name, _ in request.headers}
    assert "x-openwa-event" in names
    assert not names & {"x-openwa-signature", "x-enginehost-signature", "x-enginehost-timestamp"}


@pytest.mark.anyio
async def test_extra_headers_are_sent_but_cannot_override_reserved_ones() -> None:
    extra = {
        "X-Custom": "custom value",
        "Authorization": "Bearer receiver-token",
        "x-openwa-event": "forged.event",
        "X-OPENWA-SIGNATURE": "sha256=" + "0" * 64,
        "content-type": "text/plain",
        "Host": "evil.example",
        "Content-Length": "1",
        "Transfer-Encoding": "chunked",
        "X-Enginehost-Future": "x",
    }
    outcome, receiver = await deliver(headers=extra)
    assert outcome.delivered
    [request] = receiver.requests
    assert request.header("X-Custom") == "custom value"
    assert request.header("Authorization") == "Bearer receiver-token"
    assert request.header("X-OpenWA-Event") == "message.received"
    assert request.header("X-OpenWA-Signature") == openwa_signature(SECRET, BODY)
    assert request.header("Content-Type") == "application/json"
    assert request.header("Host") == f"127.0.0.1:{receiver.port}"
    assert request.header("Content-Length") == str(len(BODY))
    assert request.header("Transfer-Encoding") is None
    assert request.header("X-Enginehost-Future") is None
    assert request.body == BODY


@pytest.mark.anyio
async def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    async with running_receiver() as receiver, client() as webhooks:
        url = f"http://hook-user:p%40ss@127.0.0.1:{receiver.port}/hook"
        outcome = await webhooks.send(attempt(url, headers={"Authorization": "Bearer other"}))
    assert outcome.delivered
    [request] = receiver.requests
    expected = "Basic " + base64.b64encode(b"hook-user:p@ss").decode()
    assert request.header("Authorization") == expected
    assert request.path == "/hook"


def test_reserved_header_names() -> None:
    for name in ("X-OpenWA-Idempotency-Key", "host", "CONNECTION", "x-enginehost-anything"):
        assert is_reserved_header(name)
    assert not is_reserved_header("Authorization")
    assert all(name == name.lower() for name in RESERVED_HEADERS)
    assert {"x-openwa-retry-count", "transfer-encoding"} <= RESERVED_HEADERS


@pytest.mark.anyio
async def test_an_invalid_extra_header_fails_without_revealing_its_value() -> None:
    outcome, receiver = await deliver(headers={"X-Token": "abc\r\nX-Injected: 1"})
    assert receiver.requests == []
    assert not outcome.delivered and not outcome.retryable
    assert outcome.error is not None and "X-Token" in outcome.error
    assert "abc" not in outcome.error


# ----------------------------------------------------------------------------- statuses


@pytest.mark.anyio
async def test_a_redirect_is_not_followed_and_not_retried() -> None:
    async with running_receiver() as receiver, client() as webhooks:
        receiver.reply = lambda request: Reply(
            302, {"Location": receiver.url("/elsewhere?token=t0ken")}, b""
        )
        outcome = await webhooks.send(attempt(receiver.url()))
    assert [request.path for request in receiver.requests] == ["/hook"]
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, 302, False)
    assert outcome.error is not None and "redirect" in outcome.error
    assert "t0ken" not in outcome.error


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (413, False),
        (422, False),
        (408, True),
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
async def test_which_failed_answers_are_retried(status: int, retryable: bool) -> None:
    outcome, _ = await deliver(Reply(status, body=b"nope"))
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, status, retryable)
    assert outcome.error == f"the receiver answered HTTP {status}"
    assert outcome.response_excerpt == "nope"
    assert outcome.retry_after is None


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_success_is_never_retryable(status: int) -> None:
    assert not is_retryable_status(status)


@pytest.mark.parametrize("status", [100, 301, 302, 307, 308, 400, 404, 499, 600])
def test_other_statuses_are_not_retryable(status: int) -> None:
    assert not is_retryable_status(status)


@pytest.mark.anyio
async def test_retry_after_of_a_429_is_honoured_by_the_policy() -> None:
    outcome, _ = await deliver(Reply(429, {"Retry-After": "120"}))
    assert (outcome.retryable, outcome.retry_after) == (True, 120.0)
    policy = RetryPolicy(base=5, cap=300)
    assert policy.delay(1, retry_after=outcome.retry_after, random=lambda: 0.999) == 120.0
    # A shorter request does not shorten the computed backoff.
    assert policy.delay(8, retry_after=10.0, random=lambda: 0.0) == 150.0


@pytest.mark.anyio
async def test_retry_after_of_a_503_may_be_a_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    outcome, _ = await deliver(Reply(503, {"Retry-After": format_datetime(when, usegmt=True)}))
    assert outcome.retryable and outcome.retry_after is not None
    assert 80 <= outcome.retry_after <= 90


@pytest.mark.anyio
async def test_retry_after_is_ignored_on_other_statuses() -> None:
    outcome, _ = await deliver(Reply(500, {"Retry-After": "120"}))
    assert outcome.retryable and outcome.retry_after is None


# ----------------------------------------------------------------------------- bounds


@pytest.mark.anyio
async def test_a_receiver_slower_than_the_timeout_is_cut_off() -> None:
    async with running_receiver() as receiver, client(timeout=0.5) as webhooks:
        receiver.reply = lambda request: Reply(delay=5.0)
        started = time.monotonic()
        outcome = await webhooks.send(attempt(receiver.url()))
        elapsed = time.monotonic() - started
    assert elapsed < 1.2 and 0.45 <= outcome.duration < 1.2
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error == "the receiver did not answer within 0.5 s"
    _assert_not_cancelling()


def _assert_not_cancelling() -> None:
    """A deadline that fired inside the client must not leave the task cancelled."""
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


@pytest.mark.anyio
async def test_repeated_deadlines_leave_the_task_and_the_client_usable() -> None:
    """The attempt's own deadline and aiohttp's fire at about the same moment; whichever
    wins, the attempt ends as a timeout and the next one works."""
    async with running_receiver() as receiver, client(timeout=0.2) as webhooks:
        receiver.reply = lambda request: Reply(delay=3.0) if request.path == "/slow" else Reply()
        for _ in range(5):
            outcome = await webhooks.send(attempt(receiver.url("/slow")))
            assert outcome.error == "the receiver did not answer within 0.2 s"
            _assert_not_cancelling()
        outcome = await webhooks.send(attempt(receiver.url("/fast")))
    assert outcome.delivered


@pytest.mark.anyio
async def test_the_deadline_covers_a_body_trickled_byte_by_byte() -> None:
    """Each byte arrives well within a per-read timeout; only a whole-attempt deadline
    ends this. The status came first, so it decides the outcome."""
    async with running_receiver() as receiver, client(timeout=0.5) as webhooks:
        receiver.reply = lambda request: Reply(500, body=b"y" * 100, trickle=0.05)
        started = time.monotonic()
        outcome = await webhooks.send(attempt(receiver.url()))
        elapsed = time.monotonic() - started
    assert elapsed < 1.2
    assert (outcome.status, outcome.retryable) == (500, True)
    assert 0 < len(outcome.response_excerpt) < 100
    _assert_not_cancelling()


@pytest.mark.anyio
async def test_a_huge_answer_is_read_only_up_to_the_cap() -> None:
    async with running_receiver() as receiver, client(response_max_bytes=1000) as webhooks:
        receiver.reply = lambda request: Reply(200, endless=True)
        outcome = await webhooks.send(attempt(receiver.url()))
        sent_when_answered = receiver.body_bytes_sent
    # Had the client read on, the 5 s timeout would have ended the attempt instead.
    assert outcome.delivered and outcome.duration < 3
    assert outcome.response_excerpt == "x" * 1000
    assert sent_when_answered < 200 * 1024 * 1024


@pytest.mark.anyio
async def test_a_connection_whose_answer_was_not_read_to_the_end_is_not_reused() -> None:
    async with running_receiver() as receiver, client(response_max_bytes=10) as webhooks:
        receiver.reply = lambda request: (
            Reply(200, endless=True) if request.path == "/huge" else Reply()
        )
        first = await webhooks.send(attempt(receiver.url("/huge")))
        second = await webhooks.send(attempt(receiver.url("/small")))
        third = await webhooks.send(attempt(receiver.url("/small")))
    assert (first.delivered, first.response_excerpt) == (True, "x" * 10)
    assert second.delivered and third.delivered
    # The rest of the huge answer was left on the first connection: never reused. The
    # small answers were read to the end: their connection is.
    assert [request.connection for request in receiver.requests] == [1, 2, 2]


@pytest.mark.anyio
async def test_a_compressed_answer_is_kept_as_it_came() -> None:
    compressed = gzip.compress(b"hello " * 20)
    outcome, receiver = await deliver(Reply(500, {"Content-Encoding": "gzip"}, compressed))
    assert outcome.status == 500
    assert outcome.response_excerpt == compressed.decode("utf-8", errors="replace")
    assert receiver.requests[0].header("Accept-Encoding") == "identity"


@pytest.mark.anyio
async def test_an_excerpt_is_decoded_leniently_and_can_be_disabled() -> None:
    outcome, _ = await deliver(Reply(500, body=b"bad \xff byte"))
    assert outcome.response_excerpt == "bad \ufffd byte"
    async with running_receiver() as receiver, client(response_max_bytes=0) as webhooks:
        receiver.reply = lambda request: Reply(500, body=b"not kept")
        outcome = await webhooks.send(attempt(receiver.url()))
    assert (outcome.status, outcome.response_excerpt) == (500, "")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.anyio
async def test_connection_refused_is_a_retryable_error() -> None:
    async with client() as webhooks:
        outcome = await webhooks.send(attempt(f"http://127.0.0.1:{_closed_port()}/hook"))
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error is not None and outcome.error.startswith("cannot connect")
    assert "refused" in outcome.error
    assert SECRET not in outcome.error


@pytest.mark.anyio
async def test_a_receiver_hanging_up_without_an_answer_is_retried() -> None:
    outcome, receiver = await deliver(Reply(hang_up=True))
    assert len(receiver.requests) == 1
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error == "the receiver closed the connection without answering"


@pytest.mark.anyio
async def test_an_answer_that_is_not_http_is_retried() -> None:
    outcome, _ = await deliver(Reply(raw=b"SMTP ready, not HTTP\r\n\r\n"))
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error == "the receiver answered malformed HTTP"


@pytest.mark.anyio
async def test_the_guard_refuses_loopback_unless_allowed() -> None:
    async with running_receiver() as receiver, client(policy=AddressPolicy()) as webhooks:
        outcome = await webhooks.send(
            attempt(receiver.url("/hook?token=t0ken"), headers={"X-Key": "header-value"})
        )
    assert receiver.connections == 0  # refused before connecting
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, False)
    assert outcome.error is not None
    assert "address policy" in outcome.error and "127.0.0.1" in outcome.error
    assert "loopback" in outcome.error
    for secret in (SECRET, "t0ken", "header-value"):
        assert secret not in outcome.error


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_name_and_a_literal_are_refused_unless_allowed(host: str) -> None:
    """A name goes through the guarded resolver; aiohttp never asks a resolver about a
    literal, so the client vets it before the request. Both are refused by default and
    go through once allowed (a listed name whatever it resolves to, a range by address)."""
    async with running_receiver() as receiver:
        url = f"http://{host}:{receiver.port}/hook"
        async with client(policy=AddressPolicy()) as webhooks:
            refused = await webhooks.send(attempt(url))
        assert receiver.connections == 0
        assert (refused.delivered, refused.status, refused.retryable) == (False, None, False)
        assert refused.error is not None and refused.error.startswith(
            f"refused by the address policy: {host!r} resolves to "
        )
        assert "loopback" in refused.error
        allowed = AddressPolicy.from_allow_list(["127.0.0.0/8", "localhost"])
        async with client(policy=allowed) as webhooks:
            outcome = await webhooks.send(attempt(url))
        assert outcome.delivered and receiver.connections == 1
        assert receiver.requests[0].header("Host") == f"{host}:{receiver.port}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),  # IPv4-mapped loopback
        ("[fe80::1%25lo]", "fe80::1"),  # link-local, with a zone
        ("0x7f.0.0.1", "127.0.0.1"),  # not a literal to aiohttp: resolved, then refused
    ],
)
async def test_other_spellings_of_local_addresses_are_refused(host: str, named: str) -> None:
    async with running_receiver() as receiver, client(policy=AddressPolicy()) as webhooks:
        outcome = await webhooks.send(attempt(f"http://{host}:{receiver.port}/hook"))
    assert receiver.connections == 0
    assert (outcome.delivered, outcome.retryable) == (False, False)
    assert outcome.error is not None and "address policy" in outcome.error
    assert named in outcome.error


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["2130706433", "127.1", "0177.0.0.1", "127.0.0.1."])
async def test_legacy_numeric_hosts_are_invalid_urls(host: str) -> None:
    """Forms the socket layer would map onto an address: never connected to."""
    async with running_receiver() as receiver, client() as webhooks:
        outcome = await webhooks.send(attempt(f"http://{host}:{receiver.port}/hook"))
    assert receiver.connections == 0
    assert (outcome.delivered, outcome.retryable) == (False, False)
    assert outcome.error == "the URL is not valid"


def test_literal_addresses_are_told_from_names() -> None:
    assert str(literal_address("127.0.0.1")) == "127.0.0.1"
    assert str(literal_address("::1")) == "::1"
    assert str(literal_address("fe80::1%25eth0")) == "fe80::1"
    for name in ("localhost", "hooks.example", "0x7f.0.0.1", "1.example"):
        assert literal_address(name) is None
    for bad in ("2130706433", "127.1", "::zz", "1.2.3.4."):
        with pytest.raises(ValueError, match="does not appear to be"):
            literal_address(bad)


@dataclass
class Names:
    """Scripted name resolution: ``answers`` maps a name to its addresses or an error."""

    answers: dict[str, list[str] | OSError] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)


def _results(host: str, port: int, addresses: list[str]) -> list[ResolveResult]:
    return [
        {
            "hostname": host,
            "host": address,
            "port": port,
            "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        for address in addresses
    ]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    """Replaces the system resolver under the guard (the guard itself stays)."""
    script = Names()

    class Scripted(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            script.calls.append(host)
            answer = script.answers[host]
            if isinstance(answer, OSError):
                raise answer
            return _results(host, port, answer)

        async def close(self) -> None:
            pass

    monkeypatch.setattr(delivery, "ThreadedResolver", Scripted)
    return script


@pytest.mark.anyio
async def test_the_connection_goes_to_the_vetted_address(names: Names) -> None:
    """aiohttp connects to what the resolver returned: the receiver on loopback, under
    a name, allowed by range; the answer is cached, the Host header keeps the name."""
    names.answers["hooks.test"] = ["127.0.0.1"]
    async with running_receiver() as receiver, client() as webhooks:
        for _ in range(2):
            outcome = await webhooks.send(attempt(f"http://hooks.test:{receiver.port}/hook"))
            assert outcome.delivered
    assert receiver.requests[0].header("Host") == f"hooks.test:{receiver.port}"
    assert names.calls == ["hooks.test"]


@pytest.mark.anyio
async def test_one_refused_address_refuses_the_name_every_time(names: Names) -> None:
    names.answers["mixed.test"] = ["127.0.0.1", "10.1.2.3"]  # the range allows only one
    async with running_receiver() as receiver, client() as webhooks:
        outcomes = [
            await webhooks.send(attempt(f"http://mixed.test:{receiver.port}/hook"))
            for _ in range(2)
        ]
    assert receiver.connections == 0
    for outcome in outcomes:
        assert (outcome.delivered, outcome.retryable) == (False, False)
        assert outcome.error == (
            "refused by the address policy: 'mixed.test' resolves to 10.1.2.3,"
            " a loopback, private or link-local address"
        )
    assert names.calls == ["mixed.test", "mixed.test"]  # a refusal is never cached


@pytest.mark.anyio
async def test_a_name_that_does_not_resolve_is_retried(names: Names) -> None:
    names.answers["gone.test"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    async with client() as webhooks:
        outcome = await webhooks.send(attempt("http://gone.test/hook?token=t0ken"))
    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
    assert outcome.error is not None
    assert outcome.error.startswith("cannot connect: 'gone.test' does not resolve")
    assert "t0ken" not in outcome.error


@pytest.mark.anyio
async def test_the_guarded_resolver_passes_allowed_answers_through() -> None:
    closed: list[bool] = []

    class Fixed(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return _results(host, port, ["93.184.216.34", "2606:2800:220:1::1", "fe80::1"])

        async def close(self) -> None:
            closed.append(True)

    resolver = GuardedResolver(AddressPolicy.from_allow_list(["fe80::/10"]), Fixed())
    results = await resolver.resolve("public.test", 443)
    assert [result["host"] for result in results] == [
        "93.184.216.34",
        "2606:2800:220:1::1",
        "fe80::1",
    ]
    with pytest.raises(PolicyRefusalError, match=r"'public.test' resolves to fe80::1"):
        await GuardedResolver(AddressPolicy(), Fixed()).resolve("public.test", 443)
    await resolver.close()
    assert closed == [True]


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "http://[::1/hook", "not a url"])
async def test_a_url_that_cannot_be_requested_is_not_retried(url: str) -> None:
    async with client() as webhooks:
        outcome = await webhooks.send(attempt(url))
    assert (outcome.delivered, outcome.retryable) == (False, False)
    assert outcome.error is not None and "URL" in outcome.error


@pytest.mark.anyio
async def test_sequential_attempts_reuse_one_connection() -> None:
    async with running_receiver() as receiver, client() as webhooks:
        outcomes = [
            await webhooks.send(attempt(receiver.url(), delivery_id=f"d{index}"))
            for index in range(5)
        ]
    assert all(outcome.delivered for outcome in outcomes)
    assert [request.header("X-OpenWA-Delivery-Id") for request in receiver.requests] == [
        f"d{index}" for index in range(5)
    ]
    assert receiver.connections == 1
    assert {request.connection for request in receiver.requests} == {1}


@pytest.mark.anyio
async def test_concurrent_attempts_share_at_most_max_connections() -> None:
    async with running_receiver() as receiver, client(max_connections=2) as webhooks:
        receiver.reply = lambda request: Reply(delay=0.05)
        outcomes: list[AttemptOutcome] = []

        async def one(index: int) -> None:
            outcomes.append(await webhooks.send(attempt(receiver.url(), delivery_id=f"d{index}")))

        async with anyio.create_task_group() as group:
            for index in range(8):
                group.start_soon(one, index)
    assert len(outcomes) == 8 and all(outcome.delivered for outcome in outcomes)
    assert receiver.connections == 2


@pytest.mark.anyio
async def test_environment_proxies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy, the address connected to says nothing about the receiver's."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    outcome, receiver = await deliver()
    assert outcome.delivered and len(receiver.requests) == 1


def test_a_client_built_outside_an_event_loop_works_inside_one() -> None:
    """The daemon may build the client before its loop-bound work starts: aiohttp's
    session is made on the first attempt, in the loop that makes it."""
    webhooks = client()

    async def main() -> tuple[AttemptOutcome, Receiver]:
        async with running_receiver() as receiver, webhooks:
            outcome = await webhooks.send(attempt(receiver.url()))
        with pytest.raises(RuntimeError, match="closed"):
            await webhooks.send(attempt(receiver.url()))
        await webhooks.aclose()  # closing twice is harmless
        return outcome, receiver

    outcome, receiver = asyncio.run(main())
    assert outcome.delivered and len(receiver.requests) == 1


def test_client_arguments_are_checked() -> None:
    for bad in ({"timeout": 0}, {"max_connections": 0}, {"response_max_bytes": -1}):
        with pytest.raises(ValueError, match=r"must|cannot"):
            client(**bad)


def test_an_attempt_repr_hides_the_secret_headers_and_body() -> None:
    text = repr(attempt("http://h/", headers={"X-Key": "header-value"}))
    assert "delivery-1" in text
    for hidden in (SECRET, "header-value", "caf"):
        assert hidden not in text


# ----------------------------------------------------------------------------- retry policy


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base=5.0, cap=300.0)
    nominal = [policy.nominal(attempt) for attempt in range(1, 11)]
    assert nominal == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]
    assert policy.nominal(0) == 5 and policy.nominal(10_000) == 300  # no overflow
    top = [policy.delay(attempt, random=lambda: 1.0) for attempt in range(1, 11)]
    assert top == nominal


def test_equal_jitter_stays_within_half_to_full_delay() -> None:
    policy = RetryPolicy(base=5.0, cap=300.0)
    assert policy.delay(1, random=lambda: 0.0) == 2.5  # never below base / 2
    assert policy.delay(1, random=lambda: 0.5) == 3.75
    assert policy.delay(3, random=lambda: 0.0) == 10.0
    assert policy.delay(20, random=lambda: 0.0) == 150.0
    for attempt in range(1, 15):
        for _ in range(50):
            delay = policy.delay(attempt)
            assert policy.nominal(attempt) / 2 <= delay <= policy.nominal(attempt)


def test_retry_after_is_honoured_up_to_the_hard_ceiling() -> None:
    policy = RetryPolicy(base=5.0, cap=300.0)
    assert RETRY_AFTER_MAX == 3600
    assert policy.delay(1, retry_after=1_000_000, random=lambda: 0.0) == RETRY_AFTER_MAX
    assert policy.delay(1, retry_after=float("inf"), random=lambda: 0.0) == RETRY_AFTER_MAX
    assert policy.delay(1, retry_after=float("nan"), random=lambda: 0.0) == 2.5
    assert policy.delay(1, retry_after=-5, random=lambda: 0.0) == 2.5
    assert policy.delay(1, retry_after=2000, random=lambda: 0.0) == 2000
    # An operator's cap longer than the ceiling still applies to the backoff itself.
    long = RetryPolicy(base=5000.0, cap=7200.0)
    assert long.delay(2, retry_after=10, random=lambda: 1.0) == 7200


def test_attempts_are_exhausted_at_the_maximum() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(made) for made in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    "arguments", [{"max_attempts": 0}, {"base": 0}, {"base": 10.0, "cap": 5.0}]
)
def test_a_nonsensical_policy_is_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"max_attempts|base"):
        RetryPolicy(**arguments)


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("99999999999") == RETRY_AFTER_MAX
    assert parse_retry_after("Thu, 26 Nov 2026 12:01:30 GMT", now=now) == 90.0
    assert parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now=now) == 0.0  # past
    assert parse_retry_after("Thu, 26 Nov 2026 12:01:30 GMT", now=now.replace(tzinfo=None)) == 90
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:00 GMT", now=now) == RETRY_AFTER_MAX
    for garbage in (None, "", "soon", "12 seconds", "0x10", "1e3", "Thu, 99 Nov 2026 xx GMT"):
        assert parse_retry_after(garbage, now=now) is None


# ----------------------------------------------------------------------------- the docs


def _documented_verifier() -> dict[str, Any]:
    text = DOCS.read_text()
    found = re.search(r"<!-- verifier -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, "docs/webhooks.md has no verifier block"
    namespace: dict[str, Any] = {"__name__": "documented_verifier"}
    exec(compile(found.group(1), str(DOCS), "exec"), namespace)
    return namespace


def test_the_docs_describe_both_schemes_and_the_retries() -> None:
    text = DOCS.read_text()
    assert "## Verifying deliveries" in text and "## Retries" in text
    for name in ("X-OpenWA-Signature", "X-Enginehost-Signature", "X-Enginehost-Timestamp"):
        assert name in text


@pytest.mark.anyio
async def test_the_documented_verifier_checks_a_real_delivery() -> None:
    verifier = _documented_verifier()
    verify, verify_openwa_documented = verifier["verify"], verifier["verify_openwa"]
    _, receiver = await deliver()
    [request] = receiver.requests
    headers = request.header_dict()  # as received on the wire, names in their own case
    assert verify(SECRET, request.body, headers)
    assert verify(SECRET, request.body, {k.lower(): v for k, v in headers.items()})
    assert verify_openwa_documented(SECRET, request.body, headers)

    tampered = request.body[:-2] + b"!\n"
    assert not verify(SECRET, tampered, headers)
    assert not verify_openwa_documented(SECRET, tampered, headers)
    assert not verify("wrong secret", request.body, headers)

    stale_time = int(time.time()) - 301
    stale = {
        **headers,
        "X-Enginehost-Timestamp": str(stale_time),
        "X-Enginehost-Signature": timestamped_signature(SECRET, stale_time, request.body),
    }
    assert not verify(SECRET, request.body, stale)
    assert verify(SECRET, request.body, stale, tolerance=400)
    missing = {k: v for k, v in headers.items() if k != "X-Enginehost-Timestamp"}
    assert not verify(SECRET, request.body, missing)
    assert not verify(SECRET, request.body, {**headers, "X-Enginehost-Timestamp": "soon"})
