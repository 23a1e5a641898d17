"""The host's Prometheus metrics: what ``GET /metrics`` exposes.

Three kinds of numbers, each from where it is cheapest to know:

* counters fed from the event bus by :meth:`HostMetrics.run` (messages, failed sends,
  reconnects, status changes). They count the events *seen since the daemon started*:
  they begin at zero on every start, which Prometheus' ``rate()`` and ``increase()``
  handle as a counter reset;
* gauges read at scrape time (sessions by status and engine, the webhook outbox), so
  they are never stale and cost nothing between scrapes;
* the process' own basics (CPU, memory, file descriptors) and ``enginehost_info``.

Each :class:`HostMetrics` owns its registry, never prometheus_client's global one:
several hosts can live in one process (the tests build many), and a global registry
would refuse their second set of metrics. No metric has a per-session label: session
names are unbounded, and every label value is a time series for Prometheus to keep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Info, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from enginehost.core.errors import error_summary
from enginehost.core.events import EventBus, HostEvent
from enginehost.core.logging import get_logger
from enginehost.core.sessions.manager import RUNNING, STOPPED
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.sessions.status import SessionStatus

__all__ = [
    "CONTENT_TYPE",
    "COUNTED_EVENTS",
    "DeliveryStatistics",
    "HostMetrics",
    "SessionRows",
]

log = get_logger("enginehost.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text exposition format, which every Prometheus version reads. Spelled out
here: recent prometheus_client releases moved ``CONTENT_TYPE_LATEST`` to version 1.0.0,
and what :func:`generate_latest` writes for our names is the same in both."""

COUNTED_EVENTS = frozenset({"message.received", "message.sent", "message.failed", "session.status"})
"""The bus events the counters read; the subscription asks for these only."""

RECONNECT_REASON_PREFIX = "reconnecting (attempt "
"""How the session manager's reason starts when it transitions a session to reconnect."""

READ_TIMEOUT = 3.0
"""Seconds a scrape waits for one source (the sessions, the webhook outbox): well inside
Prometheus' default 10 s scrape timeout, so a hanging database costs its gauges, not the
whole scrape."""


class DeliveryStatistics(Protocol):
    """What the webhook delivery dispatcher tells the metrics."""

    def delivery_outcomes(self) -> Mapping[str, int]:
        """Deliveries by outcome (``delivered``, ``failed_attempt``, ...), counted since
        the dispatcher started."""
        ...

    async def outbox_depth(self) -> int:
        """Deliveries waiting in the outbox (due now or later)."""
        ...

    async def dead_letter_count(self) -> int:
        """Deliveries that gave up and are kept as dead letters."""
        ...


class SessionRows(Protocol):
    """Where the session gauges come from: the host's
    :class:`~enginehost.core.sessions.store.SessionStore`."""

    async def list(self) -> Sequence[SessionRecord]: ...


class _EventCounts:
    """The bus-fed counters, as plain integers behind a collector.

    Not prometheus_client's ``Counter``: that would add an ``*_created`` series per
    counter and label value to the text format (switching those off is a process-wide
    setting), and all counting happens on the event loop, so there is nothing to lock.
    """

    def __init__(self) -> None:
        self.messages = {"received": 0, "sent": 0}
        self.send_failures = 0
        self.reconnects = 0
        # Every status from the start: a series that appears only once it is non-zero
        # makes increase() miss its first change.
        self.transitions: Counter[str] = Counter({status.value: 0 for status in SessionStatus})

    def count(self, event: HostEvent) -> None:
        if event.type == "message.received":
            self.messages["received"] += 1
        elif event.type == "message.sent":
            self.messages["sent"] += 1
        elif event.type == "message.failed":
            self.send_failures += 1
        elif event.type == "session.status":
            status = event.data.get("status")
            if isinstance(status, str):
                self.transitions[status] += 1
            reason = event.data.get("reason")
            if isinstance(reason, str) and reason.startswith(RECONNECT_REASON_PREFIX):
                self.reconnects += 1

    def describe(self) -> list[Metric]:
        # Lets the registry refuse a clash of names when this collector is registered.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "enginehost_messages",
            "Messages seen since the daemon started, by direction: received from a chat, "
            "or sent by a session (through the API or from the linked phone).",
            labels=["direction"],
        )
        for direction, value in self.messages.items():
            messages.add_metric([direction], value)
        yield messages
        yield CounterMetricFamily(
            "enginehost_message_send_failures",
            "Sends that failed (message.failed events) since the daemon started.",
            value=self.send_failures,
        )
        yield CounterMetricFamily(
            "enginehost_session_reconnects",
            "Reconnect attempts the session manager began since the daemon started.",
            value=self.reconnects,
        )
        transitions = CounterMetricFamily(
            "enginehost_session_transitions",
            "Session status changes since the daemon started, by the status entered.",
            labels=["status"],
        )
        for status, value in sorted(self.transitions.items()):
            transitions.add_metric([status], value)
        yield transitions


class _Scrape:
    """The registry plus the families read for one scrape.

    A collector of its own per scrape, rather than gauges set before rendering: two
    scrapes at once then cannot render each other's numbers.
    """

    def __init__(self, registry: CollectorRegistry, families: Iterable[Metric]) -> None:
        self._registry = registry
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._families


