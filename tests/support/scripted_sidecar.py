"""A scripted sidecar: speaks docs/sidecar-protocol.md, behaves as its arguments say.

Run as ``python scripted_sidecar.py [BEHAVIOUR ...]``. It answers ``init``, ``ping``,
``session.start`` (then emits ``qr`` for the session), ``session.stop``, ``echo``
(replies with its params) and ``ask`` (asks the host ``store.getMessage`` and replies
with the answer). Behaviours:

* ``protocol=N``: say protocol N in the hello;
* ``no-hello``: never say hello;
* ``noise``: write a non-JSON line and an overlong line on stdout before the hello;
* ``hang-pings``: stop answering pings after the first;
* ``exit-after-init``: exit (code 3) right after answering init;
* ``stderr``: write a pino-style JSON log line and a plain line on stderr at start;
* ``flood=N``: right after init, emit N events for session ``f`` at once;
* ``child``: right after init, start ``sleep 600`` in a process group of its own and
  report it with a ``process`` event, as a bridge reports its browser.

It exits on end of stdin, as real sidecars do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

ARGS = set(sys.argv[1:])
PROTOCOL = next((int(a.split("=", 1)[1]) for a in ARGS if a.startswith("protocol=")), 1)
FLOOD = next((int(a.split("=", 1)[1]) for a in ARGS if a.startswith("flood=")), 0)
_lock = threading.Lock()
_waiting: dict[str, threading.Event] = {}
_answers: dict[str, object] = {}


def send(message: dict[str, object]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def reply(request_id: object, result: object) -> None:
    send({"type": "reply", "id": request_id, "ok": True, "result": result})


def ask_host(session: object) -> None:
    request_id = "s1"
    done = threading.Event()
    _waiting[request_id] = done
    send(
        {
            "type": "request",
            "id": request_id,
            "method": "store.getMessage",
            "params": {"session": session, "jid": "1@s.whatsapp.net", "id": "M1", "fromMe": True},
        }
    )
    done.wait(5)


def main() -> None:
    if "stderr" in ARGS:
        sys.stderr.write(json.dumps({"level": 40, "msg": "scripted warning", "session": "s-1"}))
        sys.stderr.write("\nplain stderr text\n")
        sys.stderr.flush()
    if "noise" in ARGS:
        sys.stdout.write("this is not json\n" + "x" * 5000 + "\n")
        sys.stdout.flush()
    if "no-hello" not in ARGS:
        send(
            {
                "type": "hello",
                "protocol": PROTOCOL,
                "library": "scripted",
                "libraryVersion": "0.0.1",
                "node": "none",
                "pid": os.getpid(),
            }
        )
    pings = 0
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("type") == "reply":
            _answers[message["id"]] = message
            event = _waiting.pop(message["id"], None)
            if event is not None:
                event.set()
            continue
        method, params, rid = message["method"], message["params"], message["id"]
        if method == "init":
            reply(rid, {})
            if "exit-after-init" in ARGS:
                sys.exit(3)
            if "child" in ARGS:
                child = subprocess.Popen(["sleep", "600"], start_new_session=True)
                send(
                    {
                        "type": "event",
                        "event": "process",
                        "session": "c",
                        "data": {"pid": child.pid, "state": "started"},
                    }
                )
            for number in range(FLOOD):
                send({"type": "event", "event": "tick", "session": "f", "data": {"n": number}})
        elif method == "ping":
            pings += 1
            if "hang-pings" in ARGS and pings > 1:
                continue
            reply(rid, {"sessions": 0, "rss": 1, "heapUsed": 1})
        elif method == "session.start":
            reply(rid, {})
            send(
                {"type": "event", "event": "qr", "session": params["session"], "data": {"qr": "Q"}}
            )
        elif method == "session.stop":
            reply(rid, {})
        elif method == "echo":
            reply(rid, params)
        elif method == "ask":

            def work(rid: object = rid, session: object = params.get("session")) -> None:
                ask_host(session)
                reply(rid, {"answer": _answers.get("s1")})

            threading.Thread(target=work, daemon=True).start()
        else:
            send(
                {
                    "type": "reply",
                    "id": rid,
                    "ok": False,
                    "error": {"code": "unknown_method", "message": f"no method {method}"},
                }
            )


if __name__ == "__main__":
    main()
