"""Finding, loading and running plugins, with every failure isolated and recorded.

A *plugin* is what an entry point in the ``enginehost`` group names: a module or object
holding hook implementations. An *engine plugin* is an :class:`EnginePlugin` subclass a
plugin registers through ``register_engines``. The life of each:

``import → register (hooks validated, engines registered) → construct (config blob)
→ enable (services)`` — and at shutdown ``host_stopping → disable``.

A failure at any stage is caught, logged with the entry point, distribution and
version, and recorded on the plugin (or engine) as its status; the host and every other
plugin go on. ``EngineNotReadyError`` from ``enable`` means *retrying*: enable is tried
again with capped backoff and jitter until it works, fails for good, or the host stops.
"""

from __future__ import annotations

import enum
import importlib.metadata
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pluggy
from pydantic import ValidationError

from enginehost.core import hookspecs
from enginehost.core.backoff import Backoff
from enginehost.core.engine import (
    CAPABILITY_METHODS,
    Engine,
    EngineError,
    EngineNotReadyError,
    EnginePlugin,
    SessionInfo,
    utc_now,
)
from enginehost.core.logging import get_logger
from enginehost.core.services import BackgroundTasks, HostServices
from enginehost.core.settings import ENV_PREFIX, Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "EngineRecord",
    "EngineUnavailableError",
    "HookOutcome",
    "PluginError",
    "PluginHost",
    "PluginRecord",
    "PluginStatus",
    "UnknownEngineError",
    "hook_names",
]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
"""The entry-point group plugins are declared in (``[project.entry-points.enginehost]``)."""

SNAPSHOT_VERSION = 1
"""Version of the ``plugins list --json`` / ``GET /api/plugins`` shape. Bumped on a
breaking change only; fields may be added without a bump."""

_ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

log = get_logger("enginehost.plugins")


class PluginStatus(enum.StrEnum):
    """A plugin's (or engine plugin's) status as operators see it."""

    PENDING = "pending"
    """Constructed, enable not run yet (seen only while the host boots)."""
    ENABLED = "enabled"
    FAILED = "failed"
    RETRYING = "retrying"
    DISABLED = "disabled"


# The order in which a plugin's own status and its engines' statuses combine: the worst wins.
_SEVERITY = {
    PluginStatus.ENABLED: 0,
    PluginStatus.PENDING: 1,
    PluginStatus.RETRYING: 1,
    PluginStatus.FAILED: 2,
}


class UnknownEngineError(EngineError):
    """No loaded plugin provides the requested engine name."""


class EngineUnavailableError(EngineError):
    """The engine's plugin is known but could not be constructed, so it can create nothing."""


def hook_names() -> list[str]:
    """The names of every hook specification, sorted."""
    return sorted(
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")
    )


@dataclass(frozen=True, slots=True)
class PluginError:
    """Why a plugin or engine plugin is not enabled: the stage that failed and the message."""

    stage: str
    message: str
    type: str
    at: datetime = field(default_factory=utc_now)

    @classmethod
    def from_exception(cls, stage: str, exc: BaseException) -> PluginError:
        return cls(stage=stage, message=str(exc) or type(exc).__name__, type=type(exc).__name__)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "message": self.message,
            "type": self.type,
            "at": self.at.isoformat(),
        }


@dataclass(slots=True)
class EngineRecord:
    """One engine plugin class registered by a plugin, and how it is doing."""

    name: str
    plugin_name: str
    cls: type[EnginePlugin[Any]]
    status: PluginStatus = PluginStatus.FAILED
    error: PluginError | None = None
    instance: EnginePlugin[Any] | None = None
    retry_attempt: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "status": self.status.value,
            "error": self.error.to_json() if self.error else None,
            "capabilities": sorted(c.value for c in self.cls.capabilities),
            "retryAttempt": self.retry_attempt,
        }


