"""The baileys engine end to end: the host's API, the real sidecar running real
Baileys 6.17.16, and the loopback fake WhatsApp service (tests/fakewa) in place of
WhatsApp. Loopback only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

from enginehost.plugins.baileys_bridge import BaileysPlugin
from tests.support.api import BAILEYS, SANDBOX, ApiHarness, api_harness
from tests.support.daemon import Daemon, cli_env
from tests.support.fakewa import FakeWhatsApp, fake_whatsapp, require_node_modules
from tests.support.procs import alive, children, command_line
from tests.support.wait import until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PHONE = "15550001111"
CONTACT = "15551234567"


@dataclass
class Bridge:
    api: ApiHarness
    client: httpx.AsyncClient
    plugin: BaileysPlugin
    fake: FakeWhatsApp
    auth_dir: Path

    async def session(self, session_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(self, session_id: str, status: str, within: float = 20) -> None:
        async def reached() -> bool:
            return (await self.session(session_id))["status"] == status

        try:
            await until(reached, within=within, poll=0.05)
        except TimeoutError:
            raise AssertionError(
                f"session never reached {status}: {await self.session(session_id)}"
            ) from None

    async def qr(self, session_id: str) -> str:
        payload: dict[str, Any] = {}

        async def shown() -> bool:
            response = await self.client.get(f"/api/sessions/{session_id}/qr")
            if response.status_code == 200 and response.json().get("qr"):
                payload.update(response.json())
                return True
            return False

        await until(shown, within=20, poll=0.05)
        return str(payload["qr"])

    async def create(self, name: str) -> str:
        response = await self.client.post(
            "/api/sessions", json={"name": name, "engine": "baileys", "start": True}
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    async def paired(self, name: str, phone: str = PHONE) -> tuple[str, str]:
        """A new session, linked by the fake phone ``phone`` and ready: (id, device jid)."""
        session_id = await self.create(name)
        jid = await self.fake.scan(await self.qr(session_id), phone=phone)
        await self.wait_status(session_id, "ready")
        return session_id, jid

    async def sockets(self) -> dict[str, dict[str, Any]]:
        """Per session: sockets and listeners, as the sidecars report them."""
        merged: dict[str, dict[str, Any]] = {}
        for stats in await self.plugin.debug_stats():
            merged.update(stats["sessions"])
        return merged


@asynccontextmanager
async def bridge(tmp_path: Path, **config: Any) -> AsyncIterator[Bridge]:
    """The API with the baileys engine pointed at a fresh fake service."""
    require_node_modules()
    async with fake_whatsapp() as fake:
        blob = {
            "websocket_url": fake.url,
            "auth_dir": str(tmp_path / "auth"),
            "connect_watchdog_ms": 2000,
            "connect_timeout_ms": 1500,
            "sessions_per_sidecar": 10,
            **config,
        }
        async with api_harness(
            tmp_path,
            entry_points=(SANDBOX, BAILEYS),
            engines={"baileys": blob},
            reconnect_base=0.1,
            reconnect_cap=1.0,
            session_teardown_timeout=5.0,
        ) as api:
            plugin = api.state.plugins.engine_plugin("baileys")
            assert isinstance(plugin, BaileysPlugin)
            yield Bridge(api, api.client(api.admin_secret), plugin, fake, tmp_path / "auth")


async def _connections(fake: FakeWhatsApp, count: int, within: float = 10) -> None:
    """Wait until the fake service has exactly ``count`` open WebSocket connections."""

    async def reached() -> bool:
        return int((await fake.status())["connections"]) == count

    try:
        await until(reached, within=within, poll=0.05)
    except TimeoutError:
        raise AssertionError(f"not {count} connections: {await fake.status()}") from None


async def test_pair_then_receive_send_and_ack(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        received = b.api.state.bus.subscribe(types=["message.received"])
        session_id, jid = await b.paired("alpha")
        assert jid.startswith(f"{PHONE}:")
        session = await b.session(session_id)
        assert session["phone"] == PHONE
        statuses = [entry["status"] for entry in session["statusHistory"]]
        assert "qr_ready" in statuses and statuses[-1] == "ready"
        assert (b.auth_dir / session_id / "creds.json").is_file()

        # Inbound: stored and published.
        await b.fake.send_text(PHONE, "hello bot", sender=CONTACT)
        event = await received.get()
        assert event.data["body"] == "hello bot"
        assert event.data["chatId"] == f"{CONTACT}@c.us"
        history = await b.client.get(f"/api/sessions/{session_id}/messages")
        [stored] = history.json()["messages"]
        assert (stored["body"], stored["direction"]) == ("hello bot", "incoming")

        # Outbound: the fake service decrypts what Baileys encrypted.
        sent = await b.client.post(
            f"/api/sessions/{session_id}/messages/send-text",
            json={"chatId": f"{CONTACT}@c.us", "text": "hi there"},
        )
        assert sent.status_code in (200, 201), sent.text
        message_id = sent.json()["messageId"]
        await until(lambda: _has_outbound(b.fake, message_id, "hi there"), within=10, poll=0.05)
        # The phone's receipt moves the stored status forward.
        await b.fake.ack(message_id, "read")

        async def read() -> bool:
            answer = await b.client.get(f"/api/sessions/{session_id}/messages")
            rows = [m for m in answer.json()["messages"] if m["messageId"] == message_id]
            return len(rows) == 1 and rows[0]["status"] == "read"

        await until(read, within=10, poll=0.05)


async def _has_outbound(fake: FakeWhatsApp, message_id: str, text: str) -> bool:
    return any(m["id"] == message_id and m["text"] == text for m in await fake.outbound())


async def test_disconnect_codes_lead_to_the_right_host_action(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        alpha, alpha_jid = await b.paired("alpha", "15550001111")
        beta, beta_jid = await b.paired("beta", "15550002222")
        gamma, gamma_jid = await b.paired("gamma", "15550003333")

        # 503 and 428 (transient) and 515 (restart now): back to ready by themselves,
        # each with a new login.
        for code in (503, 515, 428):
            mark = b.fake.mark()
            await b.fake.disconnect(code, alpha_jid)
            await b.fake.wait_for("loggedIn", since=mark)
            await b.wait_status(alpha, "ready")
        for code in (503, 428):
            assert await _reason_seen(b, alpha, f"code {code}")
        # 500 (bad session) is transient too.
        mark = b.fake.mark()
        await b.fake.disconnect(500, alpha_jid)
        await b.fake.wait_for("loggedIn", since=mark)
        await b.wait_status(alpha, "ready")
        assert await _reason_seen(b, alpha, "code 500")
        # 408: a service that answers nothing times the connection out; it is retried.
        await b.fake.silent(True)
        await b.fake.disconnect(428, alpha_jid, drop=True)
        await until(lambda: _reason_seen(b, alpha, "code 408"), within=15)
        mark = b.fake.mark()
        await b.fake.silent(False)
        await b.fake.wait_for("loggedIn", since=mark, timeout=15)
        await b.wait_status(alpha, "ready")

        # 440 (replaced) and 403 (forbidden): terminal, the session stays down.
        await b.fake.disconnect(440, alpha_jid)
        await b.wait_status(alpha, "failed")
        assert (await b.session(alpha))["desiredState"] == "stopped"
        await b.fake.disconnect(403, gamma_jid)
        await b.wait_status(gamma, "failed")
        assert (b.auth_dir / gamma / "creds.json").is_file()  # kept for inspection

        # 401 (logged out from the phone): auth wiped, the session waits for a new QR.
        await b.fake.disconnect(401, beta_jid)
        await b.wait_status(beta, "disconnected")
        await until(lambda: not (b.auth_dir / beta).exists(), within=10)
        assert (await b.session(beta))["phone"] is None


async def _reason_seen(b: Bridge, session_id: str, fragment: str) -> bool:
    history = (await b.session(session_id))["statusHistory"]
    return any(fragment in (entry.get("reason") or "") for entry in history)


async def test_twenty_reconnects_leave_one_connection_and_constant_listeners(
    tmp_path: Path,
) -> None:
    async with bridge(tmp_path) as b:
        session_id, jid = await b.paired("alpha")
        await _connections(b.fake, 1)
        before = (await b.sockets())[session_id]
        assert before["sockets"] == 1
        for _ in range(20):
            mark = b.fake.mark()
            await b.fake.disconnect(503, jid)
            await b.fake.wait_for("loggedIn", since=mark)
            await b.wait_status(session_id, "ready")
        await _connections(b.fake, 1)
        assert (await b.fake.status())["connections"] == 1
        after = (await b.sockets())[session_id]
        assert (after["sockets"], after["listeners"]) == (1, before["listeners"])
        # Stop leaves no connection at all.
        stopped = await b.client.post(f"/api/sessions/{session_id}/stop")
        assert stopped.status_code == 200
        await _connections(b.fake, 0)


async def test_logout_unlinks_and_removes_the_auth_state(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        session_id, jid = await b.paired("alpha")
        assert (b.auth_dir / session_id).is_dir()
        response = await b.client.post(f"/api/sessions/{session_id}/logout")
        assert response.status_code == 200, response.text
        assert not (b.auth_dir / session_id).exists()
        # The live connection unlinked the device on the phone's side before it ended.
        [device] = [d for d in (await b.fake.status())["devices"] if d["jid"] == jid]
        assert device["phase"] == "removed"
        await _connections(b.fake, 0)
        # A new start needs a new QR.
        started = await b.client.post(f"/api/sessions/{session_id}/start")
        assert started.status_code == 200
        await b.qr(session_id)


async def test_a_killed_sidecar_is_replaced_and_its_sessions_come_back(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        alpha, _ = await b.paired("alpha", "15550001111")
        beta, _ = await b.paired("beta", "15550002222")
        [old_pid] = b.plugin.sidecar_pids()
        os.kill(old_pid, 9)
        await until(lambda: not alive(old_pid), within=5)
        for session_id in (alpha, beta):
            await until(lambda s=session_id: _reason_seen(b, s, "sidecar"), within=10)
            await b.wait_status(session_id, "ready", within=30)
        [new_pid] = b.plugin.sidecar_pids()
        assert new_pid != old_pid
        await _connections(b.fake, 2)
    # The harness stopped: no sidecar is left behind.
    assert not alive(new_pid)


async def test_a_rejected_upgrade_trips_the_connect_watchdog(tmp_path: Path) -> None:
    async with bridge(tmp_path, connect_watchdog_ms=1000) as b:
        await b.fake.reject_upgrades(403)
        session_id = await b.create("alpha")
        await until(lambda: _reason_seen(b, session_id, "connect watchdog"), within=15)
        assert (await b.session(session_id))["desiredState"] == "running"
        # Once the service answers again, the next attempt shows a QR.
        await b.fake.reject_upgrades(None)
        await b.qr(session_id)


@pytest.mark.parametrize("hang", ["upgrade-403", "silent"])
async def test_stop_while_connecting_keeps_the_sidecar_alive(tmp_path: Path, hang: str) -> None:
    async with bridge(tmp_path) as b:
        # Either the WebSocket never opens (still CONNECTING, where ending a socket
        # crashes Node unless guarded) or it opens and nothing answers.
        if hang == "silent":
            await b.fake.silent(True)
        else:
            await b.fake.reject_upgrades(403)
        session_id = await b.create("alpha")
        await until(lambda: b.plugin.sidecar_pids() != [], within=10)
        [pid] = b.plugin.sidecar_pids()
        stopped = await b.client.post(f"/api/sessions/{session_id}/stop")
        assert stopped.status_code == 200
        await b.wait_status(session_id, "disconnected")
        assert alive(pid)
        # The stopped session left the sidecar, socket and all.
        assert session_id not in await b.sockets()
        await b.fake.silent(False)
        await b.fake.reject_upgrades(None)
        # The same sidecar serves the next start.
        await b.client.post(f"/api/sessions/{session_id}/start")
        await b.qr(session_id)
        assert b.plugin.sidecar_pids() == [pid]


async def test_a_session_stuck_without_the_app_state_key_is_reported_and_released(
    tmp_path: Path,
) -> None:
    async with bridge(tmp_path, app_state_timeout_ms=1500) as b:
        session_id = await b.create("alpha")
        await b.fake.scan(await b.qr(session_id), phone=PHONE, share_app_state_key=False)
        await b.wait_status(session_id, "ready")
        await b.fake.send_text(PHONE, "held back", sender=CONTACT)

        async def stored() -> bool:
            answer = await b.client.get(f"/api/sessions/{session_id}/messages")
            return [m["body"] for m in answer.json()["messages"]] == ["held back"]

        # Without the release the library would hold the message (and grow) forever.
        await until(stored, within=15, poll=0.1)
        session = await b.session(session_id)
        assert "app-state key" in (session["lastError"] or "")
        assert session["status"] == "ready"


async def test_a_pairing_code_is_requested_through_the_api(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        session_id = await b.create("alpha")
        await b.qr(session_id)
        response = await b.client.post(
            f"/api/sessions/{session_id}/pairing-code", json={"phoneNumber": "15550009999"}
        )
        assert response.status_code in (200, 201), response.text
        code = response.json()["pairingCode"]
        assert len(code.replace("-", "")) == 8


async def test_a_host_killed_with_sigkill_leaves_no_sidecar(tmp_path: Path) -> None:
    require_node_modules()
    async with fake_whatsapp() as fake:
        env = cli_env(
            tmp_path / "data",
            ENGINEHOST_ENGINES__BAILEYS__WEBSOCKET_URL=fake.url,
            ENGINEHOST_DEFAULT_ENGINE="baileys",
        )
        daemon = Daemon(env)
        try:
            await anyio.to_thread.run_sync(daemon.start)
            key = (tmp_path / "data" / "admin-api-key").read_text().strip()
            async with httpx.AsyncClient(
                base_url=daemon.url, headers={"X-API-Key": key}, timeout=10
            ) as client:
                created = await client.post("/api/sessions", json={"name": "alpha", "start": True})
                assert created.status_code in (200, 201), created.text

                async def shows_qr() -> bool:
                    answer = await client.get("/api/sessions/alpha/qr")
                    return answer.status_code == 200 and bool(answer.json().get("qr"))

                await until(shows_qr, within=30, poll=0.1)
            [sidecar] = children(daemon.process.pid)
            assert "sidecar.js" in command_line(sidecar)
            daemon.process.kill()  # SIGKILL, by PID: no cleanup code of the host runs
            await anyio.to_thread.run_sync(daemon.process.wait)
            await until(lambda: not alive(sidecar), within=10)
            await _connections(fake, 0)
        finally:
            daemon.kill()
