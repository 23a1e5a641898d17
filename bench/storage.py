"""Storage ceiling for message-like rows, on SQLite and PostgreSQL, through ``Database``.

Later API figures (messages stored or looked up per second) are read against these: no
endpoint can beat the storage path under it. Every figure goes through the project's own
:class:`~enginehost.core.db.database.Database` (so SQLite's WAL, busy timeout,
``synchronous=NORMAL`` and ``BEGIN IMMEDIATE``, and PostgreSQL's psycopg pool with its
pre-ping all apply), with core SQLAlchemy statements inside ``run_sync``/``run`` work
functions, on a message-like table the benchmark creates in its own metadata:

    python bench/storage.py [--postgres-url URL] [--rows N] [--seconds S]

The PostgreSQL URL may also come from ``ENGINEHOST_TEST_POSTGRES_URL``; without one only
SQLite is measured. SQLite gets a fresh file in a temporary directory; PostgreSQL a fresh
schema (``bench_<hex>``, reached through ``options=-csearch_path=...``), dropped at the end.

Figures, per backend (latencies are per transaction, wall clock around the call):

1. ``insert 1/txn``: one row per transaction, ``database.run_sync`` called directly.
2. ``insert 1000/txn``: 1000 rows per transaction, one executemany.
3. ``read 1/txn``: one row by its key (session_id, message_id), one transaction per read.
4. ``read 100/txn``: 100 keys of one session per ``IN (...)`` query, one per transaction.
5. ``insert 1/txn via run``: as (1) but through ``await database.run(...)`` from anyio,
   the worker-thread hop included: the path the host takes. (1) and (5) run alternately,
   100 rows at a time, so machine noise hits both alike.

Each case stops at ``--rows`` rows (batched cases: 10x that) or after ``--seconds`` of
measured time, whichever comes first. Ratios are of figures measured in the same run:
batched/single, thread hop/direct, and PostgreSQL/SQLite for each case. Mind the
durability difference when comparing backends: SQLite in WAL with ``synchronous=NORMAL``
does not fsync at each commit, PostgreSQL does unless ``synchronous_commit``/``fsync`` are
off; both settings are printed. SQLite's figures also include what ``Database`` does per
transaction: it opens a new connection each time (``NullPool``), and when that connection
is the only one on the file its close checkpoints the WAL and deletes it, as it will in
the host whenever nothing else holds the file open.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from scratch_schema import scratch_schema
from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from enginehost.core.db.base import NAMING_CONVENTION
from enginehost.core.db.database import Database
from enginehost.core.db.errors import DatabaseError
from enginehost.core.db.types import UTCDateTime, data_json_type
from enginehost.core.db.urls import DatabaseRole, resolve_targets
from enginehost.core.settings import Settings, load_settings

POSTGRES_URL_VARIABLE = "ENGINEHOST_TEST_POSTGRES_URL"
BATCH_INSERT = 1000
BATCH_READ = 100
ALTERNATE_EVERY = 100
WARMUP = 50
SESSIONS = 8
CHATS_PER_SESSION = 50

METADATA = MetaData(naming_convention=NAMING_CONVENTION)
MESSAGES = Table(
    "bench_messages",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(36), nullable=False),
    Column("chat_id", String(64), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("from_me", Boolean, nullable=False),
    Column("timestamp", UTCDateTime(), nullable=False),
    Column("raw", data_json_type(), nullable=False),
    Index(None, "session_id", "message_id", unique=True),
    Index(None, "session_id", "chat_id", "timestamp"),
)

# ----------------------------------------------------------------------------- rows

_OPENERS = ["Hi", "Hello", "Hey", "Good morning", "Thanks", "Sorry", "Quick question", "Hi there"]
_MIDDLES = [
    "your order #{n} has shipped and should arrive by {day}",
    "can we move our call to {day} at {h}:30 instead",
    "the invoice {n} is attached, please check the totals",
    "I left the keys with the front desk, room {n}",
    "your appointment is confirmed for {day} at {h}:00",
    "did you get the photos I sent about unit {n}",
    "the delivery driver is {h} minutes away, reference {n}",
    "we received your payment of {h}9.90 for booking {n}",
]
_CLOSERS = [
    "let me know if anything changes.",
    "reply STOP to opt out of updates.",
    "talk soon!",
    "thanks again for your patience.",
    "see you then.",
    "have a great day :)",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


class RowFactory:
    """Message-like rows with random keys; remembers every key it handed out."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        rng = self._rng
        self.sessions = [
            str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(SESSIONS)
        ]
        self._chats = {
            session: [f"{rng.randrange(10**10, 10**11)}@c.us" for _ in range(CHATS_PER_SESSION)]
            for session in self.sessions
        }
        self._bodies = [self._body() for _ in range(512)]
        self._clock = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
        self.keys: list[tuple[str, str]] = []
        self.keys_by_session: dict[str, list[str]] = {session: [] for session in self.sessions}

    def _body(self) -> str:
        rng = self._rng
        middle = rng.choice(_MIDDLES).format(
            n=rng.randrange(10_000, 99_999), day=rng.choice(_DAYS), h=rng.randrange(1, 12)
        )
        return f"{rng.choice(_OPENERS)}, {middle}; {rng.choice(_CLOSERS)}"

    def row(self) -> dict[str, Any]:
        rng = self._rng
        session = rng.choice(self.sessions)
        chat = rng.choice(self._chats[session])
        outgoing = rng.random() < 0.4
        message_id = f"3EB0{rng.getrandbits(80):020X}"
        self._clock += timedelta(milliseconds=rng.randrange(1, 5000))
        self.keys.append((session, message_id))
        self.keys_by_session[session].append(message_id)
        return {
            "session_id": session,
            "chat_id": chat,
            "message_id": message_id,
            "direction": "out" if outgoing else "in",
            "type": "text" if rng.random() < 0.9 else "image",
            "status": rng.choice(("sent", "delivered", "read")) if outgoing else "received",
            "body": rng.choice(self._bodies),
            "from_me": outgoing,
            "timestamp": self._clock,
            "raw": {
                "id": {"fromMe": outgoing, "remote": chat, "id": message_id},
                "ack": rng.randrange(0, 4),
                "hasMedia": False,
                "deviceType": "android",
            },
        }

    def rows(self, count: int) -> list[dict[str, Any]]:
        return [self.row() for _ in range(count)]

    def key(self) -> tuple[str, str]:
        return self._rng.choice(self.keys)

    def keys_of_one_session(self, count: int) -> tuple[str, list[str]]:
        session = self._rng.choice([s for s in self.sessions if self.keys_by_session[s]])
        ids = self.keys_by_session[session]
        return session, self._rng.sample(ids, min(count, len(ids)))


