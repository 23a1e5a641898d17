"""Structured logging for the whole process, through structlog.

* JSON lines when stderr is not a terminal (services, CI, log shippers); readable,
  coloured console lines when it is. ``ENGINEHOST_LOG_FORMAT`` overrides the choice.
* Context bound with :func:`bind_session` (session id, engine name) rides on every
  line logged inside it, through contextvars, including lines from other tasks it spawns.
* stdlib loggers (uvicorn, SQLAlchemy, Alembic, plugins using ``logging``) go through
  the same renderer, so a log file has one format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import Processor

__all__ = ["bind_session", "configure_logging", "get_logger", "silence_logging"]

# structlog (with the rich tracebacks it pulls in) is imported on first use, not at import
# time: one-shot commands such as `plugins list` that log nothing never pay for it.
_silenced = False

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# stdlib loggers that are chatty at INFO and add nothing the host does not log itself.
_QUIET_LOGGERS = {"uvicorn.access": logging.WARNING, "sqlalchemy.engine": logging.WARNING}


def _discard(*args: Any, **kwargs: Any) -> None:
    return None


class _LazyLogger:
    """A structlog logger created on first use, with the configuration in force then."""

    __slots__ = ("_bound", "_logger", "_name")

    def __init__(self, name: str, bound: dict[str, Any]) -> None:
        self._name = name
        self._bound = bound
        self._logger: Any = None

    def bind(self, **values: Any) -> _LazyLogger:
        return _LazyLogger(self._name, {**self._bound, **values})

    def __getattr__(self, method: str) -> Any:
        if _silenced:
            return _discard
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name, **self._bound)
        return getattr(self._logger, method)


def get_logger(name: str, **bound: Any) -> Any:
    """A structured logger named ``name`` (the ``logger`` key of every line)."""
    return _LazyLogger(name, dict(bound))


def silence_logging() -> None:
    """Drop every line logged through :func:`get_logger` (for quiet one-shot commands)."""
    global _silenced
    _silenced = True


@contextmanager
def bind_session(session_id: str, engine: str | None = None, **extra: Any) -> Iterator[None]:
    """Carry ``session_id`` (and ``engine``) on every log line emitted inside the block."""
    import structlog

    values: dict[str, Any] = {"session_id": session_id, **extra}
    if engine is not None:
        values["engine"] = engine
    with structlog.contextvars.bound_contextvars(**values):
        yield


def _has_rich() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _drop_color_message(_: Any, __: str, event_dict: Any) -> Any:
    # uvicorn passes an ANSI-coloured copy of its message as an extra; the renderer colours.
    event_dict.pop("color_message", None)
    return event_dict


def _wants_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(
    level: str = "info", log_format: str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog and the stdlib root logger. Safe to call more than once."""
    import structlog

    global _silenced
    _silenced = False
    stream = stream if stream is not None else sys.stderr
    numeric_level = _LEVELS[level]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
    ]
    renderer: Processor
    if _wants_json(log_format, stream):
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks without local variables: a frame's locals can hold a request's
        # headers (an API key) or a database URL, and secrets never go into logs.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
            if _has_rich()
            else structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet_level, numeric_level))
    # uvicorn installs its own handlers when given a log config; we give it none, and make
    # sure its loggers propagate to ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
