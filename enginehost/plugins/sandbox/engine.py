"""The sandbox engine object: one simulated WhatsApp connection, entirely in-process.

It behaves like a real engine as the host sees it (QR, link, ready, echoes, acks,
disconnects, auth kept or wiped on disk) and adds *control methods* a test or a
developer calls to play the phone and the other side: :meth:`SandboxEngine.scan`,
:meth:`~SandboxEngine.enter_pairing_code`, :meth:`~SandboxEngine.receive_text`,
:meth:`~SandboxEngine.compose_on_phone` and :meth:`~SandboxEngine.drop`.
"""

from __future__ import annotations

import base64
import enum
import itertools
import json
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from enginehost import (
    AckEvent,
    AckStatus,
    AuthenticatedEvent,
    DisconnectClassification,
    DisconnectedEvent,
    Engine,
    EngineError,
    EngineMessage,
    EngineNotRunningError,
    EngineState,
    ErrorEvent,
    EventSink,
    MediaPayload,
    MessageEvent,
    MessageType,
    OwnMessageEvent,
    PairingCodeEvent,
    QrEvent,
    ReactionEvent,
    ReadyEvent,
    RevokeEvent,
    SendResult,
    SessionInfo,
    utc_now,
)
from enginehost.plugins.sandbox.config import SandboxConfig, SandboxSessionConfig

__all__ = ["SandboxEngine", "check_chat_id"]

_DIRECT_CHAT = re.compile(r"^[0-9]{5,20}@c\.us$")
# Modern group ids are one number; old ones are "<creator phone>-<creation time>".
_GROUP_CHAT = re.compile(r"^[0-9]{5,20}(-[0-9]{5,20})?@g\.us$")
_PHONE_NUMBER = re.compile(r"^[0-9]{8,15}$")
_ALIVE = (EngineState.STARTING, EngineState.RUNNING)

# WhatsApp's pairing-code alphabet (as Baileys uses it): no 0/O or 1/I/L look-alikes.
_PAIRING_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"

_MEDIA_TYPES = frozenset(
    {
        MessageType.IMAGE,
        MessageType.VIDEO,
        MessageType.AUDIO,
        MessageType.DOCUMENT,
        MessageType.STICKER,
    }
)

# Default engine codes mimic Baileys' DisconnectReason values, so host logs read like
# the real thing: connectionClosed, restartRequired, loggedOut, forbidden.
_DROP_DEFAULTS: dict[DisconnectClassification, tuple[int, str]] = {
    DisconnectClassification.TRANSIENT: (428, "connection closed (sandbox drop)"),
    DisconnectClassification.RESTART_NOW: (515, "restart required (sandbox drop)"),
    DisconnectClassification.LOGGED_OUT: (401, "logged out from the phone (sandbox drop)"),
    DisconnectClassification.TERMINAL: (403, "forbidden: account banned (sandbox drop)"),
}


def check_chat_id(chat_id: str, *, direct_only: bool = False) -> str:
    """Return ``chat_id`` if it is in the neutral dialect, else raise :class:`ValueError`."""
    if _DIRECT_CHAT.match(chat_id) or (not direct_only and _GROUP_CHAT.match(chat_id)):
        return chat_id
    expected = "'<digits>@c.us'" if direct_only else "'<digits>@c.us' or '<id>@g.us'"
    hint = ""
    if chat_id.endswith("@s.whatsapp.net"):
        hint = " (that is the Baileys dialect; the host speaks '@c.us')"
    raise ValueError(f"malformed chat id {chat_id!r}: expected {expected}{hint}")


def _b64_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class _Link(enum.Enum):
    """How far the simulated phone link is (orthogonal to the base class's life state)."""

    CONNECTING = "connecting"
    AWAITING_SCAN = "awaiting-scan"
    LINKING = "linking"
    READY = "ready"


