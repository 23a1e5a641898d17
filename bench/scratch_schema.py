"""A fresh PostgreSQL schema for one benchmark run, dropped afterwards.

Shared by the benchmarks (run as ``python bench/<name>.py``, so this directory is on the
import path): the data they write never meets anyone else's.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa


def _admin_engine(url: sa.URL) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def _driver_url(url: str) -> sa.URL:
    """``url`` with psycopg 3 as the driver (a bare ``postgresql://`` would be psycopg2)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+psycopg")


@contextlib.contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A fresh ``bench_<hex>`` schema; yields ``url`` scoped to it by its search path (options
    already in ``url`` are kept), and drops the schema on exit."""
    base = _driver_url(url)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(base)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        options = " ".join(
            filter(None, [str(base.query.get("options", "")), f"-csearch_path={schema}"])
        )
        scoped = sa.engine.make_url(url).update_query_dict({"options": options})
        try:
            yield scoped.render_as_string(hide_password=False)
        finally:
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


@contextlib.contextmanager
def maybe_scratch_schema(url: str | None) -> Iterator[str | None]:
    """:func:`scratch_schema` for a URL; None (SQLite) passes through."""
    if url is None:
        yield None
        return
    with scratch_schema(url) as scoped:
        yield scoped