# ----------------------------------------------------------------------------- work


def _insert_one(session: Session, row: dict[str, Any]) -> int:
    session.connection().execute(insert(MESSAGES), row)
    return 1


def _insert_many(session: Session, rows: list[dict[str, Any]]) -> int:
    session.connection().execute(insert(MESSAGES), rows)
    return len(rows)


def _read_one(session: Session, session_id: str, message_id: str) -> int:
    statement = select(MESSAGES).where(
        MESSAGES.c.session_id == session_id, MESSAGES.c.message_id == message_id
    )
    session.connection().execute(statement).one()
    return 1


def _read_many(session: Session, session_id: str, message_ids: list[str]) -> int:
    statement = select(MESSAGES).where(
        MESSAGES.c.session_id == session_id, MESSAGES.c.message_id.in_(message_ids)
    )
    found = len(session.connection().execute(statement).all())
    if found != len(message_ids):
        raise RuntimeError(f"read {found} rows for {len(message_ids)} keys")
    return found


def _count(session: Session) -> int:
    return int(
        session.connection().execute(select(func.count()).select_from(MESSAGES)).scalar_one()
    )


# ----------------------------------------------------------------------------- measuring


@dataclass
class Figure:
    """Rows done and time spent by one case; one latency sample per transaction."""

    max_rows: int
    max_seconds: float
    rows: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.rows >= self.max_rows or self.seconds >= self.max_seconds

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def quantile(self, q: int) -> float:
        """The q-th percentile of the transaction latencies, in seconds."""
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]

    def add(self, rows: int, elapsed: float) -> None:
        self.rows += rows
        self.seconds += elapsed
        self.latencies.append(elapsed)


