"""Shared fixtures: the anyio backend, a clean environment, and in-tree test plugins."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enginehost.core.plugins import ENTRY_POINT_GROUP, PluginHost
from enginehost.core.settings import Settings, load_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ENGINEHOST_* variable or .env file from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("ENGINEHOST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def entry_point(name: str, target: str) -> importlib.metadata.EntryPoint:
    """A hand-made entry point in the enginehost group (no distribution behind it)."""
    return importlib.metadata.EntryPoint(name=name, value=target, group=ENTRY_POINT_GROUP)


def support(name: str, attribute: str | None = None) -> importlib.metadata.EntryPoint:
    """An entry point naming an object in tests/support/plugins.py."""
    return entry_point(name, f"tests.support.plugins:{attribute or name}")


def make_host(
    tmp_path: Path, *entry_points: importlib.metadata.EntryPoint, **settings: object
) -> PluginHost:
    values: dict[str, object] = {"plugin_retry_base": 0.01, "plugin_retry_cap": 0.02, **settings}
    config: Settings = load_settings(**values)
    host = PluginHost(config, data_dir=tmp_path / "data", entry_points=entry_points)
    host.load()
    return host


# ----------------------------------------------------------------------------- databases

# Read once at import: the autouse fixture above clears ENGINEHOST_* for each test.
POSTGRES_URL_VARIABLE = "ENGINEHOST_TEST_POSTGRES_URL"
POSTGRES_URL = os.environ.get(POSTGRES_URL_VARIABLE, "")
NO_POSTGRES = (
    f"PostgreSQL cases need {POSTGRES_URL_VARIABLE} "
    "(export it from `scripts/postgres-for-tests`, see the README)"
)


def _isolated_postgres_url(schema: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def _require_postgres() -> None:
    """Skip the test without a test PostgreSQL server; in CI (``CI=true``) fail it:
    a missing PostgreSQL is never a silent skip there."""
    if not POSTGRES_URL:
        if os.environ.get("CI") == "true":
            pytest.fail(NO_POSTGRES)
        pytest.skip(NO_POSTGRES)


@pytest.fixture
def postgres_server_url() -> str:
    """The URL of the test PostgreSQL server itself (see :func:`_require_postgres`)."""
    _require_postgres()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database on each backend; PostgreSQL gets a fresh schema per test.

    In CI (``CI=true``) a missing PostgreSQL is a failure, never a silent skip.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
        return
    _require_postgres()
    import uuid

    import sqlalchemy

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        poolclass=sqlalchemy.pool.NullPool,
    )
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield _isolated_postgres_url(schema)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def open_database(
    url: str, role: str = "data", tmp_path: Path | None = None, **settings: object
) -> Any:
    """A :class:`Database` for ``url`` playing ``role`` (not migrated)."""
    from enginehost.core.db.database import Database
    from enginehost.core.db.urls import DatabaseRole, resolve_targets

    field = "database_url" if role == "data" else "main_database_url"
    config = load_settings(**{field: url}, **settings)  # type: ignore[arg-type]
    targets = resolve_targets(config, tmp_path or Path("/nonexistent"))
    database = Database(targets[DatabaseRole(role)], config)
    database.check()
    return database


@pytest.fixture
def data_db(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """The data database on each backend, migrated to head."""
    from enginehost.core.db.migrations import upgrade

    database = open_database(database_url, "data", tmp_path)
    upgrade(database)
    yield database
    database.dispose()
