"""Logging: JSON lines off a terminal, console on one, session context, stdlib routed."""

from __future__ import annotations

import io
import json
import logging

import anyio
import pytest

from enginehost.core.logging import bind_session, configure_logging, get_logger


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream)
    get_logger("enginehost.test").info("thing.happened", count=3)
    [line] = _lines(stream)
    assert line["event"] == "thing.happened"
    assert line["count"] == 3
    assert line["level"] == "info"
    assert line["logger"] == "enginehost.test"
    assert str(line["timestamp"]).endswith("Z")


def test_console_when_a_terminal() -> None:
    stream = FakeTerminal()
    configure_logging("info", "auto", stream)
    get_logger("enginehost.test").info("thing.happened", count=3)
    text = stream.getvalue()
    assert "thing.happened" in text and "count" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    log = get_logger("enginehost.test")
    log.info("hidden")
    logging.getLogger("some.library").info("hidden too")
    log.warning("shown")
    assert [line["event"] for line in _lines(stream)] == ["shown"]


def test_module_level_loggers_follow_later_configuration() -> None:
    log = get_logger("enginehost.early", component="x")  # made before configuration
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log.info("late")
    [line] = _lines(stream)
    assert line["component"] == "x"


@pytest.mark.anyio
async def test_session_context_rides_on_every_line_including_stdlib_and_child_tasks() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = get_logger("enginehost.sessions")

    async def child() -> None:
        log.info("child.work")

    with bind_session("s-123", "sandbox"):
        log.info("session.work")
        logging.getLogger("uvicorn.error").info("stdlib %s", "line")
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
    log.info("outside")
    lines = {str(line["event"]): line for line in _lines(stream)}
    for event in ("session.work", "stdlib line", "child.work"):
        assert lines[event]["session_id"] == "s-123", event
        assert lines[event]["engine"] == "sandbox", event
    assert "session_id" not in lines["outside"]
    assert lines["stdlib line"]["logger"] == "uvicorn.error"


@pytest.mark.parametrize(
    ("log_format", "stream_class"), [("json", io.StringIO), ("console", FakeTerminal)]
)
def test_tracebacks_never_show_local_variables(log_format: str, stream_class: type) -> None:
    stream = stream_class()
    configure_logging("info", log_format, stream)
    # A local of the failing frame, built at run time so the source shown in a
    # traceback cannot contain it: only a rendering of locals could.
    api_key = "-".join(["ehk", "this", "secret", "must", "not", "leak"])
    try:
        raise RuntimeError(f"failed with a key of length {len(api_key)}")
    except RuntimeError as exc:
        get_logger("enginehost.test").error("thing.failed", exc_info=exc)
    text = stream.getvalue()
    assert "failed with a key of length" in text
    assert "this-secret-must-not-leak" not in text