async def _timed(
    database: Database, figure: Figure | None, hop: bool, work: Callable[..., int], *args: Any
) -> None:
    started = time.perf_counter()
    rows = await database.run(work, *args) if hop else database.run_sync(work, *args)
    elapsed = time.perf_counter() - started
    if figure is not None:
        figure.add(rows, elapsed)


CASES = {
    "single": "(1) insert 1/txn, run_sync",
    "batched": f"(2) insert {BATCH_INSERT}/txn, executemany",
    "read": "(3) read 1/txn by key",
    "read_batched": f"(4) read {BATCH_READ}/txn, IN (...)",
    "hop": "(5) insert 1/txn, await run",
}


async def _measure(database: Database, rows: int, seconds: float) -> dict[str, Figure]:
    """All five figures on one database holding an empty message table."""
    factory = RowFactory(seed=2785)
    figures = {
        "single": Figure(rows, seconds),
        "hop": Figure(rows, seconds),
        "batched": Figure(rows * 10, seconds),
        "read": Figure(rows, seconds),
        "read_batched": Figure(rows * 10, seconds),
    }
    # Warm-up: connections, statement caches, prepared statements, the thread pool.
    for _ in range(WARMUP):
        await _timed(database, None, False, _insert_one, factory.row())
        await _timed(database, None, True, _insert_one, factory.row())
    await _timed(database, None, False, _insert_many, factory.rows(BATCH_INSERT))

    # (1) and (5), alternately, so that both see the same machine and table size.
    single, hop = figures["single"], figures["hop"]
    while not (single.done and hop.done):
        for figure, through_thread in ((single, False), (hop, True)):
            for _ in range(ALTERNATE_EVERY):
                if figure.done:
                    break
                await _timed(database, figure, through_thread, _insert_one, factory.row())

    batched = figures["batched"]
    while not batched.done:
        count = min(BATCH_INSERT, batched.max_rows - batched.rows)
        await _timed(database, batched, False, _insert_many, factory.rows(count))

    for _ in range(WARMUP):
        await _timed(database, None, False, _read_one, *factory.key())
        await _timed(database, None, False, _read_many, *factory.keys_of_one_session(BATCH_READ))
    read = figures["read"]
    while not read.done:
        await _timed(database, read, False, _read_one, *factory.key())
    read_batched = figures["read_batched"]
    while not read_batched.done:
        session_id, ids = factory.keys_of_one_session(BATCH_READ)
        await _timed(database, read_batched, False, _read_many, session_id, ids)
    return figures


def _describe(database: Database) -> str:
    if database.backend == "sqlite":

        def sqlite_info(session: Session) -> str:
            connection = session.connection()
            version = connection.exec_driver_sql("SELECT sqlite_version()").scalar()
            journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
            levels = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            return (
                f"SQLite {version}, journal_mode={journal}, "
                f"synchronous={levels.get(int(synchronous or 0), synchronous)}, "
                f"file {database.target.sqlite_path}"
            )

        return database.run_sync(sqlite_info)

    def postgres_info(session: Session) -> str:
        connection = session.connection()
        values = {
            name: connection.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("server_version", "synchronous_commit", "fsync", "search_path")
        }
        return (
            f"PostgreSQL {values['server_version']}, synchronous_commit="
            f"{values['synchronous_commit']}, fsync={values['fsync']}, "
            f"search_path={values['search_path']}, {database.target.describe()}"
        )

    return database.run_sync(postgres_info)


