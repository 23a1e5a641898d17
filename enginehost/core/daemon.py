"""``enginehost serve``: the daemon, as one anyio task group.

Boot order: data directory → both databases opened and migrated (or refused when
behind, with ``ENGINEHOST_DB_AUTO_MIGRATE=false``) → plugins loaded and enabled → HTTP
server listening → ``host_started`` hook → ready.

SIGTERM or SIGINT starts a graceful shutdown bounded by ``ENGINEHOST_SHUTDOWN_TIMEOUT``:
readiness turns 503 at once, the HTTP server stops taking requests, ``host_stopping``
runs, engine plugins are disabled, database connections close. A second signal during
shutdown stops waiting for open HTTP requests. The host owns the signals; uvicorn's own
handlers are switched off so there is exactly one place that decides how the process ends.

Requests are parsed by httptools, a dependency (uvicorn falls back to its pure-Python h11,
measurably more CPU per request, where it cannot be imported). The loop is asyncio's own:
uvloop measured no cheaper for this daemon. The ``http.listening`` log line names both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import importlib.metadata
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
import uvicorn

from enginehost.core.audit.service import AuditLog
from enginehost.core.auth.keys import load_or_create_pepper
from enginehost.core.auth.service import ApiKeyService
from enginehost.core.db import Databases, open_databases, prepare_schemas
from enginehost.core.db.single_writer import exclusive_writer
from enginehost.core.events import EventBus
from enginehost.core.hooks_bridge import forward_events_to_hooks
from enginehost.core.http.app import AppState, create_app
from enginehost.core.logging import get_logger
from enginehost.core.messages.send import SendService
from enginehost.core.messages.store import MessageStore
from enginehost.core.metrics import HostMetrics
from enginehost.core.net.guard import AddressPolicy
from enginehost.core.plugins import PluginHost
from enginehost.core.sessions.manager import SessionManager
from enginehost.core.sessions.store import SessionStore
from enginehost.core.settings import Settings
from enginehost.core.templates.service import TemplateService
from enginehost.core.webhooks.delivery import WebhookClient, default_user_agent
from enginehost.core.webhooks.dispatcher import Dispatcher
from enginehost.core.webhooks.matching import WebhookIndex
from enginehost.core.webhooks.outbox import Outbox
from enginehost.core.webhooks.registry import WebhookRegistry

__all__ = ["DaemonError", "serve"]

log = get_logger("enginehost.daemon")

_SERVER_START_TIMEOUT = 15.0


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to change."""