@dataclass(slots=True)
class PluginRecord:
    """One entry point in the ``enginehost`` group: what it is and how it is doing."""

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    selected: bool = True
    loaded: bool = False
    obj: Any = None
    hooks: list[str] = field(default_factory=list)
    engines: list[EngineRecord] = field(default_factory=list)
    own_status: PluginStatus = PluginStatus.ENABLED
    error: PluginError | None = None
    hook_errors: int = 0

    @property
    def kind(self) -> str:
        """``engine`` if it registered engines, ``extension`` if only other hooks,
        ``unknown`` when it never loaded."""
        if not self.loaded:
            return "unknown"
        return "engine" if self.engines else "extension"

    @property
    def status(self) -> PluginStatus:
        if not self.selected:
            return PluginStatus.DISABLED
        statuses = [self.own_status, *(engine.status for engine in self.engines)]
        return max(statuses, key=lambda status: _SEVERITY.get(status, 0))

    @property
    def effective_error(self) -> PluginError | None:
        if self.error is not None:
            return self.error
        for engine in self.engines:
            if engine.error is not None and engine.status is not PluginStatus.ENABLED:
                return engine.error
        return None

    def to_json(self) -> dict[str, Any]:
        error = self.effective_error
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entryPoint": self.entry_point,
            "kind": self.kind,
            "builtin": self.distribution == "enginehost",
            "hooks": list(self.hooks),
            "status": self.status.value,
            "error": error.to_json() if error else None,
            "hookErrors": self.hook_errors,
            "engines": [engine.to_json() for engine in self.engines],
        }

    def log_fields(self) -> dict[str, Any]:
        return {
            "plugin": self.name,
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """What one plugin's implementation of a hook returned, or the error it raised."""

    plugin: str
    result: Any = None
    error: BaseException | None = None


def _entry_point_distribution(
    entry_point: importlib.metadata.EntryPoint,
) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None, None
    return dist.name, dist.version


def _validation_problems(engine_name: str, exc: ValidationError) -> str:
    prefix = f"{ENV_PREFIX}ENGINES__{engine_name.upper()}__"
    lines = [
        prefix + "__".join(str(part).upper() for part in error["loc"]) + f": {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid engine config: " + "; ".join(lines)


class PluginHost:
    """Loads plugins from entry points and runs their lifecycle, isolating every failure.

    ``entry_points`` replaces discovery (tests pass hand-made entry points); by default
    the installed distributions' ``enginehost`` group is used.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self._entry_points = entry_points
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.engines: dict[str, EngineRecord] = {}
        self._checked_engine_classes: set[type[Engine]] = set()
        self._backoff = Backoff(settings.plugin_retry_base, settings.plugin_retry_cap)
        self._background = BackgroundTasks()

    # ------------------------------------------------------------------ discovery + load

    def discover(self) -> list[importlib.metadata.EntryPoint]:
        if self._entry_points is not None:
            return list(self._entry_points)
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

    def load(self) -> None:
        """Import, register and construct every selected plugin. Never raises for a plugin."""
        found: set[str] = set()
        for entry_point in self.discover():
            distribution, version = _entry_point_distribution(entry_point)
            record = PluginRecord(
                name=entry_point.name,
                entry_point=entry_point.value,
                distribution=distribution,
                version=version,
            )
            if entry_point.name in self.records:
                first = self.records[entry_point.name]
                record.name = f"{entry_point.name} ({distribution or entry_point.value})"
                self._fail(
                    record,
                    "import",
                    f"duplicate plugin name {entry_point.name!r}: already provided by "
                    f"{first.distribution or first.entry_point}",
                )
                self.records[record.name] = record
                continue
            self.records[record.name] = record
            found.add(entry_point.name)
            if not self.settings.plugin_selected(entry_point.name):
                record.selected = False
                log.info("plugin.disabled", **record.log_fields())
                continue
            self._load_one(entry_point, record)
        self._warn_unknown_selection(found)

    def _warn_unknown_selection(self, found: set[str]) -> None:
        for setting, names in (
            ("ENGINEHOST_LOAD_PLUGINS", self.settings.load_plugins or []),
            ("ENGINEHOST_DISABLE_PLUGINS", self.settings.disable_plugins),
        ):
            for name in names:
                if name not in found:
                    log.warning(
                        "plugin.selection_unknown",
                        setting=setting,
                        plugin=name,
                        installed=sorted(found),
                    )

    def _load_one(self, entry_point: importlib.metadata.EntryPoint, record: PluginRecord) -> None:
        try:
            obj = entry_point.load()
        except Exception as exc:
            self._fail(record, "import", exc)
            return
        record.obj = obj
        try:
            self.pm.register(obj, name=record.name)
        except Exception as exc:
            self._fail(record, "register", exc)
            return
        record.loaded = True
        unknown = [
            caller.name for caller in self.pm.get_hookcallers(obj) or [] if caller.spec is None
        ]
        if unknown:
            self.pm.unregister(obj)
            self._fail(
                record,
                "register",
                f"implements unknown hook(s): {', '.join(unknown)}; "
                f"known hooks: {', '.join(hook_names())}",
            )
            return
        record.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(obj) or [])
        registered: list[type[EnginePlugin[Any]]] = []
        for impl in self.pm.hook.register_engines.get_hookimpls():
            if impl.plugin is not obj:
                continue
            try:
                result = impl.function(register=registered.append)
                if inspect.isawaitable(result):
                    raise TypeError("register_engines must be a plain function, not async")
            except Exception as exc:
                # Half-registered is worse than absent: none of its hooks will be called.
                self.pm.unregister(obj)
                self._fail(record, "register", exc)
                return
        for cls in registered:
            self._register_engine(record, cls)

    def _register_engine(self, record: PluginRecord, cls: Any) -> None:
        if not (isinstance(cls, type) and issubclass(cls, EnginePlugin)):
            self._fail(record, "register", f"register() takes EnginePlugin subclasses, got {cls!r}")
            return
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _ENGINE_NAME.match(name):
            self._fail(
                record,
                "register",
                f"{cls.__qualname__}.name must match {_ENGINE_NAME.pattern}, got {name!r}",
            )
            return
        if name in self.engines:
            other = self.engines[name].plugin_name
            self._fail(
                record,
                "register",
                f"engine name {name!r} is already registered by plugin {other!r}",
            )
            return
        engine = EngineRecord(name=name, plugin_name=record.name, cls=cls)
        record.engines.append(engine)
        self.engines[name] = engine
        try:
            engine.instance = cls(
                self.settings.engine_config(name), data_dir=self.data_dir / "engines" / name
            )
        except ValidationError as exc:
            self._fail_engine(record, engine, "construct", _validation_problems(name, exc))
        except Exception as exc:
            self._fail_engine(record, engine, "construct", exc)
        else:
            engine.status = PluginStatus.PENDING

    # ------------------------------------------------------------------ failures

    def _fail(self, record: PluginRecord, stage: str, error: BaseException | str) -> None:
        record.own_status = PluginStatus.FAILED
        record.error = self._as_error(stage, error)
        log.error(
            "plugin.failed",
            stage=stage,
            error=record.error.message,
            exc_info=error if isinstance(error, BaseException) else None,
            **record.log_fields(),
        )

    def _fail_engine(
        self,
        record: PluginRecord,
        engine: EngineRecord,
        stage: str,
        error: BaseException | str,
        status: PluginStatus = PluginStatus.FAILED,
    ) -> None:
        engine.status = status
        engine.error = self._as_error(stage, error)
        event = (
            "engine_plugin.retrying" if status is PluginStatus.RETRYING else "engine_plugin.failed"
        )
        log.error(
            event,
            engine=engine.name,
            stage=stage,
            error=engine.error.message,
            retry_attempt=engine.retry_attempt,
            exc_info=error
            if isinstance(error, BaseException) and status is PluginStatus.FAILED
            else None,
            **record.log_fields(),
        )

    @staticmethod
    def _as_error(stage: str, error: BaseException | str) -> PluginError:
        if isinstance(error, BaseException):
            return PluginError.from_exception(stage, error)
        return PluginError(stage=stage, message=error, type="PluginError")

    # ------------------------------------------------------------------ lifecycle

    def services(self) -> HostServices:
        from enginehost import __version__

        return HostServices(
            settings=self.settings,
            data_dir=self.data_dir,
            version=__version__,
            background=self._background,
        )

    @asynccontextmanager
    async def running(
        self, services: HostServices, *, retry: bool = True
    ) -> AsyncIterator[PluginHost]:
        """Enable every constructed engine plugin; on exit run the shutdown sequence.

        With ``retry`` (the daemon), not-ready plugins are retried in the background until
        the block exits; without it (one-shot CLI commands) they stay ``retrying``.
        """
        # Plugins' background work lives in the outer group: it outlasts the shutdown
        # sequence (a plugin's disable may still need it) and is cancelled after it.
        async with anyio.create_task_group() as background:
            services.background.bind(background)
            try:
                async with anyio.create_task_group() as retries:
                    await self._enable_all(services, retries if retry else None)
                    try:
                        yield self
                    finally:
                        retries.cancel_scope.cancel()
                        with anyio.CancelScope(shield=True):
                            with anyio.move_on_after(self.settings.shutdown_timeout) as scope:
                                await self._shutdown(services)
                            if scope.cancelled_caught:
                                log.error(
                                    "plugins.shutdown_timeout",
                                    seconds=self.settings.shutdown_timeout,
                                )
            finally:
                services.background.bind(None)
                background.cancel_scope.cancel()

    async def _enable_all(
        self, services: HostServices, retries: anyio.abc.TaskGroup | None
    ) -> None:
        for engine in list(self.engines.values()):
            if engine.instance is None:
                continue
            enabled = await self._enable_once(services, engine)
            if not enabled and retries is not None and engine.status is PluginStatus.RETRYING:
                retries.start_soon(self._retry_enable, services, engine)

    async def _enable_once(self, services: HostServices, engine: EngineRecord) -> bool:
        assert engine.instance is not None
        record = self.records[engine.plugin_name]
        try:
            with anyio.fail_after(self.settings.plugin_enable_timeout):
                await engine.instance._host_enable(services)
        except TimeoutError:
            self._fail_engine(
                record,
                engine,
                "enable",
                f"enable took longer than {self.settings.plugin_enable_timeout} s",
                status=PluginStatus.RETRYING,
            )
            return False
        except EngineNotReadyError as exc:
            self._fail_engine(record, engine, "enable", exc, status=PluginStatus.RETRYING)
            return False
        except Exception as exc:
            self._fail_engine(record, engine, "enable", exc)
            return False
        engine.status = PluginStatus.ENABLED
        engine.error = None
        log.info("engine_plugin.enabled", engine=engine.name, **record.log_fields())
        return True

    async def _retry_enable(self, services: HostServices, engine: EngineRecord) -> None:
        while engine.status is PluginStatus.RETRYING:
            delay = self._backoff.delay(engine.retry_attempt)
            engine.retry_attempt += 1
            await anyio.sleep(delay)
            await self._enable_once(services, engine)

    async def _shutdown(self, services: HostServices) -> None:
        await self.call_hook("host_stopping", services=services)
        for engine in self.engines.values():
            if engine.instance is None or engine.status is not PluginStatus.ENABLED:
                continue
            try:
                await engine.instance.disable()
            except Exception as exc:
                log.error(
                    "engine_plugin.disable_failed",
                    engine=engine.name,
                    error=str(exc),
                    exc_info=exc,
                    **self.records[engine.plugin_name].log_fields(),
                )

    # ------------------------------------------------------------------ hooks

    async def call_hook(
        self,
        name: str,
        *,
        stop_when: Callable[[HookOutcome], bool] | None = None,
        impl_timeout: float | None = None,
        **kwargs: Any,
    ) -> list[HookOutcome]:
        """Call every implementation of hook ``name``, each with its own error capture.

        Implementations run in pluggy's order; awaitable results are awaited, each for at
        most ``impl_timeout`` seconds when given (an overrun counts as a failure; a deadline
        around the whole call would let one slow plugin starve the others). A raising
        implementation is logged and marks its plugin ``failed`` (stage ``hook:<name>``);
        the others still run. ``stop_when`` ends the fan-out early (a veto).
        """
        caller = getattr(self.pm.hook, name)
        outcomes: list[HookOutcome] = []
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = self.pm.get_name(impl.plugin) or impl.plugin_name
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
                if inspect.isawaitable(result):
                    with anyio.fail_after(impl_timeout):
                        result = await result
                outcome = HookOutcome(plugin=plugin_name, result=result)
            except TimeoutError:
                exc = TimeoutError(f"{name} took longer than {impl_timeout} s")
                outcome = HookOutcome(plugin=plugin_name, error=exc)
                self._record_hook_failure(plugin_name, name, exc)
            except Exception as exc:
                outcome = HookOutcome(plugin=plugin_name, error=exc)
                self._record_hook_failure(plugin_name, name, exc)
            outcomes.append(outcome)
            if stop_when is not None and stop_when(outcome):
                break
        return outcomes

    def _record_hook_failure(self, plugin_name: str, hook: str, exc: BaseException) -> None:
        record = self.records.get(plugin_name)
        if record is not None:
            record.hook_errors += 1
            self._fail(record, f"hook:{hook}", exc)

    async def check_send(
        self,
        *,
        session_id: str,
        session_name: str,
        chat_id: str,
        kind: str,
        text: str | None = None,
        media: Any = None,
    ) -> str | None:
        """Ask ``message_sending`` implementations; return the first veto's reason, or None."""

        def vetoes(outcome: HookOutcome) -> bool:
            return outcome.error is not None or outcome.result is not None

        outcomes = await self.call_hook(
            "message_sending",
            stop_when=vetoes,
            session_id=session_id,
            session_name=session_name,
            chat_id=chat_id,
            kind=kind,
            text=text,
            media=media,
        )
        for outcome in outcomes:
            if outcome.error is not None:
                return f"plugin {outcome.plugin!r} failed while checking the send: {outcome.error}"
            if outcome.result is not None:
                return f"vetoed by plugin {outcome.plugin!r}: {outcome.result}"
        return None

    # ------------------------------------------------------------------ engines

    def engine_plugin(self, engine_name: str) -> EnginePlugin[Any]:
        """The constructed engine plugin for ``engine_name``.

        A plugin whose enable failed (or is still retrying) is returned too, with a
        warning: it creates engines from the operator's construction config.
        """
        engine = self.engines.get(engine_name)
        if engine is None:
            known = ", ".join(sorted(self.engines)) or "none"
            raise UnknownEngineError(f"unknown engine {engine_name!r}; loaded engines: {known}")
        if engine.instance is None:
            reason = engine.error.message if engine.error else "not constructed"
            raise EngineUnavailableError(f"engine {engine_name!r} is unavailable: {reason}")
        if engine.status is not PluginStatus.ENABLED:
            log.warning(
                "engine_plugin.not_enabled",
                engine=engine_name,
                status=engine.status.value,
                error=engine.error.message if engine.error else None,
            )
        return engine.instance

    def create_engine(self, engine_name: str, session: SessionInfo) -> Engine:
        """A new engine object for ``session`` from the named engine plugin.

        Checks, once per engine class, that every declared capability is backed by an
        overridden method, so a plugin cannot claim what it does not implement.
        """
        plugin = self.engine_plugin(engine_name)
        engine = plugin.create_engine(session)
        if not isinstance(engine, Engine):
            raise EngineError(
                f"{type(plugin).__qualname__}.create_engine returned "
                f"{type(engine).__qualname__}, not an Engine"
            )
        self._check_capabilities(plugin, type(engine))
        return engine

    def _check_capabilities(self, plugin: EnginePlugin[Any], engine_class: type[Engine]) -> None:
        if engine_class in self._checked_engine_classes:
            return
        missing = sorted(
            capability.value
            for capability in plugin.capabilities
            if getattr(engine_class, CAPABILITY_METHODS[capability])
            is getattr(Engine, CAPABILITY_METHODS[capability])
        )
        if missing:
            raise EngineError(
                f"{engine_class.__qualname__} declares {', '.join(missing)} "
                "but does not implement it"
            )
        self._checked_engine_classes.add(engine_class)

    # ------------------------------------------------------------------ reporting

    def snapshot(self, hook: str | None = None) -> dict[str, Any]:
        """The documented JSON shape of ``plugins list --json`` and ``GET /api/plugins``."""
        plugins = [
            record.to_json()
            for record in sorted(self.records.values(), key=lambda r: r.name)
            if hook is None or hook in record.hooks
        ]
        return {"version": SNAPSHOT_VERSION, "plugins": plugins}


def status_counts(snapshot: Mapping[str, Any]) -> dict[str, int]:
    """How many plugins are in each status (for summaries and health)."""
    counts: dict[str, int] = {}
    for plugin in snapshot["plugins"]:
        counts[plugin["status"]] = counts.get(plugin["status"], 0) + 1
    return counts