class _Recent(list[EngineMessage]):
    """A list of the newest ``limit`` messages: appending past it drops the oldest.

    A list, not a deque, so tests compare it with lists as before.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def append(self, message: EngineMessage) -> None:
        super().append(message)
        if len(self) > self._limit:
            del self[0]


class SandboxEngine(Engine):
    """One sandbox connection of one session. Single-use, like every engine object.

    Besides the contract's operations it exposes what it did, for assertions:
    :attr:`sent` (messages sent through the API, in order), :attr:`received` (inbound
    messages injected with :meth:`receive_text`), :attr:`reactions`, :attr:`deleted`,
    :attr:`qr_payload` (the QR currently shown) and :attr:`pairing_code`.
    """

    def __init__(
        self,
        session: SessionInfo,
        *,
        engine_name: str,
        config: SandboxConfig,
        auth_dir: Path,
        overrides: SandboxSessionConfig,
        live_engines: dict[str, SandboxEngine],
        take_forced_failure: Callable[[], str | None],
    ) -> None:
        super().__init__(session, engine_name=engine_name)
        # The plugin's config as it was when this connection was created; a connection
        # never changes behaviour half-way.
        self.config = config
        self.auth_path = auth_dir / f"{session.id}.json"
        # A key the session set (even to None) wins over the operator's value.
        given = overrides.model_fields_set
        self.auto_scan_seconds = (
            overrides.auto_scan_seconds
            if "auto_scan_seconds" in given
            else config.auto_scan_seconds
        )
        self._fail_start = overrides.fail_start if "fail_start" in given else config.fail_start
        self._live = live_engines
        self._take_forced_failure = take_forced_failure

        # Bounded (remember_messages): a daemon runs for months, sending all along.
        remembered = config.remember_messages
        self.sent = _Recent(remembered)
        self.received = _Recent(remembered)
        self.reactions: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.qr_payload: str | None = None
        self.pairing_code: str | None = None
        self.own_id: str | None = None

        self._link = _Link.CONNECTING
        self._linked = anyio.Event()
        self._messages: OrderedDict[str, EngineMessage] = OrderedDict()
        self._remembered = remembered
        self._pairing_number: str | None = None
        # The keys in a WhatsApp QR belong to the device and stay the same while the
        # server's ref rotates; only the ref part changes between payloads.
        self._device_keys = (_b64_key(), _b64_key(), _b64_key())

    # ------------------------------------------------------------------ status

    @property
    def ready(self) -> bool:
        """Whether the phone is linked and sends go through."""
        return self._link is _Link.READY and self.state in _ALIVE

    @property
    def waiting_for_scan(self) -> bool:
        """Whether a QR is shown (or a pairing code pending) and nothing linked yet."""
        return self._link is _Link.AWAITING_SCAN and self.state in _ALIVE

    # ------------------------------------------------------------------ lifecycle

    async def _start(self, sink: EventSink) -> None:
        forced = self._take_forced_failure()
        if forced is not None:
            raise EngineError(forced)
        if self._fail_start is not None:
            raise EngineError(self._fail_start)
        # Registered before the first event so a sink reacting to the QR can already
        # find this engine through the plugin (plugin.engine_for(...).scan()).
        self._live[self.session.id] = self
        try:
            own_id = await self._read_auth()
            if own_id is not None:
                await self._become_ready(own_id)
                return
            self._link = _Link.AWAITING_SCAN
            await self._emit_qr()
            self.spawn(self._rotate_qr, name=f"sandbox-qr-{self.session.id}")
            if self.auto_scan_seconds is not None:
                self.spawn(
                    self._auto_scan,
                    self.auto_scan_seconds,
                    name=f"sandbox-autoscan-{self.session.id}",
                )
        except BaseException:
            self._forget()
            raise

    async def _stop(self) -> None:
        # Auth stays on disk: the next engine object for this session starts linked.
        self._forget()

    async def _logout(self) -> None:
        # Works without a prior start: wiping auth needs no connection.
        self._forget()
        await self._delete_auth()

    def _forget(self) -> None:
        # Only remove ourselves: the host may already run a newer engine for the session.
        if self._live.get(self.session.id) is self:
            del self._live[self.session.id]

    # ------------------------------------------------------------------ linking

    async def scan(self) -> None:
        """Play the phone scanning the current QR: save auth, then authenticated + ready.

        Raises :class:`EngineNotRunningError` if the engine is not started, and
        :class:`EngineError` if it is not waiting for a scan (already linked).
        """
        self.require_running()
        if self._link is not _Link.AWAITING_SCAN:
            raise EngineError(
                f"sandbox session {self.session.name!r} is not waiting for a scan "
                f"(link state: {self._link.value})"
            )
        self._link = _Link.LINKING
        number = self._pairing_number or self.config.own_number
        own_id = f"{number}@c.us"
        try:
            await self._write_auth(own_id)
        except BaseException:
            self._link = _Link.AWAITING_SCAN
            raise
        # The phone is linked now (auth saved), but a stop during the write wins: the
        # base class's emit does not refuse events after teardown, so check here.
        self.require_running()
        await self._become_ready(own_id)

    async def request_pairing_code(self, phone_number: str) -> str:
        """Return a pairing code (``XXXX-XXXX``) for ``phone_number`` and emit it.

        Linking then happens with :meth:`enter_pairing_code` (or :meth:`scan`), and the
        linked account is ``phone_number``, as when a real phone enters the code.
        """
        self.require_running()
        if not _PHONE_NUMBER.match(phone_number):
            raise ValueError(
                f"phone number must be 8 to 15 digits, country code first, got {phone_number!r}"
            )
        if self._link is not _Link.AWAITING_SCAN:
            raise EngineError(
                f"sandbox session {self.session.name!r} is already linked; "
                "a pairing code is only for linking"
            )
        raw = "".join(secrets.choice(_PAIRING_ALPHABET) for _ in range(8))
        code = f"{raw[:4]}-{raw[4:]}"
        self.pairing_code = code
        self._pairing_number = phone_number
        await self.emit(PairingCodeEvent(code=code))
        return code

    async def enter_pairing_code(self, code: str) -> None:
        """Play the phone entering the pairing code; links like :meth:`scan` if it matches."""
        self.require_running()
        if self.pairing_code is None:
            raise EngineError(
                f"sandbox session {self.session.name!r} has no pairing code; "
                "call request_pairing_code() first"
            )
        if _normalise_code(code) != _normalise_code(self.pairing_code):
            raise EngineError(f"wrong pairing code {code!r} for session {self.session.name!r}")
        await self.scan()

    async def _become_ready(self, own_id: str) -> None:
        self.own_id = own_id
        self._link = _Link.LINKING
        await self.emit(AuthenticatedEvent())
        # Ready before the event goes out: a bot reacting to ReadyEvent may send at once.
        self._link = _Link.READY
        self._linked.set()
        await self.emit(ReadyEvent(own_id=own_id, push_name=self.config.push_name))
        if self.config.chatter_per_second > 0:
            self.spawn(self._chatter, name=f"sandbox-chatter-{self.session.id}")

    async def _chatter(self) -> None:
        """Simulated contacts writing in, at the configured rate, until the engine closes.

        Chatter is not kept in :attr:`received` (it could run for hours); with a journal,
        each id is appended once the host's sink returned, i.e. once the host has it.
        """
        interval = 1.0 / self.config.chatter_per_second
        journal = self.config.chatter_journal
        handle = None
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            handle = journal.open("a", encoding="utf-8")
        try:
            for count in itertools.count():
                contact = f"1555{count % 50:07d}@c.us"
                message = EngineMessage(
                    message_id=self._new_id("3EB0", 8),
                    chat_id=contact,
                    sender=contact,
                    from_me=False,
                    body=f"chatter {count}",
                )
                await self.emit(MessageEvent(message=message))
                if handle is not None:
                    handle.write(f"{self.session.id} {message.message_id}\n")
                    handle.flush()
                await anyio.sleep(interval)
        finally:
            if handle is not None:
                handle.close()

    async def _emit_qr(self) -> None:
        ref = "2@" + base64.b64encode(secrets.token_bytes(36)).decode("ascii")
        self.qr_payload = ",".join((ref, *self._device_keys))
        await self.emit(QrEvent(payload=self.qr_payload))

    async def _rotate_qr(self) -> None:
        while self._link is not _Link.READY:
            with anyio.move_on_after(self.config.qr_rotate_seconds):
                await self._linked.wait()
            if self._link is _Link.AWAITING_SCAN:
                await self._emit_qr()

    async def _auto_scan(self, delay: float) -> None:
        await anyio.sleep(delay)
        if self._link is _Link.AWAITING_SCAN:
            await self.scan()

    # ------------------------------------------------------------------ auth file

    async def _read_auth(self) -> str | None:
        """The saved account id, or None when there is no usable auth (a QR is needed)."""
        try:
            text = await anyio.Path(self.auth_path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EngineError(f"cannot read sandbox auth file {self.auth_path}: {exc}") from exc
        try:
            data: Any = json.loads(text)
            own_id = data["own_id"]
            check_chat_id(own_id, direct_only=True)
        except (ValueError, KeyError, TypeError) as exc:
            # Corrupt credentials are what a real engine treats as "not linked": report
            # it and fall back to a fresh link; the next scan overwrites the file.
            await self.emit(
                ErrorEvent(
                    message=f"ignoring unreadable sandbox auth file {self.auth_path}: {exc}",
                    code="auth_corrupt",
                )
            )
            return None
        return str(own_id)

    async def _write_auth(self, own_id: str) -> None:
        data = {
            "own_id": own_id,
            "push_name": self.config.push_name,
            "linked_at": utc_now().isoformat(),
        }
        try:
            await anyio.to_thread.run_sync(_write_private_json, self.auth_path, data)
        except OSError as exc:
            raise EngineError(f"cannot write sandbox auth file {self.auth_path}: {exc}") from exc

    async def _delete_auth(self) -> None:
        try:
            await anyio.Path(self.auth_path).unlink(missing_ok=True)
        except OSError as exc:
            raise EngineError(f"cannot delete sandbox auth file {self.auth_path}: {exc}") from exc

    # ------------------------------------------------------------------ sends

    async def send_text(
        self, chat_id: str, text: str, *, quoted_message_id: str | None = None
    ) -> SendResult:
        self._require_ready()
        check_chat_id(chat_id)
        if quoted_message_id is not None:
            self._known(chat_id, quoted_message_id, action="quote")
        return await self._send(
            self._outgoing(chat_id, MessageType.TEXT, text, quoted_message_id=quoted_message_id)
        )

    async def send_media(
        self, chat_id: str, media: MediaPayload, *, quoted_message_id: str | None = None
    ) -> SendResult:
        self._require_ready()
        check_chat_id(chat_id)
        if media.type not in _MEDIA_TYPES:
            raise ValueError(
                f"{media.type.value!r} is not a media type; expected one of "
                f"{', '.join(sorted(t.value for t in _MEDIA_TYPES))}"
            )
        if not media.data:
            raise ValueError("media data is empty")
        if quoted_message_id is not None:
            self._known(chat_id, quoted_message_id, action="quote")
        raw = {"mimetype": media.mimetype, "filename": media.filename, "size": len(media.data)}
        return await self._send(
            self._outgoing(
                chat_id,
                media.type,
                media.caption,
                has_media=True,
                quoted_message_id=quoted_message_id,
                raw=raw,
            )
        )

    async def send_location(
        self, chat_id: str, latitude: float, longitude: float, *, description: str | None = None
    ) -> SendResult:
        self._require_ready()
        check_chat_id(chat_id)
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise ValueError(f"no such place: latitude {latitude}, longitude {longitude}")
        body = description or f"{latitude},{longitude}"
        raw = {"latitude": latitude, "longitude": longitude, "description": description}
        return await self._send(self._outgoing(chat_id, MessageType.LOCATION, body, raw=raw))

    async def send_contact(self, chat_id: str, name: str, number: str) -> SendResult:
        self._require_ready()
        check_chat_id(chat_id)
        if not _PHONE_NUMBER.match(number):
            raise ValueError(f"contact number must be 8 to 15 digits, got {number!r}")
        # The body is the vCard, as whatsapp-web.js reports contact messages.
        vcard = (
            f"BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL;waid={number}:+{number}\nEND:VCARD"
        )
        raw = {"name": name, "number": number}
        return await self._send(self._outgoing(chat_id, MessageType.CONTACT, vcard, raw=raw))

    async def forward(self, from_chat_id: str, to_chat_id: str, message_id: str) -> SendResult:
        self._require_ready()
        check_chat_id(from_chat_id)
        check_chat_id(to_chat_id)
        original = self._known(from_chat_id, message_id, action="forward")
        raw = {**original.raw, "forwarded": True, "forwarded_from": message_id}
        return await self._send(
            self._outgoing(
                to_chat_id, original.type, original.body, has_media=original.has_media, raw=raw
            )
        )

    async def react(self, chat_id: str, message_id: str, emoji: str) -> None:
        self._require_ready()
        check_chat_id(chat_id)
        self._known(chat_id, message_id, action="react to")
        if emoji:
            self.reactions[message_id] = emoji
        else:
            self.reactions.pop(message_id, None)
        # Real engines report the account's own reactions back, as the phone's are.
        await self.emit(
            ReactionEvent(
                chat_id=chat_id,
                message_id=message_id,
                emoji=emoji,
                sender=self.own_id,
                from_me=True,
            )
        )

    async def delete_message(self, chat_id: str, message_id: str) -> None:
        self._require_ready()
        check_chat_id(chat_id)
        self._known(chat_id, message_id, action="delete")
        self.deleted.add(message_id)
        await self.emit(
            RevokeEvent(chat_id=chat_id, message_id=message_id, sender=self.own_id, from_me=True)
        )

    def _require_ready(self) -> None:
        self.require_running()
        if self._link is not _Link.READY:
            raise EngineNotRunningError(
                f"sandbox session {self.session.name!r} is not ready yet: it is waiting for "
                "the phone to link (scan() the QR or enter the pairing code)"
            )

    def _known(self, chat_id: str, message_id: str, *, action: str) -> EngineMessage:
        message = self._messages.get(message_id)
        if message is None:
            raise EngineError(
                f"cannot {action} message {message_id!r}: the sandbox session "
                f"{self.session.name!r} never sent or received it"
            )
        if message.chat_id != chat_id:
            raise EngineError(
                f"cannot {action} message {message_id!r}: it is in chat "
                f"{message.chat_id!r}, not {chat_id!r}"
            )
        if message_id in self.deleted:
            raise EngineError(f"cannot {action} message {message_id!r}: it was deleted")
        return message

    def _outgoing(
        self,
        chat_id: str,
        type_: MessageType,
        body: str | None,
        *,
        has_media: bool = False,
        quoted_message_id: str | None = None,
        raw: dict[str, Any] | None = None,
    ) -> EngineMessage:
        assert self.own_id is not None  # set before the link became ready
        return EngineMessage(
            message_id=self._new_id("SB", 10),
            chat_id=chat_id,
            sender=self.own_id,
            from_me=True,
            type=type_,
            body=body,
            has_media=has_media,
            quoted_message_id=quoted_message_id,
            raw=raw or {},
        )

    async def _send(self, message: EngineMessage) -> SendResult:
        self._remember(message)
        self.sent.append(message)
        # Real engines echo API sends as own messages; the host relies on it.
        await self.emit(OwnMessageEvent(message=message))
        self.spawn(
            self._ack, message.message_id, message.chat_id, name=f"sandbox-ack-{message.message_id}"
        )
        return SendResult(message_id=message.message_id, timestamp=message.timestamp)

    async def _ack(self, message_id: str, chat_id: str) -> None:
        for status in (AckStatus.SENT, AckStatus.DELIVERED, AckStatus.READ):
            await anyio.sleep(self.config.ack_delay_seconds)
            await self.emit(AckEvent(message_id=message_id, status=status, chat_id=chat_id))

    def _remember(self, message: EngineMessage) -> None:
        self._messages[message.message_id] = message
        if len(self._messages) > self._remembered:
            self._messages.popitem(last=False)  # the oldest

    def _new_id(self, prefix: str, random_bytes: int) -> str:
        # 80 random bits make a collision practically impossible; the check makes it certain.
        while True:
            message_id = prefix + secrets.token_hex(random_bytes).upper()
            if message_id not in self._messages:
                return message_id

    # ------------------------------------------------------------------ control (the other side)

    async def receive_text(
        self,
        chat_id: str,
        text: str,
        *,
        sender: str | None = None,
        message_id: str | None = None,
    ) -> EngineMessage:
        """Play someone writing to this account: emit an inbound :class:`MessageEvent`.

        ``sender`` defaults to ``chat_id`` (a direct chat); a group message needs one.
        Passing a ``message_id`` that was used before re-fires that message, as real
        engines sometimes do, which is how to test the host's de-duplication.
        """
        self._require_ready()
        check_chat_id(chat_id)
        if sender is None:
            if not _DIRECT_CHAT.match(chat_id):
                raise ValueError(f"a message in group {chat_id!r} needs a sender")
            sender = chat_id
        check_chat_id(sender, direct_only=True)
        message = EngineMessage(
            message_id=message_id or self._new_id("3EB0", 8),
            chat_id=chat_id,
            sender=sender,
            from_me=False,
            body=text,
        )
        self._remember(message)
        self.received.append(message)
        await self.emit(MessageEvent(message=message))
        return message

    async def receive_reaction(
        self, chat_id: str, message_id: str, emoji: str, *, sender: str | None = None
    ) -> None:
        """Play someone reacting to a message of the chat (``""`` takes it back)."""
        self._require_ready()
        check_chat_id(chat_id)
        self._known(chat_id, message_id, action="react to")
        await self.emit(
            ReactionEvent(
                chat_id=chat_id, message_id=message_id, emoji=emoji, sender=sender or chat_id
            )
        )

    async def receive_revoke(
        self, chat_id: str, message_id: str, *, sender: str | None = None
    ) -> None:
        """Play the author of a message deleting it for everyone."""
        self._require_ready()
        check_chat_id(chat_id)
        self._known(chat_id, message_id, action="revoke")
        await self.emit(
            RevokeEvent(chat_id=chat_id, message_id=message_id, sender=sender or chat_id)
        )

    async def compose_on_phone(self, chat_id: str, text: str) -> EngineMessage:
        """Play the owner typing a message on the phone: emit an :class:`OwnMessageEvent`."""
        self._require_ready()
        check_chat_id(chat_id)
        assert self.own_id is not None
        message = EngineMessage(
            message_id=self._new_id("3EB0", 8),
            chat_id=chat_id,
            sender=self.own_id,
            from_me=True,
            body=text,
        )
        self._remember(message)
        await self.emit(OwnMessageEvent(message=message))
        return message

    async def drop(
        self,
        classification: DisconnectClassification | str,
        *,
        engine_code: str | int | None = None,
        reason: str | None = None,
    ) -> None:
        """Simulate the connection ending: emit :class:`DisconnectedEvent`, then finish.

        ``engine_code`` and ``reason`` default per classification (Baileys' 428, 515, 401,
        403). ``logged-out`` also deletes the auth file, as the phone unlinked the device.
        Afterwards the engine is closed: background work stops, and it leaves the
        plugin's ``live_engines``; the host decides whether a new engine reconnects.
        """
        self.require_running()
        kind = DisconnectClassification(classification)
        default_code, default_reason = _DROP_DEFAULTS[kind]
        try:
            # Wiped before the event: a host reconnecting from inside the sink must see
            # no auth, or the new engine would come up linked.
            if kind is DisconnectClassification.LOGGED_OUT:
                await self._delete_auth()
            await self.emit(
                DisconnectedEvent(
                    classification=kind,
                    engine_code=default_code if engine_code is None else engine_code,
                    reason=default_reason if reason is None else reason,
                )
            )
        finally:
            await self.stop()


def _normalise_code(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (auth is a secret)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(data, file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