class _HostOwnedSignalsServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory if needed and return its absolute path."""
    data_dir = path.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaemonError(
            f"cannot create the data directory {data_dir} ({exc.strerror}); "
            "set ENGINEHOST_DATA_DIR or --data-dir to a writable place"
        ) from exc
    return data_dir


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is a clear error, not an exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DaemonError(f"cannot resolve ENGINEHOST_HOST={host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (
            "another process is using it; set ENGINEHOST_PORT or --port"
            if exc.errno == errno.EADDRINUSE
            else exc.strerror
        )
        raise DaemonError(f"cannot listen on {host}:{port}: {hint}") from exc
    sock.set_inheritable(True)
    return sock


async def serve(
    settings: Settings,
    *,
    on_listening: Callable[[str, int], None] | None = None,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> None:
    """Run the daemon until SIGTERM/SIGINT; return normally after a graceful shutdown.

    ``on_listening`` is called with the bound address once requests are served;
    ``entry_points`` replaces plugin discovery (for embedding and tests).
    """
    data_dir = prepare_data_dir(settings.data_dir)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Connecting and migrating block on disk and network: keep them off the loop.
        databases, writer_lock = await anyio.to_thread.run_sync(
            _open_and_prepare, settings, data_dir
        )
        try:
            await _serve_with(settings, data_dir, databases, signals, on_listening, entry_points)
        finally:
            writer_lock.close()
            databases.dispose()
    log.info("daemon.stopped")


def _open_and_prepare(settings: Settings, data_dir: Path) -> tuple[Databases, ExitStack]:
    """The databases, open and migrated, and the data database's writer lock (held
    until the stack is closed: one daemon per data database, see ``single_writer``)."""
    databases = open_databases(settings, data_dir)
    writer_lock = ExitStack()
    try:
        writer_lock.enter_context(exclusive_writer(databases.data))
        prepare_schemas(databases, auto_migrate=settings.db_auto_migrate)
    except BaseException:
        writer_lock.close()
        databases.dispose()
        raise
    for database in databases:
        log.info("db.ready", database=database.role.value, url=database.target.describe())
    return databases, writer_lock


async def _serve_with(
    settings: Settings,
    data_dir: Path,
    databases: Databases,
    signals: AsyncIterator[int],
    on_listening: Callable[[str, int], None] | None,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None,
) -> None:
    from enginehost import __version__

    plugins = PluginHost(settings, data_dir=data_dir, entry_points=entry_points)
    plugins.load()
    state = await build_state(settings, data_dir, databases, plugins)
    services = dataclasses.replace(plugins.services(), messages=state.send.messages)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    server = _HostOwnedSignalsServer(
        uvicorn.Config(
            create_app(state),
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout / 2)),
        )
    )
    started = False
    try:
        async with (
            anyio.create_task_group() as tg,
            plugins.running(services),
            state.manager.running(),
        ):
            # The audit writer prunes at start and daily; cancelled last, it writes what
            # is still buffered before the databases close.
            tg.start_soon(state.audit.run)
            tg.start_soon(forward_events_to_hooks, state.bus, plugins)
            if state.metrics is not None:
                await tg.start(state.metrics.run, state.bus)
            if state.deliveries is not None:
                await tg.start(state.deliveries.run)
            server_done = anyio.Event()
            tg.start_soon(_run_server, server, sock, server_done)
            started = await _wait_until_started(server, server_done)
            if not started:
                tg.cancel_scope.cancel()
            else:
                log.info(
                    "http.listening",
                    host=host,
                    port=port,
                    url=f"http://{host}:{port}/api",
                    loop=_loop_name(),
                    http=_http_parser_name(server),
                )
                if on_listening is not None:
                    on_listening(host, port)
                # Bounded: an extension that hangs here must not keep the host from ready.
                await plugins.call_hook(
                    "host_started",
                    services=services,
                    impl_timeout=settings.plugin_enable_timeout,
                )
                # Sessions meant to run come back in the background (bounded, staggered):
                # the API answers meanwhile, and reports each session's own progress.
                tg.start_soon(_restore_sessions, state.manager)
                state.ready = True
                frozen = _tune_garbage_collector()
                log.info(
                    "daemon.ready",
                    version=__version__,
                    data_dir=str(data_dir),
                    gc_frozen=frozen,
                    gc_threshold=list(gc.get_threshold()),
                )

                async for signum in signals:
                    log.info("daemon.stopping", signal=signal.Signals(signum).name)
                    break
                state.ready = False
                state.shutting_down = True
                tg.start_soon(_force_on_second_signal, signals, server, tg.cancel_scope)
                server.should_exit = True
                with anyio.move_on_after(settings.shutdown_timeout) as scope:
                    await server_done.wait()
                if scope.cancelled_caught:
                    log.error("http.shutdown_timeout", seconds=settings.shutdown_timeout)
                    server.force_exit = True
                tg.cancel_scope.cancel()
        # Message writes of callers cancelled on the way out still run: they finish
        # before the databases close.
        with anyio.move_on_after(settings.shutdown_timeout) as drain:
            await state.send.messages.writes.drain()
        if drain.cancelled_caught:
            log.error("db.writes_not_drained", seconds=settings.shutdown_timeout)
    finally:
        sock.close()
        if state.deliveries is not None:
            with anyio.CancelScope(shield=True):
                await state.deliveries.aclose()
    if not started:
        raise DaemonError(
            f"the HTTP server did not start within {_SERVER_START_TIMEOUT:.0f} s; see the log above"
        )


# Python's default thresholds (700, 10, 10) suit short scripts. A daemon allocates many
# short-lived objects per request, and every full collection walked everything the boot
# left behind (modules, models, compiled statements): measured on the send benchmark,
# p99 latency 125-145 ms -> 37-47 ms and about 10-15% less CPU per send.
GC_THRESHOLD: Final = (50_000, 20, 20)


def _tune_garbage_collector() -> int:
    """Move what the boot allocated out of the collector's way, for good (it lives as
    long as the process), and collect young objects less often; the objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    return gc.get_freeze_count()


