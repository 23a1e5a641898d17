"""Waiting in async tests: poll a condition, bounded in time."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio


async def until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, poll: float = 0.02
) -> None:
    """Return once ``condition()`` (which may be a coroutine function) is true;
    TimeoutError after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(poll)
