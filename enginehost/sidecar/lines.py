"""Split a byte stream into lines of bounded length.

A sidecar's stdout carries one JSON object per line. A line longer than the limit is
never held whole: its bytes are skipped up to the next newline and it is reported as
one :class:`OverlongLine`, so a misbehaving sidecar cannot make the host buffer without
bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from anyio.abc import ByteReceiveStream

__all__ = ["OverlongLine", "bounded_lines"]


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """Stands in for a line that exceeded the limit; ``length`` counts the bytes skipped."""

    length: int


async def bounded_lines(
    stream: ByteReceiveStream, max_bytes: int
) -> AsyncIterator[bytes | OverlongLine]:
    """Yield each line of ``stream`` without its newline, or an :class:`OverlongLine`.

    Ends at end of stream; a last line without a newline is yielded too.
    """
    pending = bytearray()
    skipping = 0  # > 0 while discarding the rest of an overlong line
    async for chunk in stream:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                rest = len(chunk) - start
                if skipping:
                    skipping += rest
                elif len(pending) + rest > max_bytes:
                    skipping = len(pending) + rest
                    pending.clear()
                else:
                    pending += chunk[start:]
                break
            piece = chunk[start:newline]
            start = newline + 1
            if skipping:
                yield OverlongLine(skipping + len(piece))
                skipping = 0
            elif len(pending) + len(piece) > max_bytes:
                yield OverlongLine(len(pending) + len(piece))
                pending.clear()
            elif pending:
                pending += piece
                yield bytes(pending)
                pending.clear()
            else:
                yield piece
    if skipping:
        yield OverlongLine(skipping)
    elif pending:
        yield bytes(pending)