async def build_state(
    settings: Settings, data_dir: Path, databases: Databases, plugins: PluginHost
) -> AppState:
    """The host's services for the HTTP app, with the first admin key made if needed."""
    from enginehost import __version__

    secret = settings.api_key_pepper.get_secret_value() if settings.api_key_pepper else None
    keys = ApiKeyService(databases.main, load_or_create_pepper(secret, data_dir))
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    await keys.ensure_admin_key(data_dir, admin)
    # Webhooks: every writer stages deliveries into the outbox inside its own
    # transaction; the dispatcher delivers them (see enginehost.core.webhooks).
    index = WebhookIndex()
    outbox = Outbox(index, max_payload_bytes=settings.webhook_max_payload_bytes)
    bus = EventBus()
    sessions = SessionStore(databases.data, outbox=outbox)
    messages = MessageStore(databases.data, outbox=outbox, bus=bus)
    outbox.name_sessions_with(sessions.cached_name)
    templates = TemplateService(databases.data, render_max_bytes=settings.template_render_max_bytes)
    manager = SessionManager(sessions, plugins, bus, settings, messages, outbox)
    policy = AddressPolicy.from_allow_list(settings.webhook_allowed_hosts)
    client = WebhookClient(
        policy=policy,
        timeout=settings.webhook_timeout,
        max_connections=settings.webhook_concurrency,
        response_max_bytes=settings.webhook_response_max_bytes,
        user_agent=default_user_agent(),
    )
    dispatcher = Dispatcher(databases.data, messages.writes, outbox, client, settings)
    webhooks = WebhookRegistry(databases.data, index, policy=policy)
    # Before anything can stage: outbox ids continue after the stored ones, and the
    # index knows every webhook.
    await dispatcher.prepare()
    await webhooks.load_index()
    return AppState(
        plugins=plugins,
        version=__version__,
        keys=keys,
        sessions=sessions,
        bus=bus,
        manager=manager,
        send=SendService(
            manager,
            plugins,
            messages,
            templates,
            media_max_bytes=settings.media_max_bytes,
            allow_private_networks=settings.media_fetch_private_networks,
        ),
        settings=settings,
        audit=AuditLog(databases.main, retention_days=settings.audit_retention_days),
        databases=databases,
        templates=templates,
        metrics=HostMetrics(version=__version__),
        webhooks=webhooks,
        deliveries=dispatcher,
    )


async def _restore_sessions(manager: SessionManager) -> None:
    try:
        started = await manager.restore()
        log.info("sessions.restored", started=started)
    except Exception as exc:
        log.error("sessions.restore_failed", error=str(exc), exc_info=exc)


async def _run_server(server: uvicorn.Server, sock: socket.socket, done: anyio.Event) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process on some startup failures
        log.error("http.server_exited", code=exc.code)
    finally:
        done.set()


def _loop_name() -> str:
    """``uvloop`` or ``asyncio``: the package of the loop this runs on."""
    return type(asyncio.get_running_loop()).__module__.split(".", 1)[0]


def _http_parser_name(server: uvicorn.Server) -> str:
    """``httptools`` or ``h11``: the HTTP/1.1 implementation uvicorn picked."""
    protocol = getattr(server.config, "http_protocol_class", None)
    module = getattr(protocol, "__module__", "")
    return module.rsplit(".", 1)[-1].removesuffix("_impl") or "unknown"


async def _wait_until_started(server: uvicorn.Server, done: anyio.Event) -> bool:
    """Whether the server started (False: it stopped first, or took too long)."""
    with anyio.move_on_after(_SERVER_START_TIMEOUT):
        # uvicorn exposes only a flag for "started", no event to wait on.
        while not server.started and not done.is_set():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return bool(server.started) and not done.is_set()


async def _force_on_second_signal(
    signals: AsyncIterator[int], server: uvicorn.Server, scope: anyio.CancelScope
) -> None:
    async for signum in signals:
        log.warning("daemon.forced_stop", signal=signal.Signals(signum).name)
        server.force_exit = True
        scope.cancel()
        return
