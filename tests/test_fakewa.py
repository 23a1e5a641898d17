"""The fake WhatsApp service against real Baileys (tests/fakewa, tests/support/fakewa.py).

Each test drives real Baileys sockets through ``bare_client.js``: no project code runs, so
a failure here is the fixture's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tests.support.fakewa import (
    DEFAULT_CONTACT,
    QR_TAP_JS,
    BareClient,
    FakeWhatsApp,
    FakeWhatsAppError,
    Predicate,
    bare_client,
    fake_whatsapp,
    node_env,
    require_node_modules,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PHONE = "15550001111"
CONTACT_JID = f"{DEFAULT_CONTACT}@s.whatsapp.net"
DELIVERY_ACK = 3
READ = 4


@pytest.fixture(autouse=True)
def _node_modules() -> None:
    require_node_modules()


@asynccontextmanager
async def scanned_client(
    fake: FakeWhatsApp, auth_dir: Path, *, phone: str = PHONE, share_app_state_key: bool = True
) -> AsyncIterator[tuple[BareClient, str]]:
    """One bare socket, paired by a `scan` of the QR it shows, open and settled."""
    async with bare_client(fake.url, auth_dir, options=["--events", "--no-tap"]) as client:
        qr = await client.wait_line("qr")
        jid = await fake.scan(qr["qr"], phone=phone, share_app_state_key=share_app_state_key)
        await client.wait_line("open")
        await fake.wait_for("ready", for_jid(jid))
        yield client, jid


def is_text(text: str) -> Predicate:
    """Matches an upsert line carrying a message with this text."""
    return lambda line: any(m["text"] == text for m in line["messages"])


def for_jid(jid: str) -> Predicate:
    """Matches a server event about this device."""
    return lambda event: event["jid"] == jid


def has_status(message_id: str, status: int) -> Predicate:
    """Matches an update line setting this outbound message's status."""
    update = {"id": message_id, "remoteJid": CONTACT_JID, "status": status}
    return lambda line: update in line["updates"]


async def test_qr_then_scan_pairs_restarts_with_515_and_opens(tmp_path: Path) -> None:
    async with (
        fake_whatsapp() as fake,
        bare_client(fake.url, tmp_path, options=["--events", "--no-tap"]) as client,
    ):
        qr = (await client.wait_line("qr"))["qr"]
        ref, noise_key, identity_key, adv_secret = qr.split(",")
        assert ref and noise_key and identity_key and adv_secret

        with pytest.raises(FakeWhatsAppError, match="unknown or expired QR"):
            await fake.scan(f"2@nope,{noise_key},{identity_key},{adv_secret}", phone=PHONE)

        jid = await fake.scan(qr, phone=PHONE, push_name="Alice Phone")
        assert jid == f"{PHONE}:1@s.whatsapp.net"
        close = await client.wait_line("close")
        assert close["code"] == 515
        opened = await client.wait_line("open")
        assert opened["jid"] == jid
        await fake.wait_for("ready", for_jid(jid))

        creds = await client.ask("creds", "creds", session=0)
        assert creds["me"] == {"id": jid, "name": "Alice Phone"}
        assert creds["myAppStateKeyId"]
        assert (await fake.status())["devices"] == [{"jid": jid, "connected": 1, "phase": "ready"}]

        with pytest.raises(FakeWhatsAppError, match="unknown or expired QR"):
            await fake.scan(qr, phone=PHONE)


