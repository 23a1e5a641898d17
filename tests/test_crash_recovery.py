"""A daemon killed with SIGKILL in the middle of a send and inbound burst comes back whole.

Real processes: a daemon with three sandbox sessions, each receiving simulated inbound
chatter (every message the host took is journalled by the sandbox), while clients send
texts over the API. SIGKILL, restart, then check: every session that should run is
ready again; every send the API acknowledged and every inbound message the host took is
stored once; no row is left pending.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import Daemon, cli_env

pytestmark = pytest.mark.slow

SESSIONS = ("alpha", "beta", "gamma")


def _env(tmp_path: Path) -> dict[str, str]:
    return cli_env(
        tmp_path / "data",
        ENGINEHOST_DEFAULT_ENGINE="sandbox",
        ENGINEHOST_ENGINES__SANDBOX__AUTO_SCAN_SECONDS="0",
        ENGINEHOST_ENGINES__SANDBOX__ACK_DELAY_SECONDS="0.01",
        ENGINEHOST_ENGINES__SANDBOX__CHATTER_PER_SECOND="150",
        ENGINEHOST_ENGINES__SANDBOX__CHATTER_JOURNAL=str(tmp_path / "journal"),
        ENGINEHOST_SESSION_RESTORE_STAGGER="0",
    )


def _wait_ready(client: httpx.Client, names: tuple[str, ...], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        statuses = {name: client.get(f"/api/sessions/{name}").json()["status"] for name in names}
        if set(statuses.values()) == {"ready"}:
            return
        time.sleep(0.1)
    raise AssertionError(f"sessions not ready within {within} s: {statuses}")


def test_sigkill_during_a_burst_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    key = None
    first = Daemon(env)
    acknowledged: list[str] = []  # engine message ids of sends answered 201
    lock = threading.Lock()
    stop = threading.Event()
    try:
        first.start()
        key = (tmp_path / "data" / "admin-api-key").read_text().strip()
        client = httpx.Client(base_url=first.url, headers={"X-API-Key": key}, timeout=10)
        for name in SESSIONS:
            created = client.post("/api/sessions", json={"name": name, "start": True})
            assert created.status_code == 201, created.text
        _wait_ready(client, SESSIONS)

        def sender(session: str) -> None:
            with httpx.Client(base_url=first.url, headers={"X-API-Key": key}, timeout=5) as http:
                for index in range(100_000):  # bounded; the kill ends it much sooner
                    if stop.is_set():
                        return
                    try:
                        response = http.post(
                            f"/api/sessions/{session}/messages/send-text",
                            json={"chatId": "15557654321@c.us", "text": f"burst {index}"},
                            headers={"Idempotency-Key": uuid.uuid4().hex},
                        )
                    except httpx.HTTPError:
                        return  # the daemon is gone
                    if response.status_code == 201:
                        with lock:
                            acknowledged.append(response.json()["messageId"])

        threads = [threading.Thread(target=sender, args=(name,)) for name in SESSIONS]
        for thread in threads:
            thread.start()
        time.sleep(2.0)  # sends and chatter in full flow
        first.process.kill()  # SIGKILL: no shutdown code runs
        first.process.wait(10)
        stop.set()
        for thread in threads:
            thread.join(10)
        client.close()
    finally:
        stop.set()
        first.kill()
    assert len(acknowledged) > 50, "the burst did not get going"

    second = Daemon(env)
    try:
        second.start()
        with httpx.Client(base_url=second.url, headers={"X-API-Key": key}, timeout=10) as client:
            _wait_ready(client, SESSIONS)  # restored on boot, linked from saved auth
            time.sleep(0.5)  # let some chatter of the new run through as well
        code, _ = second.stop()
        assert code == 0
    finally:
        second.kill()

    database = sqlite3.connect(tmp_path / "data" / "enginehost.sqlite")
    try:
        rows = database.execute("SELECT session_id, message_id, status FROM messages").fetchall()
        with_ids = [(session_id, message_id) for session_id, message_id, _ in rows if message_id]
        ids = set(with_ids)
        sessions = dict(database.execute("SELECT name, id FROM sessions").fetchall())
    finally:
        database.close()
    stored_message_ids = {message_id for _, message_id in ids}
    assert [r for r in rows if r[2] == "pending"] == [], "a send was left pending"
    assert len(ids) == len(with_ids), "a message is stored twice"
    missing_sends = [m for m in acknowledged if m not in stored_message_ids]
    assert missing_sends == [], f"{len(missing_sends)} acknowledged sends are not stored"
    journal = [
        tuple(line.split())
        for line in (tmp_path / "journal").read_text().splitlines()
        if line.strip()
    ]
    assert len(journal) > 100, "the chatter did not get going"
    lost = [entry for entry in journal if entry not in ids]
    assert lost == [], f"{len(lost)} inbound messages the host took are not stored"
    assert set(sessions) == set(SESSIONS)
