"""Group commit for inbound messages: many engines' messages, one transaction.

Each engine's sink hands its message over and waits until it is on disk, so nothing an
engine reported is acknowledged before it is stored; meanwhile every other message that
arrived is written in the same transaction. Under load this turns a transaction per
message into one per batch, without delaying a lone message (a batch is whatever is
waiting when the writer comes round, no timer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from enginehost.core.engine import EngineMessage
from enginehost.core.messages.store import MessageStore

__all__ = ["InboundWriter"]


@dataclass(eq=False)
class _Pending:
    session_id: str
    message: EngineMessage
    done: anyio.Event = field(default_factory=anyio.Event)
    created: bool = False
    error: BaseException | None = None


class InboundWriter:
    """Run :meth:`run` in a task group; call :meth:`write` from engine sinks."""

    def __init__(self, store: MessageStore, *, max_batch: int = 1000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wake = anyio.Event()
        self.batches = 0
        self.written = 0

    async def write(self, session_id: str, message: EngineMessage) -> bool:
        """Store ``message``; True if it was new. Returns once it is committed."""
        pending = _Pending(session_id, message)
        self._queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.created

    async def run(self) -> None:
        """Write batches until cancelled; what is queued at cancellation is still written."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue:
                    await self._write_batch()
        finally:
            with anyio.CancelScope(shield=True):
                while self._queue:
                    await self._write_batch()

    async def _write_batch(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        try:
            inserted = await self._store.store_engine_messages(
                [(p.session_id, p.message) for p in batch]
            )
        except Exception as exc:
            for pending in batch:
                pending.error = exc
                pending.done.set()
            return
        self.batches += 1
        self.written += len(inserted)
        claimed: set[tuple[str, str]] = set()
        for pending in batch:
            key = (pending.session_id, pending.message.message_id)
            # A message repeated within one batch is new once: the later copy is a re-fire.
            pending.created = key in inserted and key not in claimed
            claimed.add(key)
            pending.done.set()