async def test_saved_creds_log_in_again_even_on_a_new_server(tmp_path: Path) -> None:
    async with fake_whatsapp(auto_scan=True) as fake:
        async with bare_client(fake.url, tmp_path) as client:
            await client.wait_line("ready", lambda line: line["sessions"] == 1)
            paired = await fake.wait_for("paired")
        await fake.wait_connections(0)

        since = fake.mark()
        async with bare_client(fake.url, tmp_path, options=["--login-only"]) as client:
            await client.wait_line("ready", lambda line: line["sessions"] == 1)
            login = await fake.wait_for("loggedIn", since=since)
            assert login["jid"] == paired["jid"]
            assert not [e for e in fake.lines if e.get("event") == "paired" and e["seq"] > since]

    # A server that never saw the pairing adopts the saved credentials.
    async with (
        fake_whatsapp() as fresh,
        bare_client(fresh.url, tmp_path, options=["--login-only", "--events"]) as client,
    ):
        await client.wait_line("ready", lambda line: line["sessions"] == 1)
        ready = await fresh.wait_for("ready")
        assert ready["jid"] == paired["jid"]
        message_id = await fresh.send_text(paired["jid"].split(":")[0], "after restart")
        upsert = await client.wait_line("upsert", is_text("after restart"))
        assert upsert["messages"][0]["id"] == message_id


async def test_inbound_text_is_a_notify_upsert_not_buffered(tmp_path: Path) -> None:
    async with fake_whatsapp() as fake, scanned_client(fake, tmp_path) as (client, jid):
        for text in ("hello from a contact", "and a second one"):
            message_id = await fake.send_text(PHONE, text, push_name="Bob")
            upsert = await client.wait_line("upsert", is_text(text))
            assert upsert["upsertType"] == "notify"
            [message] = upsert["messages"]
            assert message == {
                "id": message_id,
                "remoteJid": CONTACT_JID,
                "fromMe": False,
                "text": text,
                "protocol": False,
            }
        buffering = await client.ask("buffering", "buffering", session=0)
        assert buffering["buffering"] is False
        receipt = await fake.wait_for("receipt", lambda e: e["id"] == message_id)
        assert receipt["jid"] == jid

        with pytest.raises(FakeWhatsAppError, match="unknown account 15550009999"):
            await fake.send_text("15550009999", "nobody home")

        # Addressed to one device jid instead of the account.
        await fake.send_text(jid, "to the device", sender="15559990000")
        upsert = await client.wait_line("upsert", is_text("to the device"))
        assert upsert["messages"][0]["remoteJid"] == "15559990000@s.whatsapp.net"


async def test_without_the_app_state_key_baileys_keeps_buffering(tmp_path: Path) -> None:
    async with (
        fake_whatsapp() as fake,
        scanned_client(fake, tmp_path, share_app_state_key=False) as (client, _),
    ):
        await fake.send_text(PHONE, "held back")
        await anyio.sleep(1.5)
        assert not client.saw("upsert", is_text("held back"))
        assert (await client.ask("buffering", "buffering", session=0))["buffering"] is True
        assert (await client.ask("creds", "creds", session=0))["myAppStateKeyId"] is None


async def test_outbound_text_is_decrypted_and_receipts_update_its_status(tmp_path: Path) -> None:
    async with fake_whatsapp() as fake, scanned_client(fake, tmp_path) as (client, jid):
        sent = await client.ask("send", "sent", session=0, to=CONTACT_JID, text="hi there")
        event = await fake.wait_for("outbound", lambda e: e["id"] == sent["id"])
        assert event["text"] == "hi there"
        expected = {"id": sent["id"], "from": jid, "to": CONTACT_JID, "text": "hi there"}
        assert await fake.outbound() == [expected]

        with pytest.raises(FakeWhatsAppError, match="no outbound message"):
            await fake.ack("not-an-id", "read")
        for status, code in (("delivered", DELIVERY_ACK), ("read", READ)):
            await fake.ack(sent["id"], status)
            await client.wait_line("update", has_status(sent["id"], code))

        # The session the device opened works both ways.
        await fake.send_text(PHONE, "reply")
        await client.wait_line("upsert", is_text("reply"))
        second = await client.ask("send", "sent", session=0, to=CONTACT_JID, text="again")
        event = await fake.wait_for("outbound", lambda e: e["id"] == second["id"])
        assert event["text"] == "again"