class HostMetrics:
    """The metrics of one host: its registry, its bus-fed counters, its scrape."""

    def __init__(self, version: str, *, process: bool = True) -> None:
        self._registry = CollectorRegistry()
        self._counts = _EventCounts()
        self._registry.register(self._counts)
        info = Info("enginehost", "The running enginehost: its version.", registry=self._registry)
        info.info({"version": version})
        if process:
            # Reads /proc; where there is none it reports nothing rather than failing.
            ProcessCollector(registry=self._registry)

    @property
    def registry(self) -> CollectorRegistry:
        """The metrics kept between scrapes (the scrape-time gauges are not in it)."""
        return self._registry

    def count(self, event: HostEvent) -> None:
        """Count one bus event (events of other types are ignored)."""
        self._counts.count(event)

    async def run(
        self, bus: EventBus, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Count the bus' events until cancelled: a background task of the daemon.

        Only events published while this runs are counted, so the counters start at
        zero with the daemon. Counting is inline, as each event is published (a bus
        listener): it costs a few dictionary updates, less than handing the event to a
        task, and it cannot fall behind. Started with ``await task_group.start(...)``
        it listens when that returns, so nothing published afterwards is missed.
        """
        stop = bus.listen(self._counts.count, types=COUNTED_EVENTS)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            stop()

    async def render(
        self,
        sessions: SessionRows,
        deliveries: DeliveryStatistics | None = None,
        engines: Iterable[str] = (),
    ) -> bytes:
        """The text exposition of a scrape: every metric, the gauges read now.

        ``engines`` are the engines the host can run: each gets its session series
        (zero when it has no sessions), so a sum over them is 0, not absent.
        ``deliveries`` None means no webhook dispatcher: no webhook metrics at all.
        """
        up = GaugeMetricFamily(
            "enginehost_metrics_source_up",
            "1 if this scrape could read the source (sessions, webhooks), 0 if it failed "
            "or timed out; the source's metrics are then missing from the scrape.",
            labels=["source"],
        )
        families: list[Metric] = [up]
        session_families = await _read("sessions", _session_families(sessions, engines))
        up.add_metric(["sessions"], 0.0 if session_families is None else 1.0)
        families += session_families or []
        if deliveries is not None:
            delivery_families = await _read("webhooks", _delivery_families(deliveries))
            up.add_metric(["webhooks"], 0.0 if delivery_families is None else 1.0)
            families += delivery_families or []
        return generate_latest(_Scrape(self._registry, families))


async def _read(source: str, reading: Coroutine[Any, Any, list[Metric]]) -> list[Metric] | None:
    """The families ``reading`` makes, or None when it fails or takes too long (logged:
    a failing source costs its own metrics, never the scrape)."""
    try:
        with anyio.fail_after(READ_TIMEOUT):
            return await reading
    except Exception as exc:
        log.warning("metrics.source_failed", source=source, error=error_summary(exc, 200))
        return None


async def _session_families(sessions: SessionRows, engines: Iterable[str]) -> list[Metric]:
    rows = await sessions.list()
    engine_names = {*engines, *(row.engine for row in rows)}
    by_status = Counter((row.status, row.engine) for row in rows)
    by_desire = Counter((row.desired_state, row.engine) for row in rows)
    for engine in engine_names:
        for known in SessionStatus:
            by_status[(known.value, engine)] += 0
        for desire in (RUNNING, STOPPED):
            by_desire[(desire, engine)] += 0
    status_family = GaugeMetricFamily(
        "enginehost_sessions",
        "Sessions by their current status and engine.",
        labels=["status", "engine"],
    )
    for (status, engine), value in sorted(by_status.items()):
        status_family.add_metric([status, engine], value)
    desire_family = GaugeMetricFamily(
        "enginehost_sessions_desired",
        "Sessions by the state asked of them (running: the host keeps them connected; "
        "stopped: it leaves them off) and engine.",
        labels=["desired_state", "engine"],
    )
    for (desire, engine), value in sorted(by_desire.items()):
        desire_family.add_metric([desire, engine], value)
    return [status_family, desire_family]


async def _delivery_families(deliveries: DeliveryStatistics) -> list[Metric]:
    outcomes = CounterMetricFamily(
        "enginehost_webhook_deliveries",
        "Webhook delivery attempts and their ends by outcome (delivered, failed_attempt, "
        "dead_lettered, dropped, ...), counted since the dispatcher started.",
        labels=["outcome"],
    )
    for outcome, value in sorted(deliveries.delivery_outcomes().items()):
        outcomes.add_metric([outcome], value)
    depth = GaugeMetricFamily(
        "enginehost_webhook_outbox_depth",
        "Webhook deliveries waiting in the outbox, due now or later.",
        value=await deliveries.outbox_depth(),
    )
    dead = GaugeMetricFamily(
        "enginehost_webhook_dead_letters",
        "Webhook deliveries that exhausted their attempts and are kept as dead letters.",
        value=await deliveries.dead_letter_count(),
    )
    return [outcomes, depth, dead]
