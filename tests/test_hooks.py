"""One test per hook (named ``test_hook_<name>``), plus the meta-tests that demand them.

The meta-tests fail when a hook specification has no ``test_hook_<name>`` test here or
no section with its exact signature and an example in docs/plugins.md.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from enginehost import EngineMessage, SessionInfo
from enginehost.core import hookspecs
from enginehost.core.daemon import serve
from enginehost.core.plugins import PluginStatus, hook_names
from enginehost.core.settings import load_settings
from tests.conftest import make_host, support
from tests.support import plugins as test_plugins

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs" / "plugins.md"


@pytest.fixture(autouse=True)
def fresh_recorders() -> Iterator[None]:
    for recorder in (
        test_plugins.recorder,
        test_plugins.failing_recorder,
        test_plugins.vetoing_recorder,
    ):
        recorder.calls.clear()
    yield


def _hook_signature(name: str) -> str:
    """``name(param: type, ...) -> type`` as written in hookspecs.py (annotations unquoted)."""
    signature = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({params}) -> {signature.return_annotation}"


# ----------------------------------------------------------------------------- meta


def test_every_hook_has_a_test() -> None:
    tested = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.name.startswith("test_hook_"):
                tested.add(node.name.removeprefix("test_hook_"))
    missing = [name for name in hook_names() if name not in tested]
    assert missing == [], f"hooks without a test_hook_<name> test: {missing}"


def test_every_hook_is_documented_with_signature_and_example() -> None:
    text = DOCS.read_text()
    sections = dict(re.findall(r"^### `(\w+)`\n(.*?)(?=^### |^## |\Z)", text, re.S | re.M))
    problems = []
    for name in hook_names():
        section = sections.get(name)
        if section is None:
            problems.append(f"{name}: no '### `{name}`' section")
            continue
        if _hook_signature(name) not in section:
            problems.append(f"{name}: signature {_hook_signature(name)!r} not in its section")
        if "@hookimpl" not in section:
            problems.append(f"{name}: no example (a code block using @hookimpl)")
    undocumented_extra = sorted(set(sections) - set(hook_names()))
    assert problems == [] and undocumented_extra == [], (problems, undocumented_extra)


def test_hook_names_lists_exactly_the_specs() -> None:
    assert hook_names() == [
        "host_started",
        "host_stopping",
        "message_received",
        "message_sending",
        "register_engines",
        "session_status_changed",
    ]


# ----------------------------------------------------------------------------- per hook


@pytest.mark.anyio
async def test_hook_register_engines(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("paths"))
    assert host.records["paths"].hooks == ["register_engines"]
    assert host.engines["paths"].cls is test_plugins.PathsPlugin
    assert isinstance(host.engines["paths"].instance, test_plugins.PathsPlugin)


@pytest.mark.anyio
async def test_hook_host_started(tmp_path: Path) -> None:
    await _run_daemon_briefly(tmp_path)
    started = [kwargs for hook, kwargs in test_plugins.recorder.calls if hook == "host_started"]
    assert len(started) == 1
    services = started[0]["services"]
    assert services.data_dir == (tmp_path / "data").resolve()
    # A raising implementation marks its plugin failed and does not stop the daemon.
    failing = [h for h, _ in test_plugins.failing_recorder.calls]
    assert failing[0] == "host_started"


@pytest.mark.anyio
async def test_hook_host_stopping(tmp_path: Path) -> None:
    await _run_daemon_briefly(tmp_path)
    hooks = [hook for hook, _ in test_plugins.recorder.calls]
    assert hooks == ["host_started", "host_stopping"]
    assert "host_stopping" in [h for h, _ in test_plugins.failing_recorder.calls]


async def _run_daemon_briefly(tmp_path: Path) -> None:
    """Run the real daemon in-process with the recorders loaded, then SIGTERM it."""
    settings = load_settings(port=0, data_dir=tmp_path / "data")

    def stop_soon(host: str, port: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(15):
        await serve(
            settings,
            on_listening=stop_soon,
            entry_points=[support("recorder"), support("failing_recorder")],
        )


@pytest.mark.anyio
async def test_hook_session_status_changed(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("recorder"), support("failing_recorder"))
    outcomes = await host.call_hook(
        "session_status_changed",
        session_id="s1",
        session_name="one",
        engine="sandbox",
        old_status="initializing",
        new_status="ready",
        reason=None,
    )
    assert [o.error is None for o in outcomes].count(True) == 1
    assert test_plugins.recorder.calls == [
        (
            "session_status_changed",
            {"session_id": "s1", "new_status": "ready", "old_status": "initializing"},
        ),
    ]
    # The failing implementation was isolated and its plugin marked failed with the stage.
    record = host.records["failing_recorder"]
    assert record.status is PluginStatus.FAILED
    assert record.error is not None and record.error.stage == "hook:session_status_changed"
    assert record.hook_errors == 1


@pytest.mark.anyio
async def test_hook_message_received(tmp_path: Path) -> None:
    host = make_host(tmp_path, support("recorder"))
    message = EngineMessage(
        message_id="ABC", chat_id="1555@c.us", sender="1555@c.us", from_me=False, body="hi"
    )
    await host.call_hook("message_received", session_id="s1", session_name="one", message=message)
    assert test_plugins.recorder.calls == [
        ("message_received", {"session_id": "s1", "message": message}),
    ]


@pytest.mark.anyio
async def test_hook_message_sending(tmp_path: Path) -> None:
    allowing = make_host(tmp_path, support("recorder"))
    allowed = await allowing.check_send(
        session_id="s1", session_name="one", chat_id="1555@c.us", kind="send_text", text="hi"
    )
    assert allowed is None
    assert test_plugins.recorder.calls == [
        ("message_sending", {"chat_id": "1555@c.us", "text": "hi"})
    ]

    vetoing = make_host(tmp_path, support("recorder"), support("vetoing_recorder"))
    reason = await vetoing.check_send(
        session_id="s1", session_name="one", chat_id="1555@c.us", kind="send_text", text="hi"
    )
    assert reason == "vetoed by plugin 'vetoing_recorder': no sends to this chat"

    # A gatekeeper that raises vetoes too (fail closed) and is marked failed.
    failing = make_host(tmp_path, support("failing_recorder"))
    reason = await failing.check_send(
        session_id="s1", session_name="one", chat_id="1555@c.us", kind="send_text", text="hi"
    )
    assert reason is not None and "failed while checking the send" in reason
    assert failing.records["failing_recorder"].status is PluginStatus.FAILED


@pytest.mark.anyio
async def test_first_veto_stops_the_fan_out(tmp_path: Path) -> None:
    # pluggy calls the last registered first: vetoing_recorder runs before recorder.
    host = make_host(tmp_path, support("recorder"), support("vetoing_recorder"))
    await host.check_send(session_id="s", session_name="s", chat_id="1@c.us", kind="send_text")
    assert test_plugins.vetoing_recorder.calls != []
    assert test_plugins.recorder.calls == []


def test_hookimpl_is_exported_for_plugin_authors() -> None:
    import enginehost

    assert enginehost.hookimpl is hookspecs.hookimpl
    assert SessionInfo(id="a", name="b").config == {}


@pytest.mark.anyio
async def test_a_hanging_async_hook_is_bounded_and_marked_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang(services: object) -> None:
        await anyio.sleep(60)

    host = make_host(tmp_path, support("recorder"))
    [impl] = host.pm.hook.host_started.get_hookimpls()
    monkeypatch.setattr(impl, "function", hang)
    with anyio.fail_after(5):
        [outcome] = await host.call_hook("host_started", services=None, impl_timeout=0.1)
    assert isinstance(outcome.error, TimeoutError)
    error = host.records["recorder"].error
    assert error is not None
    assert error.stage == "hook:host_started"
    assert "took longer than 0.1 s" in error.message
