"""The engine contract: what an engine plugin is, what an engine object does, what it reports.

Two kinds of object make up an engine:

* an **engine plugin** (:class:`EnginePlugin`): one per engine name per host. The host
  constructs it with the operator's config blob, then calls :meth:`EnginePlugin.enable`
  with the host's services. It declares its :class:`Capability` set and creates one
  :class:`Engine` per session connection.
* an **engine object** (:class:`Engine`): one connection of one session. The host
  starts it with an event sink, sends through it, and tears it down with
  :meth:`Engine.stop` (auth kept) or :meth:`Engine.logout` (auth wiped). It is
  single-use: after teardown it cannot be started again; a reconnect makes a new one.

Engines report what happens through events (the ``*Event`` classes below) passed to
the sink they were started with. Every event type is a frozen dataclass, so a host or
a test can compare and log them safely.
"""

from __future__ import annotations

import contextlib
import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar, final

import anyio
import anyio.abc
from pydantic import BaseModel, ConfigDict

from enginehost.core.logging import get_logger

if TYPE_CHECKING:
    from enginehost.core.services import HostServices

__all__ = [
    "AckEvent",
    "AckStatus",
    "AuthenticatedEvent",
    "Capability",
    "DisconnectClassification",
    "DisconnectedEvent",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "EngineEvent",
    "EngineMessage",
    "EngineNotReadyError",
    "EngineNotRunningError",
    "EnginePlugin",
    "EngineState",
    "ErrorEvent",
    "EventSink",
    "MediaPayload",
    "MessageEvent",
    "MessageType",
    "OwnMessageEvent",
    "PairingCodeEvent",
    "QrEvent",
    "ReactionEvent",
    "ReadyEvent",
    "RevokeEvent",
    "SendResult",
    "SessionInfo",
    "UnsupportedOperationError",
    "utc_now",
]


_log = get_logger("enginehost.engine")


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (engines report every time this way)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- errors


class EngineError(Exception):
    """Base class of the errors the engine contract defines."""


class EngineNotReadyError(EngineError):
    """Raised by :meth:`EnginePlugin.enable` when the plugin cannot work *yet*.

    The host retries enable with capped exponential backoff and jitter (status
    ``retrying``) instead of marking the plugin ``failed``. Use it for conditions that
    fix themselves or that the operator fixes without restarting the host, such as a
    sidecar dependency that is still being installed.
    """


class UnsupportedOperationError(EngineError):
    """Raised by a send operation the engine does not declare as a capability."""

    def __init__(self, capability: Capability, engine: str) -> None:
        super().__init__(f"engine {engine!r} does not support {capability.value}")
        self.capability = capability
        self.engine = engine


class EngineClosedError(EngineError):
    """Raised when an engine object is used after teardown: engine objects are single-use."""


class EngineNotRunningError(EngineError):
    """Raised when a send is attempted on an engine that is not connected: never started,
    still pairing, or closed. The message says which."""


# --------------------------------------------------------------------------- vocabulary


class Capability(enum.StrEnum):
    """What an engine can do beyond connecting and receiving. Send operations check it."""

    SEND_TEXT = "send_text"
    SEND_MEDIA = "send_media"
    SEND_LOCATION = "send_location"
    SEND_CONTACT = "send_contact"
    REPLY = "reply"
    FORWARD = "forward"
    REACT = "react"
    DELETE = "delete"
    PAIRING_CODE = "pairing_code"


class DisconnectClassification(enum.StrEnum):
    """How the host should react to a disconnect. Engines classify; the host decides timing.

    * ``transient``: the network or the server hiccuped; reconnect with backoff.
    * ``restart-now``: the protocol asks for an immediate reconnect (e.g. after pairing).
    * ``logged-out``: the phone unlinked this device; wipe auth, a new QR is needed.
    * ``terminal``: banned, replaced by another client, or otherwise unrecoverable; no retry.
    """

    TRANSIENT = "transient"
    RESTART_NOW = "restart-now"
    LOGGED_OUT = "logged-out"
    TERMINAL = "terminal"


