"""Which database each role uses: the settings' URLs, or SQLite files in the data dir.

Two roles, two databases: ``main`` (auth and audit) and ``data`` (everything else).
URLs are checked here, at boot, so a typo is a message naming the setting rather than a
driver traceback later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from enginehost.core.db.errors import DatabaseConfigError
from enginehost.core.settings import Settings, mask_url_password

__all__ = ["DatabaseRole", "DatabaseTarget", "resolve_targets"]


class DatabaseRole(enum.StrEnum):
    MAIN = "main"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """One database as the host will open it."""

    role: DatabaseRole
    url: URL
    setting: str
    """The environment variable the URL came from (or that would override the default)."""

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def sqlite_path(self) -> Path | None:
        if self.backend != "sqlite" or not self.url.database:
            return None
        return Path(self.url.database)

    def describe(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return mask_url_password(self.url.render_as_string(hide_password=False))


_DEFAULT_FILES = {DatabaseRole.MAIN: "main.sqlite", DatabaseRole.DATA: "enginehost.sqlite"}
_SETTINGS = {
    DatabaseRole.MAIN: ("main_database_url", "ENGINEHOST_MAIN_DATABASE_URL"),
    DatabaseRole.DATA: ("database_url", "ENGINEHOST_DATABASE_URL"),
}


def _parse(raw: str, setting: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise DatabaseConfigError(
            f"{setting}: not a database URL: {mask_url_password(raw)!r}; expected "
            "postgresql://user:password@host:5432/name or sqlite:////absolute/path.sqlite"
        ) from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # One driver, chosen by the host: psycopg 3, whatever the URL named.
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise DatabaseConfigError(f"{setting}: the URL names no database")
        return url
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseConfigError(
                f"{setting}: SQLite needs a file path (sqlite:////absolute/path.sqlite); "
                "an in-memory database would lose everything at exit"
            )
        return url.set(drivername="sqlite")
    raise DatabaseConfigError(
        f"{setting}: unsupported database {backend!r}; use postgresql:// or sqlite://"
    )


def resolve_targets(settings: Settings, data_dir: Path) -> dict[DatabaseRole, DatabaseTarget]:
    """Both databases' targets; refuses two roles on one SQLite file."""
    targets: dict[DatabaseRole, DatabaseTarget] = {}
    for role in DatabaseRole:
        field, variable = _SETTINGS[role]
        secret = getattr(settings, field)
        if secret is None:
            url = URL.create("sqlite", database=str(data_dir / _DEFAULT_FILES[role]))
        else:
            url = _parse(secret.get_secret_value(), variable)
            if url.get_backend_name() == "sqlite":
                path = Path(url.database or "").expanduser()
                url = url.set(database=str(path if path.is_absolute() else data_dir / path))
        targets[role] = DatabaseTarget(role=role, url=url, setting=variable)
    main_path = targets[DatabaseRole.MAIN].sqlite_path
    data_path = targets[DatabaseRole.DATA].sqlite_path
    if main_path is not None and data_path is not None and _same_file(main_path, data_path):
        raise DatabaseConfigError(
            "ENGINEHOST_MAIN_DATABASE_URL and ENGINEHOST_DATABASE_URL point at the same SQLite "
            f"file ({main_path}); the main and data databases must be separate files"
        )
    return targets


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
