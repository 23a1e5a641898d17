"""A daemon killed with SIGKILL while delivering a burst to a flaky receiver loses no
webhook event, duplicates only as retries, and keeps each chat's order.

Real processes: a daemon whose two sandbox sessions receive simulated inbound chatter
(journalled by the sandbox once the host took each message), delivering to a receiver
on loopback that answers some requests 500/503. SIGKILL mid-burst, restart, stop the
sessions, let the outbox drain. Then: every stored message was delivered (a 2xx answer)
with a valid signature; every repeat of a message carries the same idempotency key (a
retry or a redelivery, never a second event); per chat, messages first arrived in the
order they were stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehost.core.webhooks.signing import verify_openwa, verify_timestamped
from tests.support.daemon import Daemon, cli_env
from tests.support.receiver import Answer, Received, receiver

pytestmark = pytest.mark.slow

SESSIONS = ("alpha", "beta")
SECRET = "crash-test-secret-0123456789"


class Flaky:
    """Answers every 7th request 500 and every 11th 503 (with Retry-After: 0)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.answers: dict[int, int] = {}

    def __call__(self, request: Received) -> Answer:
        with self.lock:
            self.count += 1
            number = self.count
        if number % 7 == 0:
            status, headers = 500, {}
        elif number % 11 == 0:
            status, headers = 503, {"Retry-After": "0"}
        else:
            status, headers = 200, {}
        with self.lock:
            self.answers[id(request)] = status
        return status, headers, b"ok" if status == 200 else b"try again"


def _env(tmp_path: Path) -> dict[str, str]:
    return cli_env(
        tmp_path / "data",
        ENGINEHOST_DEFAULT_ENGINE="sandbox",
        ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS="0",
        ENGINEHOST_ENGINES__SANDBOX__CHATTER_PER_SECOND="150",
        ENGINEHOST_ENGINES__SANDBOX__CHATTER_JOURNAL=str(tmp_path / "journal"),
        ENGINEHOST_SESSION_RESTORE_STAGGER="0",
        ENGINEHOST_WEBHOOK_ALLOWED_HOSTS="127.0.0.0/8",
        ENGINEHOST_WEBHOOK_RETRY_BASE="0.05",
        ENGINEHOST_WEBHOOK_RETRY_CAP="0.3",
        ENGINEHOST_WEBHOOK_MAX_ATTEMPTS="50",
    )


def _wait(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {within} s")


def _ready(client: httpx.Client) -> bool:
    statuses = {client.get(f"/api/sessions/{name}").json()["status"] for name in SESSIONS}
    return statuses == {"ready"}


def _outbox_depth(tmp_path: Path) -> int:
    database = sqlite3.connect(tmp_path / "data" / "enginehost.sqlite", timeout=10)
    try:
        return int(database.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0])
    finally:
        database.close()


def test_sigkill_mid_burst_delivers_everything_in_order(tmp_path: Path) -> None:
    env = _env(tmp_path)
    flaky = Flaky()
    with receiver(flaky) as hook:
        first = Daemon(env)
        try:
            first.start()
            key = (tmp_path / "data" / "admin-api-key").read_text().strip()
            with httpx.Client(base_url=first.url, headers={"X-API-Key": key}, timeout=10) as api:
                created = api.post(
                    "/api/webhooks",
                    json={"url": hook.url, "events": ["message.received"], "secret": SECRET},
                )
                assert created.status_code == 201, created.text
                for name in SESSIONS:
                    response = api.post("/api/sessions", json={"name": name, "start": True})
                    assert response.status_code == 201, response.text
                _wait(lambda: _ready(api), 30, "sessions ready")
                _wait(lambda: len(hook.requests) > 150, 30, "deliveries flowing")
            first.process.kill()  # SIGKILL mid-burst: no shutdown code runs
            first.process.wait(10)
        finally:
            first.kill()
        before_restart = len(hook.requests)

        second = Daemon(env)
        try:
            second.start()
            with httpx.Client(base_url=second.url, headers={"X-API-Key": key}, timeout=10) as api:
                _wait(lambda: _ready(api), 30, "sessions restored")
                for name in SESSIONS:  # the chatter ends with the sessions
                    assert api.post(f"/api/sessions/{name}/stop").status_code == 200
            _wait(lambda: _outbox_depth(tmp_path) == 0, 60, "the outbox drained")
            code, _ = second.stop()
            assert code == 0
        finally:
            second.kill()

    requests = list(hook.requests)
    assert len(requests) > before_restart, "nothing was delivered after the restart"
    database = sqlite3.connect(tmp_path / "data" / "enginehost.sqlite")
    try:
        stored = database.execute(
            "SELECT session_id, chat_id, message_id FROM messages ORDER BY rowid"
        ).fetchall()
    finally:
        database.close()
    journal = {
        tuple(line.split())
        for line in (tmp_path / "journal").read_text().splitlines()
        if line.strip()
    }
    assert len(journal) > 100, "the chatter did not get going"
    assert journal <= {(s, m) for s, _, m in stored}

    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    delivered: dict[tuple[str, str], int] = {}  # first 2xx arrival, by position
    for position, request in enumerate(requests):
        assert verify_openwa(SECRET, request.body, request.headers["x-openwa-signature"])
        assert verify_timestamped(
            SECRET,
            request.body,
            request.headers["x-enginehost-timestamp"],
            request.headers["x-enginehost-signature"],
            tolerance=600,
        )
        envelope = request.json()
        message = (envelope["sessionId"], envelope["data"]["messageId"])
        keys[message].add(request.headers["x-openwa-idempotency-key"])
        if flaky.answers[id(request)] == 200:
            delivered.setdefault(message, position)

    missing = [(s, m) for s, _, m in stored if (s, m) not in delivered]
    assert missing == [], f"{len(missing)} stored messages were never delivered"
    assert all(len(k) == 1 for k in keys.values()), "a message was announced twice"
    assert any(flaky.answers[id(r)] != 200 for r in requests), "no failure was retried"
    by_chat: dict[tuple[str, str], list[str]] = defaultdict(list)
    for session_id, chat_id, message_id in stored:
        by_chat[(session_id, chat_id)].append(message_id)
    for (session_id, _), message_ids in by_chat.items():
        arrivals = [delivered[(session_id, m)] for m in message_ids]
        assert arrivals == sorted(arrivals), "a chat's messages arrived out of order"