class AckStatus(enum.StrEnum):
    """Delivery status of a message, in the contract's vocabulary. Acks only move forward."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class MessageType(enum.StrEnum):
    """The kind of a message, engine-neutral."""

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACT = "contact"
    REACTION = "reaction"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class EngineState(enum.StrEnum):
    """Where an engine object is in its single life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class EngineMessage:
    """One message as an engine reports it, in the neutral chat-id dialect (``<phone>@c.us``).

    ``message_id`` is the engine's id for the message; together with the session it is
    unique, which is what the host's message store relies on to drop re-fired events.
    """

    message_id: str
    chat_id: str
    sender: str
    from_me: bool
    type: MessageType = MessageType.TEXT
    body: str | None = None
    timestamp: datetime = field(default_factory=utc_now)
    has_media: bool = False
    quoted_message_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a successful send returns: the engine's message id and the send time (UTC)."""

    message_id: str
    timestamp: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class MediaPayload:
    """Media to send: the bytes already fetched or decoded by the host, never a URL."""

    type: MessageType
    data: bytes
    mimetype: str
    filename: str | None = None
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What an engine object knows about the session it serves.

    ``config`` is the session's own engine config (from the API, without the keys the
    host itself owns, such as ``reconnect``), distinct from the plugin's config blob
    (from the operator). ``proxy`` is the session's proxy (``{"url", "type"}``) if any.
    """

    id: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    proxy: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class QrEvent:
    """A QR payload to show the user; engines emit a new one each time the code rotates."""

    kind: ClassVar[str] = "qr"
    payload: str


@dataclass(frozen=True, slots=True)
class PairingCodeEvent:
    """A pairing code to type on the phone (the alternative to scanning a QR)."""

    kind: ClassVar[str] = "pairing_code"
    code: str


@dataclass(frozen=True, slots=True)
class AuthenticatedEvent:
    """The phone accepted the link (or saved credentials were accepted); not yet ready."""

    kind: ClassVar[str] = "authenticated"


@dataclass(frozen=True, slots=True)
class ReadyEvent:
    """The connection is open and usable: sends may go through."""

    kind: ClassVar[str] = "ready"
    own_id: str
    push_name: str | None = None


@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    """The connection ended. The engine object is finished; the host decides what follows.

    After emitting it an engine reports nothing more; the host tears the object down with
    :meth:`Engine.stop` (or :meth:`Engine.logout` for ``logged-out``), which is where its
    resources are released.

    ``engine_code`` is the engine's own code (a Baileys status code, a whatsapp-web.js
    state name), kept for operators; the host acts on ``classification`` only.
    """

    kind: ClassVar[str] = "disconnected"
    classification: DisconnectClassification
    engine_code: str | int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """An inbound message (sent by someone else)."""

    kind: ClassVar[str] = "message"
    message: EngineMessage


@dataclass(frozen=True, slots=True)
class OwnMessageEvent:
    """A message sent from this account: composed on the phone, or the echo of an API send."""

    kind: ClassVar[str] = "own_message"
    message: EngineMessage


@dataclass(frozen=True, slots=True)
class AckEvent:
    """A delivery status update for a message this account sent."""

    kind: ClassVar[str] = "ack"
    message_id: str
    status: AckStatus
    chat_id: str | None = None


@dataclass(frozen=True, slots=True)
class RevokeEvent:
    """A message was deleted for everyone, by its author or by this account.

    ``message_id`` is the deleted message's id; ``sender`` who deleted it, when known.
    """

    kind: ClassVar[str] = "revoke"
    chat_id: str
    message_id: str
    sender: str | None = None
    from_me: bool = False


@dataclass(frozen=True, slots=True)
class ReactionEvent:
    """Someone (or this account, ``from_me``) reacted to a message; an empty ``emoji``
    means the reaction was taken back."""

    kind: ClassVar[str] = "reaction"
    chat_id: str
    message_id: str
    emoji: str
    sender: str | None = None
    from_me: bool = False


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Something went wrong that is worth surfacing but did not end the connection."""

    kind: ClassVar[str] = "error"
    message: str
    code: str | None = None


EngineEvent: TypeAlias = (
    QrEvent
    | PairingCodeEvent
    | AuthenticatedEvent
    | ReadyEvent
    | DisconnectedEvent
    | MessageEvent
    | OwnMessageEvent
    | AckEvent
    | RevokeEvent
    | ReactionEvent
    | ErrorEvent
)

EventSink: TypeAlias = Callable[[EngineEvent], Awaitable[None]]
"""Where an engine reports events. The host gives each engine object its own sink and
checks, on every call, that the engine is still the session's live one."""


# --------------------------------------------------------------------------- engine object


