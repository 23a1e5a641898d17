"""Work to do once a transaction has committed, and only then.

A write that causes something to happen elsewhere (a webhook delivery to make, say)
must hand it over only after its transaction committed: handed over earlier, a rolled
back write would still have its effect; handed over by the caller after the write
returned, a caller that went away meanwhile would drop it. So the write registers a
callback on its connection or session, and :class:`~enginehost.core.db.Database` runs
the callbacks of a transaction on the event loop right after the commit, in the order
they were registered, or forgets them when the transaction did not commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enginehost.core.logging import get_logger

__all__ = ["AfterCommit", "after_commit", "collecting", "run_callbacks"]

log = get_logger("enginehost.db")

AfterCommit = Callable[[], None]

_KEY = "enginehost.after_commit"


def after_commit(target: Any, callback: AfterCommit) -> None:
    """Run ``callback`` after the transaction of ``target`` (a SQLAlchemy connection or
    ORM session) commits.

    Outside of a transaction run by :class:`~enginehost.core.db.Database`'s async
    methods (a command-line tool writing synchronously, say) there is no event loop to
    run it on and nothing is done: what the write stored is found by whoever reads it
    next (the webhook dispatcher reads its whole outbox when it starts).
    """
    callbacks: list[AfterCommit] | None = target.info.get(_KEY)
    if callbacks is not None:
        callbacks.append(callback)


class collecting:
    """Collect the callbacks registered on ``target`` while the block runs."""

    def __init__(self, target: Any, into: list[AfterCommit]) -> None:
        self._target = target
        self._into = into

    def __enter__(self) -> None:
        # A pooled connection's info outlives the checkout: start from a clean slate.
        self._target.info[_KEY] = self._into

    def __exit__(self, *exc: object) -> None:
        self._target.info.pop(_KEY, None)


def run_callbacks(callbacks: list[AfterCommit]) -> None:
    """Run committed callbacks in order; one that fails is logged, the rest still run."""
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:  # a bug in one consumer must not hide the others' work
            log.error("db.after_commit_failed", error=str(exc), exc_info=exc)