def _run_backend(url: str, data_dir: Path, rows: int, seconds: float) -> dict[str, Figure]:
    settings: Settings = load_settings(database_url=url)
    database = Database(resolve_targets(settings, data_dir)[DatabaseRole.DATA], settings)
    try:
        database.check()
        METADATA.create_all(database.engine)
        print(f"  {database.backend:10s} {_describe(database)}", flush=True)
        started = time.perf_counter()
        figures = anyio.run(_measure, database, rows, seconds)
        total = database.run_sync(_count)
        print(
            f"  {'':10s} {total} rows in the table at the end, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        return figures
    finally:
        database.dispose()


def _run_postgres(raw: str, rows: int, seconds: float) -> dict[str, Figure]:
    with scratch_schema(raw) as url:
        return _run_backend(url, Path("/nonexistent"), rows, seconds)


# ----------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b else "     -"


def _print_table(results: dict[str, dict[str, Figure]]) -> None:
    print()
    print(
        f"{'case':34s} {'backend':10s} {'rows':>8s} {'secs':>6s} {'rows/s':>10s} "
        f"{'p50 ms':>8s} {'p99 ms':>8s}"
    )
    for key, label in CASES.items():
        for backend, figures in results.items():
            figure = figures[key]
            print(
                f"{label:34s} {backend:10s} {figure.rows:8d} {figure.seconds:6.2f} "
                f"{figure.rate:10,.0f} {figure.quantile(50) * 1000:8.3f} "
                f"{figure.quantile(99) * 1000:8.3f}"
            )
    print("(latencies are per transaction: 1 row, or the whole batch)")


def _print_ratios(results: dict[str, dict[str, Figure]]) -> None:
    print()
    print("ratios of rates (same run):")
    for backend, figures in results.items():
        single, hop = figures["single"], figures["hop"]
        overhead = (hop.quantile(50) - single.quantile(50)) * 1e6
        print(
            f"  {backend:10s} batched/single insert (2)/(1) "
            f"{_ratio(figures['batched'].rate, single.rate)}   "
            f"batched/single read (4)/(3) "
            f"{_ratio(figures['read_batched'].rate, figures['read'].rate)}   "
            f"thread hop/direct (5)/(1) {_ratio(hop.rate, single.rate)} "
            f"(p50 {overhead:+.0f} us)"
        )
    if "postgresql" in results and "sqlite" in results:
        postgres, sqlite = results["postgresql"], results["sqlite"]
        cells = "   ".join(
            f"{label.split(' ', 1)[0]} {_ratio(postgres[key].rate, sqlite[key].rate)}"
            for key, label in CASES.items()
        )
        print(f"  postgresql/sqlite          {cells}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_VARIABLE, ""),
        help=f"PostgreSQL to measure too (default: ${POSTGRES_URL_VARIABLE}; unset: skip)",
    )
    parser.add_argument(
        "--rows", type=int, default=20_000, help="row cap per single-row case (batched: 10x)"
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured-time cap per case, in seconds"
    )
    args = parser.parse_args(argv)
    if args.rows < BATCH_READ or args.seconds <= 0:
        parser.error(f"--rows must be at least {BATCH_READ} and --seconds positive")

    print(
        f"limits per case: {args.rows} rows (batched: {args.rows * 10}) or {args.seconds:g} s "
        "of measured time"
    )
    results: dict[str, dict[str, Figure]] = {}
    with tempfile.TemporaryDirectory(prefix="enginehost-bench-") as directory:
        path = Path(directory) / "bench.sqlite"
        results["sqlite"] = _run_backend(
            f"sqlite:///{path}", Path(directory), args.rows, args.seconds
        )
    failure = ""
    if args.postgres_url:
        try:
            results["postgresql"] = _run_postgres(args.postgres_url, args.rows, args.seconds)
        except (DatabaseError, DBAPIError, ValueError) as exc:  # ValueError: not PostgreSQL
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            failure = f"postgresql failed: {reason}"
    else:
        print(
            f"  postgresql skipped: no URL (pass --postgres-url or set {POSTGRES_URL_VARIABLE}, "
            "e.g. from scripts/postgres-for-tests)"
        )
    _print_table(results)
    _print_ratios(results)
    if failure:
        sys.exit(failure)


if __name__ == "__main__":
    main()