class Engine(ABC):
    """One connection of one session. Single-use: after teardown it cannot start again.

    Subclasses implement :meth:`_start`, :meth:`_stop` and :meth:`_logout`, and the send
    operations matching their plugin's capabilities. The public :meth:`start`,
    :meth:`stop` and :meth:`logout` are final: they enforce the single-use life
    (``new → starting → running → closed``) so no engine has to get it right itself.
    """

    def __init__(self, session: SessionInfo, *, engine_name: str) -> None:
        self.session = session
        self.engine_name = engine_name
        self._state = EngineState.NEW
        self._sink: EventSink | None = None
        self._closed = anyio.Event()
        self._background: anyio.abc.TaskGroup | None = None
        self._logged_out = False

    @property
    def state(self) -> EngineState:
        return self._state

    @final
    async def start(self, sink: EventSink, task_group: anyio.abc.TaskGroup) -> None:
        """Begin connecting; events go to ``sink``. Returns once connecting has begun.

        ``task_group`` is a host-owned task group that outlives this engine object; the
        engine's background work (see :meth:`spawn`) runs in a child scope of it that is
        cancelled at teardown. Raises :class:`EngineClosedError` on a used engine object.
        """
        if self._state is not EngineState.NEW:
            raise EngineClosedError(
                f"engine object for session {self.session.name!r} is {self._state.value}; "
                "engine objects are single-use, create a new one"
            )
        self._state = EngineState.STARTING
        self._sink = sink
        try:
            await task_group.start(self._background_scope)
            await self._start(sink)
        except BaseException:
            self._state = EngineState.CLOSED
            self._closed.set()
            raise
        # A stop that landed while _start was awaiting wins: stay closed.
        if self._state is EngineState.STARTING:
            self._state = EngineState.RUNNING

    async def _background_scope(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as background:
            self._background = background
            task_status.started()
            await self._closed.wait()
            background.cancel_scope.cancel()

    def spawn(
        self, function: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None
    ) -> None:
        """Run ``function(*args)`` in the background until it returns or the engine closes.

        An exception in it never reaches the host: it is logged and reported to the sink
        as an :class:`ErrorEvent`.
        """
        if self._background is None or self._closed.is_set():
            raise EngineNotRunningError(f"engine for session {self.session.name!r} is not running")
        self._background.start_soon(self._guarded, function, args, name=name)

    async def _guarded(
        self, function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            await function(*args)
        except Exception as exc:
            _log.error(
                "engine.background_failed",
                session_id=self.session.id,
                engine=self.engine_name,
                task=getattr(function, "__name__", "?"),
                error=str(exc),
                exc_info=exc,
            )
            if self._sink is not None and not self._closed.is_set():
                with contextlib.suppress(Exception):
                    await self._sink(ErrorEvent(message=f"background task failed: {exc}"))

    async def emit(self, event: EngineEvent) -> None:
        """Report ``event`` to the sink the engine was started with.

        Not filtered here: the host checks every event against the session's live engine,
        so events from a stopped or replaced engine object change nothing.
        """
        if self._sink is None:
            raise EngineNotRunningError(f"engine for session {self.session.name!r} never started")
        await self._sink(event)

    @final
    async def stop(self) -> None:
        """Disconnect and release resources, keeping auth so the next start skips pairing.

        Idempotent: stopping a closed or never-started engine does nothing more.
        """
        if self._state is EngineState.CLOSED:
            return
        was_started = self._state is not EngineState.NEW
        self._state = EngineState.CLOSED
        try:
            if was_started:
                await self._stop()
        finally:
            self._closed.set()

    @final
    async def logout(self) -> None:
        """Unlink the device from the phone where possible and wipe this session's auth.

        Works on a never-started engine too (wiping saved auth needs no connection) and
        on a stopped one. Closes the engine object.
        """
        if self._logged_out:
            return
        self._logged_out = True
        self._state = EngineState.CLOSED
        try:
            await self._logout()
        finally:
            self._closed.set()

    def require_running(self) -> None:
        """Raise :class:`EngineNotRunningError` unless the engine is started and not closed."""
        if self._state not in (EngineState.STARTING, EngineState.RUNNING):
            raise EngineNotRunningError(
                f"engine for session {self.session.name!r} is {self._state.value}"
            )

    @abstractmethod
    async def _start(self, sink: EventSink) -> None:
        """Begin connecting. Must not block until ready: report progress through ``sink``.

        If it raises, :meth:`_stop` is not called: undo your own side effects first.
        """

    @abstractmethod
    async def _stop(self) -> None:
        """Tear down the connection, keeping auth. Called at most once."""

    @abstractmethod
    async def _logout(self) -> None:
        """Unlink and wipe auth. Called at most once, possibly without a prior start."""

    # Send operations. Each one an engine supports must be overridden *and* declared in
    # its plugin's capabilities; the host checks the pairing at registration.

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        """Send a text (a reply when ``quoted_message_id`` is given; needs ``reply``)."""
        raise UnsupportedOperationError(Capability.SEND_TEXT, self.engine_name)

    async def send_media(
        self, chat_id: str, media: MediaPayload, *, quoted_message_id: str | None = None
    ) -> SendResult:
        """Send an image, video, audio, document or sticker."""
        raise UnsupportedOperationError(Capability.SEND_MEDIA, self.engine_name)

    async def send_location(
        self, chat_id: str, latitude: float, longitude: float, *, description: str | None = None
    ) -> SendResult:
        """Send a location pin."""
        raise UnsupportedOperationError(Capability.SEND_LOCATION, self.engine_name)

    async def send_contact(self, chat_id: str, name: str, number: str) -> SendResult:
        """Send a contact card."""
        raise UnsupportedOperationError(Capability.SEND_CONTACT, self.engine_name)

    async def forward(self, from_chat_id: str, to_chat_id: str, message_id: str) -> SendResult:
        """Forward an existing message to another chat."""
        raise UnsupportedOperationError(Capability.FORWARD, self.engine_name)

    async def react(self, chat_id: str, message_id: str, emoji: str) -> None:
        """React to a message; an empty ``emoji`` removes the reaction."""
        raise UnsupportedOperationError(Capability.REACT, self.engine_name)

    async def delete_message(self, chat_id: str, message_id: str) -> None:
        """Delete (revoke) a message this account sent."""
        raise UnsupportedOperationError(Capability.DELETE, self.engine_name)

    async def request_pairing_code(self, phone_number: str) -> str:
        """Ask for a pairing code for ``phone_number`` (digits, country code first)."""
        raise UnsupportedOperationError(Capability.PAIRING_CODE, self.engine_name)


# Which Engine method implements which capability (reply rides on send_text).
CAPABILITY_METHODS: Mapping[Capability, str] = {
    Capability.SEND_TEXT: "send_text",
    Capability.SEND_MEDIA: "send_media",
    Capability.SEND_LOCATION: "send_location",
    Capability.SEND_CONTACT: "send_contact",
    Capability.REPLY: "send_text",
    Capability.FORWARD: "forward",
    Capability.REACT: "react",
    Capability.DELETE: "delete_message",
    Capability.PAIRING_CODE: "request_pairing_code",
}


# --------------------------------------------------------------------------- engine plugin


class EngineConfig(BaseModel):
    """Base of an engine plugin's config model. Unknown keys are refused so typos surface."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=EngineConfig)


class EnginePlugin(ABC, Generic[ConfigT]):
    """One engine, as the host sees it: constructed with its config blob, then enabled.

    Subclasses set :attr:`name`, :attr:`capabilities` and :attr:`config_model`, and
    implement :meth:`create_engine`; :meth:`enable` and :meth:`disable` are optional.

    **Config.** The constructor validates the operator's blob against
    :attr:`config_model` and keeps it as :attr:`construction_config`. During
    :meth:`enable` a plugin may call :meth:`refine_config` (to resolve defaults, make
    paths absolute, record probed versions); the refinement takes effect only if enable
    returns normally. :attr:`config` is what engines must read: the refined config
    after a successful enable, otherwise the construction config — so a plugin whose
    enable failed still honours the operator's paths, never silently defaults.
    """

    name: ClassVar[str]
    """The engine name sessions select (``engine: "sandbox"``). Unique per host."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SEND_TEXT})
    """What this engine's objects can do. Each must be backed by an overridden method."""

    config_model: ClassVar[type[EngineConfig]] = EngineConfig
    """The pydantic model the config blob is validated against."""

    def __init__(self, config: Mapping[str, Any], *, data_dir: Path) -> None:
        """Validate and keep the operator's config blob.

        ``data_dir`` is a directory reserved for this engine (``<data dir>/engines/<name>``);
        it is not created here. Use it for defaults of paths the operator did not set.
        """
        self.data_dir = data_dir
        self.construction_config: ConfigT = self.config_model.model_validate(dict(config))  # type: ignore[assignment]
        self._refined: ConfigT | None = None
        self._pending: ConfigT | None = None

    @property
    def config(self) -> ConfigT:
        """The config engines must use (see the class docstring)."""
        return self._refined if self._refined is not None else self.construction_config

    def refine_config(self, **changes: Any) -> ConfigT:
        """Propose config changes during :meth:`enable`; they apply when enable succeeds."""
        base = self._pending if self._pending is not None else self.construction_config
        # Validated like the blob itself, so a refinement cannot smuggle in a bad value.
        refined: ConfigT = self.config_model.model_validate(  # type: ignore[assignment]
            {**base.model_dump(), **changes}
        )
        self._pending = refined
        return refined

    async def enable(self, services: HostServices) -> None:
        """Prepare the engine (probe dependencies, create directories).

        Raise :class:`EngineNotReadyError` for a condition worth retrying, anything else
        for a permanent failure. Either way the host keeps the plugin and lists its status.
        """

    async def disable(self) -> None:
        """Release what :meth:`enable` acquired. Called once at host shutdown."""

    @abstractmethod
    def create_engine(self, session: SessionInfo) -> Engine:
        """Create a new, unstarted engine object for one connection of ``session``."""

    # Called by the host only; plugins do not call these.

    @final
    async def _host_enable(self, services: HostServices) -> None:
        self._pending = None
        try:
            await self.enable(services)
        except BaseException:
            self._pending = None
            raise
        if self._pending is not None:
            self._refined, self._pending = self._pending, None