async def test_each_disconnect_code_reaches_baileys(tmp_path: Path) -> None:
    async with fake_whatsapp() as fake, scanned_client(fake, tmp_path) as (client, jid):
        for code, drop in ((503, False), (440, False), (428, False), (403, False), (428, True)):
            since = client.mark()
            assert await fake.disconnect(code, jid, drop=drop) == 1
            close = await client.wait_line("close", since=since)
            assert close["code"] == code, (code, drop)
            await client.command("reconnect", session=0)
            await client.wait_line("open", since=since)

        since = client.mark()
        await fake.disconnect(515)
        assert (await client.wait_line("close", since=since))["code"] == 515
        await client.wait_line("open", since=since)  # the client restarts by itself

        since = client.mark()
        await fake.disconnect(401, jid)
        first = await client.wait_line("close", since=since)
        assert first["code"] == 401
        await client.command("reconnect", session=0)  # the device is gone for good
        assert (await client.wait_line("close", since=first["seq"]))["code"] == 401
        assert (await fake.status())["devices"][0]["phase"] == "removed"


async def test_rejected_upgrade_leaves_baileys_connecting(tmp_path: Path) -> None:
    async with fake_whatsapp() as fake:
        await fake.reject_upgrades(403)
        async with bare_client(fake.url, tmp_path, options=["--events", "--no-tap"]) as client:
            await fake.wait_for("upgradeRejected", lambda e: e["status"] == 403)
            await anyio.sleep(3)
            assert not client.saw("close")
            assert not client.saw("qr")
        await fake.reject_upgrades(None)
        async with bare_client(fake.url, tmp_path, options=["--events", "--no-tap"]) as client:
            await client.wait_line("qr")


async def test_a_silent_server_times_the_client_out(tmp_path: Path) -> None:
    async with fake_whatsapp() as fake:
        await fake.silent(True)
        options = ["--events", "--no-tap", "--connect-timeout-ms", "1500"]
        async with bare_client(fake.url, tmp_path, options=options) as client:
            close = await client.wait_line("close", timeout=10)
            assert close["code"] == 408


async def test_auto_scan_pairs_every_registration_with_its_own_number(tmp_path: Path) -> None:
    async with (
        fake_whatsapp(auto_scan=True) as fake,
        bare_client(fake.url, tmp_path, sessions=3) as client,
    ):
        ready = await client.wait_line("ready", timeout=30)
        assert ready["sessions"] == 3
        await fake.wait_connections(3)
        devices = (await fake.status())["devices"]
        assert len({d["jid"].split(":")[0] for d in devices}) == 3
        for device in devices:
            await fake.wait_for("ready", for_jid(device["jid"]))


# An unmodified Baileys program: it only reconnects after the 515, as any app does.
PLAIN_BAILEYS_APP = """
const { default: makeWASocket, useMultiFileAuthState } = require('baileys')
const pino = require('pino')
const start = async () => {
    const { state, saveCreds } = await useMultiFileAuthState(process.argv[1])
    const sock = makeWASocket({
        waWebSocketUrl: process.env.WS_URL, auth: state, logger: pino({ level: 'silent' }),
    })
    sock.ev.on('creds.update', saveCreds)
    sock.ev.on('connection.update', ({ connection, lastDisconnect }) => {
        if (connection === 'open') {
            process.stdout.write(`\\nOPEN ${sock.user.id}\\n`, () => process.exit(0))
        } else if (connection === 'close') {
            const code = lastDisconnect?.error?.output?.statusCode
            if (code === 515) start()
            else process.stdout.write(`\\nCLOSED ${code}\\n`, () => process.exit(1))
        }
    })
}
start()
"""


async def test_qr_tap_preload_pairs_an_unmodified_program(tmp_path: Path) -> None:
    async with fake_whatsapp(auto_scan=True) as fake:
        env = node_env(FAKEWA_QR_URL=fake.qr_url, WS_URL=fake.url)
        command = ["node", "--require", str(QR_TAP_JS), "-e", PLAIN_BAILEYS_APP, str(tmp_path)]
        with anyio.fail_after(30):
            result = await anyio.run_process(command, env=env, check=False)
        lines = result.stdout.decode().splitlines()
        paired = await fake.wait_for("paired")
        assert f"OPEN {paired['jid']}" in lines, result.stderr.decode()[-2000:]
