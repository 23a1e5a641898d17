"""A scripted whatsapp-web.js sidecar: what the real one reports after the QR, which a
stub WhatsApp Web page cannot reach (the library needs the real page's private modules).

Run as ``python scripted_webjs.py``; the host speaks docs/sidecar-protocol.md to it. On
``session.start`` it plays a phone that scans at once: ``qr``, ``authenticated``,
``open`` as ``15550001111@c.us``, then one inbound text from ``15551234567@c.us``. A
``message.sendText`` is answered, echoed as an own message (as ``message_create``
does) and acked sent, delivered, read. If ``SCRIPTED_CLOSE`` is set, the session closes
with that code right after the inbound text, once per start: set it to ``LOGOUT``,
``CONFLICT``, ``NAVIGATION``... A ``session.logout`` deletes the profile as the library
does. Every start is appended to the file named by ``SCRIPTED_LOG`` (if set). Message
ids are short ids, as the real sidecar reports them; with ``SCRIPTED_ECHO_FIRST=1`` a
send's echo comes before its reply (the real library may report ``message_create``
before ``sendMessage`` resolves).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_sent = 0


def send(message: dict[str, object]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def event(session: str, name: str, data: dict[str, object]) -> None:
    send({"type": "event", "event": name, "session": session, "data": data})


def reply(request_id: object, result: dict[str, object]) -> None:
    send({"type": "reply", "id": request_id, "ok": True, "result": result})


def play_phone(session: str, close_code: str | None) -> None:
    event(session, "qr", {"qr": "2@scripted-qr"})
    time.sleep(0.05)
    event(session, "authenticated", {})
    event(session, "open", {"me": {"id": "15550001111@c.us", "name": "Scripted"}})
    event(
        session,
        "message",
        {
            "id": f"3EB0IN{int(time.time() * 1000)}",
            "chat": "15551234567@c.us",
            "sender": "15551234567@c.us",
            "fromMe": False,
            "timestamp": int(time.time()),
            "type": "text",
            "body": "hello from the scripted phone",
            "quotedId": None,
            "hasMedia": False,
            "pushName": "Contact",
        },
    )
    if close_code:
        time.sleep(0.05)
        event(session, "close", {"code": close_code, "reason": f"scripted {close_code}"})


def answer_send(request_id: object, params: dict[str, object]) -> None:
    global _sent
    _sent += 1
    session = str(params["session"])
    message_id = f"3EB0OUT{_sent:04d}"
    now = int(time.time())
    echo_first = os.environ.get("SCRIPTED_ECHO_FIRST") == "1"
    if not echo_first:
        reply(request_id, {"id": message_id, "timestamp": now})
    event(
        session,
        "message",
        {
            "id": message_id,
            "chat": params["chatId"],
            "sender": "15550001111@c.us",
            "fromMe": True,
            "timestamp": now,
            "type": "text",
            "body": params["text"],
            "quotedId": params.get("quotedId"),
            "hasMedia": False,
            "pushName": None,
        },
    )
    if echo_first:
        time.sleep(0.05)  # the echo is surely taken before the send is answered
        reply(request_id, {"id": message_id, "timestamp": now})
    for status in ("sent", "delivered", "read"):
        time.sleep(0.02)
        event(session, "ack", {"id": message_id, "chat": params["chatId"], "status": status})


def main() -> None:
    send(
        {
            "type": "hello",
            "protocol": 1,
            "library": "whatsapp-web.js",
            "libraryVersion": "scripted",
            "node": "none",
            "pid": os.getpid(),
        }
    )
    close_code = os.environ.get("SCRIPTED_CLOSE") or None
    log = os.environ.get("SCRIPTED_LOG")
    data_paths: dict[str, str] = {}
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("type") != "request":
            continue
        method, params, rid = message["method"], message["params"], message["id"]
        if method in ("init", "ping", "session.stop"):
            reply(rid, {})
        elif method == "session.start":
            session = str(params["session"])
            data_paths[session] = str(params["dataPath"])
            profile = Path(params["dataPath"]) / f"session-{session}"
            profile.mkdir(parents=True, exist_ok=True)
            if log:
                with open(log, "a") as journal:
                    journal.write(json.dumps(params) + "\n")
            reply(rid, {})
            threading.Thread(target=play_phone, args=(session, close_code), daemon=True).start()
        elif method == "session.logout":
            session = str(params["session"])
            shutil.rmtree(Path(data_paths[session]) / f"session-{session}", ignore_errors=True)
            reply(rid, {})
        elif method == "message.sendText":
            answer_send(rid, params)
        else:
            send(
                {
                    "type": "reply",
                    "id": rid,
                    "ok": False,
                    "error": {"code": "unknown_method", "message": method},
                }
            )


if __name__ == "__main__":
    main()
