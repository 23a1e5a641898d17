"""The echo engine: a config model, an engine plugin and an engine object.

These are the three pieces every engine provides:

* :class:`EchoConfig`, the operator's config blob as a model. The host builds the blob
  from ``ENGINEHOST_ENGINES__ECHO__<KEY>`` variables and validates it against this
  model before the plugin exists; an unknown key is refused.
* :class:`EchoPlugin`, one per host: declares the engine name and capabilities and
  creates one engine object per session connection.
* :class:`EchoEngine`, one connection of one session. It reports everything through
  events (:meth:`~enginehost.Engine.emit`) and runs background work with
  :meth:`~enginehost.Engine.spawn`, which the host cancels when the engine closes.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

# anyio comes with enginehost: the engine contract is anyio-based (``Engine.start`` takes
# an anyio task group), so an engine may rely on it without declaring it separately.
import anyio

from enginehost import (
    AuthenticatedEvent,
    Capability,
    Engine,
    EngineConfig,
    EngineMessage,
    EnginePlugin,
    EventSink,
    HostServices,
    MessageEvent,
    MessageType,
    OwnMessageEvent,
    ReadyEvent,
    SendResult,
    SessionInfo,
    UnsupportedOperationError,
)

__all__ = ["OWN_ID", "EchoConfig", "EchoEngine", "EchoPlugin"]

OWN_ID = "10000000000@c.us"
"""The account id every echo session reports as its own, in the neutral chat-id dialect."""


class EchoConfig(EngineConfig):
    """The echo engine's config (``ENGINEHOST_ENGINES__ECHO__<KEY>``).

    ``EngineConfig`` makes the model frozen and refuses unknown keys, so a typo in a
    variable name is reported instead of silently ignored.
    """

    reply_prefix: str = "echo: "
    """Prepended to every sent text to make the inbound reply's body."""

    ready_delay_seconds: float = 0
    """How long a started engine waits before it reports authenticated and ready."""


def _new_message_id() -> str:
    """A fresh engine message id; unique per session, which is all the host relies on."""
    return f"ECHO{uuid.uuid4().hex.upper()}"


class EchoEngine(Engine):
    """One loopback connection: ready after a delay, and every sent text comes back.

    The public ``start``/``stop``/``logout`` come from :class:`~enginehost.Engine` and
    enforce the single-use life; this class implements only the underscore methods and
    the send operations its plugin declares.
    """

    def __init__(self, session: SessionInfo, *, engine_name: str, config: EchoConfig) -> None:
        super().__init__(session, engine_name=engine_name)
        self.config = config

    async def _start(self, sink: EventSink) -> None:
        """Begin "connecting" without blocking: the handshake runs in the background."""
        self.spawn(self._connect, name=f"echo-connect-{self.session.id}")

    async def _connect(self) -> None:
        """Wait the configured delay, then report authenticated and ready."""
        await anyio.sleep(self.config.ready_delay_seconds)
        await self.emit(AuthenticatedEvent())
        await self.emit(ReadyEvent(own_id=OWN_ID, push_name="Echo"))

    async def _stop(self) -> None:
        """Nothing to tear down: background tasks are cancelled by the base class."""

    async def _logout(self) -> None:
        """Nothing to wipe: the echo engine keeps no auth files."""

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        """Pretend to send ``text`` to ``chat_id``, and schedule the loopback.

        Returns at once, like a real engine whose server acknowledged the send; the echo
        of the own message and the inbound reply follow as events. Replies (a
        ``quoted_message_id``) need the ``reply`` capability, which echo does not declare.
        """
        self.require_running()
        if quoted_message_id is not None:
            raise UnsupportedOperationError(Capability.REPLY, self.engine_name)
        result = SendResult(message_id=_new_message_id())
        self.spawn(self._loop_back, chat_id, text, result, name="echo-loopback")
        return result

    async def _loop_back(self, chat_id: str, text: str, sent: SendResult) -> None:
        """Report the sent message as this account's own, then the reply as inbound."""
        await self.emit(
            OwnMessageEvent(
                EngineMessage(
                    message_id=sent.message_id,
                    chat_id=chat_id,
                    sender=OWN_ID,
                    from_me=True,
                    type=MessageType.TEXT,
                    body=text,
                    timestamp=sent.timestamp,
                )
            )
        )
        await self.emit(
            MessageEvent(
                EngineMessage(
                    message_id=_new_message_id(),
                    chat_id=chat_id,
                    sender=chat_id,
                    from_me=False,
                    type=MessageType.TEXT,
                    body=self.config.reply_prefix + text,
                )
            )
        )


class EchoPlugin(EnginePlugin[EchoConfig]):
    """The echo engine as the host sees it: name, capabilities, config model, factory.

    The host constructs it with the validated config blob, then calls :meth:`enable`.
    Every capability declared here must be backed by an overridden method on the engine
    class; the host checks the pairing the first time an engine is created.
    """

    name: ClassVar[str] = "echo"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SEND_TEXT})
    config_model: ClassVar[type[EngineConfig]] = EchoConfig

    async def enable(self, services: HostServices) -> None:
        """Check what the model alone cannot; a raise here marks the plugin ``failed``.

        Engines are still created from the operator's config when enable failed, so
        checking here is about reporting a bad value, not about guarding engines.
        """
        if self.config.ready_delay_seconds < 0:
            raise ValueError(
                "ENGINEHOST_ENGINES__ECHO__READY_DELAY_SECONDS must be >= 0, "
                f"got {self.config.ready_delay_seconds}"
            )

    def create_engine(self, session: SessionInfo) -> EchoEngine:
        """A new, unstarted engine object for one connection of ``session``.

        Engines read :attr:`config` (the refined config after a successful enable,
        otherwise the operator's construction config), never a default of their own.
        """
        return EchoEngine(session, engine_name=self.name, config=self.config)
