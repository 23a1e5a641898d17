"""Own-message echoes that arrive while a send of their session is with the engine.

Engines report the host's own sends back as own messages (the "echo"), often before
the send call returns its message id. Stored at once, such an echo is a row of its own
that the send then has to find and merge (an insert, a look-up and a delete per send)
and it would announce ``message.sent`` under the id of a row about to disappear.

So while sends of a session are in progress, its echoes are held here. Each one waits
only for the sends that were in progress when it arrived; when the last of those ends,
it is either *claimed* (one of them got its message id: the send's row is the message,
the echo adds nothing) or *released* to be stored like any own message (typed on the
phone meanwhile, say). A hold is therefore bounded by the send timeout, and the number
held is capped: past the cap echoes are stored at once, as without this gate (the
store merges them then, so nothing is lost either way). Released echoes keep their
arrival order.

Every step is O(1) (amortized): sends are numbered as they begin, an echo remembers the
last number begun when it arrived, and it is free once every send up to that number
has ended. Pure bookkeeping with no I/O: the session manager stores and publishes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from enginehost.core.engine import EngineMessage
from enginehost.core.messages.models import MessageRecord

__all__ = ["EchoGate", "Ended", "HeldEcho", "SendInProgress"]


class SendInProgress:
    """One send between asking the engine and recording its outcome."""

    __slots__ = ("ended", "number", "record", "session_id")

    def __init__(self, session_id: str, number: int) -> None:
        self.session_id = session_id
        self.number = number
        self.ended = False
        self.record: MessageRecord | None = None
        """The send's row once it is marked sent (it then carries the engine's id)."""

    @property
    def message_id(self) -> str | None:
        return self.record.message_id if self.record is not None else None


@dataclass(eq=False, slots=True)
class HeldEcho:
    """An own message held back until the sends begun before it have ended."""

    session_id: str
    session_name: str
    message: EngineMessage
    last_begun: int
    """The number of the last send begun when the echo arrived."""
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class Ended:
    """What the end of a send settled."""

    echo: EngineMessage | None
    """The send's own echo, if it arrived while the send was in progress."""
    released: tuple[HeldEcho, ...]
    """Echoes no send claimed that now wait for nothing: to be stored, in arrival order."""


@dataclass(slots=True)
class _Session:
    """One session's sends in progress and echoes held."""

    begun: int = 0
    sending: deque[SendInProgress] = field(default_factory=deque)
    """In the order they began; ended ones are dropped once at the front."""
    in_progress: int = 0
    held: deque[HeldEcho] = field(default_factory=deque)
    by_message_id: dict[str, list[HeldEcho]] = field(default_factory=dict)

    def oldest_in_progress(self) -> int | None:
        while self.sending and self.sending[0].ended:
            self.sending.popleft()
        return self.sending[0].number if self.sending else None


class EchoGate:
    """Holds echoes per session while its sends are in progress; see the module docs."""

    def __init__(self, max_held: int = 10_000) -> None:
        if max_held < 0:
            raise ValueError("max_held must not be negative")
        self._max_held = max_held
        self._sessions: dict[str, _Session] = {}
        self._count = 0

    @property
    def held(self) -> int:
        """Echoes held now (for tests and metrics)."""
        return self._count

    def begin(self, session_id: str) -> SendInProgress:
        """A send of ``session_id`` is about to ask the engine."""
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = _Session()
        state.begun += 1
        send = SendInProgress(session_id, state.begun)
        state.sending.append(send)
        state.in_progress += 1
        return send

    def hold(self, session_id: str, session_name: str, message: EngineMessage) -> bool:
        """Hold ``message`` (an own message) if sends of its session are in progress;
        False when the caller should store it now."""
        state = self._sessions.get(session_id)
        if state is None or state.in_progress == 0 or self._count >= self._max_held:
            return False
        echo = HeldEcho(session_id, session_name, message, state.begun)
        state.held.append(echo)
        state.by_message_id.setdefault(message.message_id, []).append(echo)
        self._count += 1
        return True

    def end(self, send: SendInProgress) -> Ended:
        """``send`` is over (its ``record`` set if the engine gave an id)."""
        state = self._sessions.get(send.session_id)
        if state is None or send.ended:
            return Ended(None, ())
        send.ended = True
        state.in_progress -= 1
        own: EngineMessage | None = None
        message_id = send.message_id
        if message_id is not None:
            # Echoes that arrived after this send began (a re-fired echo too).
            for echo in state.by_message_id.get(message_id, ()):
                if not echo.claimed and echo.last_begun >= send.number:
                    echo.claimed = True
                    own = own or echo.message
        released: list[HeldEcho] = []
        oldest = state.oldest_in_progress()
        while state.held and (oldest is None or state.held[0].last_begun < oldest):
            echo = state.held.popleft()
            self._count -= 1
            self._forget(state, echo)
            if not echo.claimed:
                released.append(echo)
        if state.in_progress == 0 and not state.held:
            del self._sessions[send.session_id]
        return Ended(own, tuple(released))

    @staticmethod
    def _forget(state: _Session, echo: HeldEcho) -> None:
        same_id = state.by_message_id[echo.message.message_id]
        same_id.remove(echo)  # the oldest first: it is at the front
        if not same_id:
            del state.by_message_id[echo.message.message_id]
