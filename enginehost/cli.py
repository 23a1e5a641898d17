"""The ``enginehost`` command line.

Each command imports what it needs inside its body, so ``enginehost plugins list``
does not pay for the HTTP stack and ``--help`` stays instant.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from enginehost.core.db import Database
    from enginehost.core.settings import Settings

app = typer.Typer(
    name="enginehost",
    help="Host WhatsApp engines as plugins and serve them over an OpenWA-compatible REST API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plugins_app = typer.Typer(
    help="Inspect the installed engine and extension plugins.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
db_app = typer.Typer(
    help="Migrate and inspect the main (auth, audit) and data databases.",
    no_args_is_help=True,
)
app.add_typer(plugins_app, name="plugins")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"enginehost: {message}", err=True)
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    from enginehost.core.settings import Settings, SettingsError, load_settings

    try:
        return load_settings(Settings, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        _fail(str(exc))


def _version_callback(value: bool) -> None:
    if value:
        from enginehost import __version__

        typer.echo(f"enginehost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Host WhatsApp engines as plugins and serve them over an OpenWA-compatible REST API.

    Settings come from ENGINEHOST_* environment variables, a .env file, or the TOML file
    named by ENGINEHOST_CONFIG; see `enginehost config show`.
    """


# ---------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (env ENGINEHOST_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port, 0 for any free one (env ENGINEHOST_PORT, default 2785)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (env ENGINEHOST_DATA_DIR, default ./data).")
    ] = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT (Ctrl-C), then shut down gracefully.

    Health: GET /api/health, /api/health/live, /api/health/ready. Plugins: GET /api/plugins.
    """
    import anyio

    from enginehost.core.auth.service import ApiKeyError
    from enginehost.core.daemon import DaemonError
    from enginehost.core.daemon import serve as run_daemon
    from enginehost.core.db import DatabaseConfigError, DatabaseError
    from enginehost.core.logging import configure_logging

    settings = _settings(host=host, port=port, data_dir=data_dir)
    configure_logging(settings.log_level, settings.log_format)
    try:
        anyio.run(run_daemon, settings)
    except (DatabaseConfigError, ApiKeyError) as exc:
        _fail(str(exc))
    except (DaemonError, DatabaseError) as exc:
        _fail(str(exc), code=1)


# ---------------------------------------------------------------------------- plugins


_COLUMNS = ("NAME", "DISTRIBUTION", "VERSION", "KIND", "HOOKS", "STATUS", "ERROR")


def _table_rows(snapshot: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for plugin in snapshot["plugins"]:
        error = plugin["error"]
        rows.append(
            (
                plugin["name"],
                plugin["distribution"] or "-",
                plugin["version"] or "-",
                plugin["kind"]
                + (
                    f" ({', '.join(e['name'] for e in plugin['engines'])})"
                    if plugin["engines"]
                    else ""
                ),
                ", ".join(plugin["hooks"]) or "-",
                plugin["status"],
                f"{error['stage']}: {error['message']}" if error else "",
            )
        )
    return rows


def _render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_COLUMNS, *rows]
    ]
    return "\n".join(lines)


@plugins_app.command("list")
def plugins_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the documented JSON shape.")
    ] = False,
    hook: Annotated[str | None, typer.Option(help="Only plugins implementing this hook.")] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also log load errors with tracebacks to stderr."),
    ] = False,
) -> None:
    """List every plugin with its version, kind, hooks and status.

    Each plugin is imported, its engines constructed with their config blobs and
    enabled, then disabled again, so the status is what `serve` would see. A broken
    plugin is listed as failed with the stage and error; the command still exits 0.
    """
    import anyio

    from enginehost.core.logging import configure_logging, silence_logging
    from enginehost.core.plugins import PluginHost, hook_names

    if hook is not None and hook not in hook_names():
        _fail(f"unknown hook {hook!r}; known hooks: {', '.join(hook_names())}")
    settings = _settings()
    if verbose:
        configure_logging(settings.log_level, settings.log_format)
    else:  # the table or JSON already shows every error
        silence_logging()
    plugins = PluginHost(settings, data_dir=settings.data_dir.expanduser().absolute())
    plugins.load()

    async def enable_then_disable() -> None:
        async with plugins.running(plugins.services(), retry=False):
            pass

    anyio.run(enable_then_disable)
    snapshot = plugins.snapshot(hook)
    if as_json:
        typer.echo(json.dumps(snapshot, indent=2))
    elif snapshot["plugins"]:
        typer.echo(_render_table(_table_rows(snapshot)))
    else:
        typer.echo("no plugins" + (f" implement {hook}" if hook else " are installed"))


# ---------------------------------------------------------------------------- config


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings as JSON, secrets masked."""
    typer.echo(json.dumps(_settings().redacted(), indent=2, default=str))


# ---------------------------------------------------------------------------- db


class DbChoice(enum.StrEnum):
    MAIN = "main"
    DATA = "data"
    ALL = "all"


class OneDb(enum.StrEnum):
    MAIN = "main"
    DATA = "data"


DbArgument = Annotated[
    DbChoice, typer.Argument(help="Which database: main (auth, audit), data, or all.")
]


@contextmanager
def _databases(which: str) -> Iterator[list[Database]]:
    """The chosen databases, opened and checked; database errors end the command clearly."""
    from enginehost.core.db import DatabaseConfigError, DatabaseError, DatabaseRole, open_databases

    settings = _settings()
    roles = tuple(DatabaseRole) if which == "all" else (DatabaseRole(which),)
    data_dir = settings.data_dir.expanduser().absolute()
    try:
        databases = open_databases(settings, data_dir, roles)
    except DatabaseConfigError as exc:
        _fail(str(exc))
    except DatabaseError as exc:
        _fail(str(exc), code=1)
    try:
        yield [databases.get(role) for role in roles]
    except DatabaseError as exc:
        _fail(str(exc), code=1)
    finally:
        databases.dispose()


@db_app.command("upgrade")
def db_upgrade(
    which: DbArgument = DbChoice.ALL,
    revision: Annotated[
        str, typer.Option("--revision", "-r", help="Target revision (with one database).")
    ] = "head",
) -> None:
    """Migrate to the newest schema (or to --revision). Safe to run repeatedly."""
    from enginehost.core.db.migrations import schema_status, upgrade

    if which is DbChoice.ALL and revision != "head":
        _fail("--revision names a revision of one database: use `db upgrade main|data -r ...`")
    with _databases(which.value) as databases:
        for database in databases:
            upgrade(database, revision)
            typer.echo(schema_status(database).message(database))


@db_app.command("downgrade")
def db_downgrade(
    which: Annotated[OneDb, typer.Argument(help="Which database: main or data.")],
    revision: Annotated[
        str,
        typer.Option(
            "--revision", "-r", help="Target revision: an id, -1 for one step, base for none."
        ),
    ],
) -> None:
    """Undo migrations down to --revision (back up first: downgrades can drop columns)."""
    from enginehost.core.db.migrations import downgrade, schema_status

    with _databases(which.value) as databases:
        for database in databases:
            downgrade(database, revision)
            status = schema_status(database)
            at = ", ".join(status.current) or "base (no tables)"
            typer.echo(f"the {database.role} database is now at {at}")


def _status_rows(databases: list[Database]) -> list[dict[str, Any]]:
    from enginehost.core.db.migrations import schema_status

    rows = []
    for database in databases:
        status = schema_status(database)
        rows.append(
            {
                "database": database.role.value,
                "url": database.target.describe(),
                "current": list(status.current),
                "head": status.head,
                "state": status.state.value,
                "message": status.message(database),
            }
        )
    return rows


@db_app.command("current")
def db_current(
    which: DbArgument = DbChoice.ALL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each database's URL (password masked), current revision and head."""
    with _databases(which.value) as databases:
        rows = _status_rows(databases)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        current = ", ".join(row["current"]) or "none"
        typer.echo(
            f"{row['database']}: {row['url']}\n  current {current}, head {row['head']} "
            f"({row['state']})"
        )


@db_app.command("check")
def db_check(
    which: DbArgument = DbChoice.ALL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Exit 0 when every chosen database is at head, 1 otherwise (behind, empty, unknown)."""
    with _databases(which.value) as databases:
        rows = _status_rows(databases)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            typer.echo(f"{'ok ' if row['state'] == 'up-to-date' else 'NOT'} {row['message']}")
    if any(row["state"] != "up-to-date" for row in rows):
        raise typer.Exit(1)


@db_app.command("history")
def db_history(which: DbArgument = DbChoice.ALL) -> None:
    """List each database's migrations, newest first, marking those applied."""
    from enginehost.core.db.migrations import history

    with _databases(which.value) as databases:
        for database in databases:
            typer.echo(f"{database.role}:")
            for entry in history(database):
                mark = "*" if entry["applied"] else " "
                head = " (head)" if entry["head"] else ""
                message = (entry["message"] or "").splitlines()[0] if entry["message"] else ""
                typer.echo(f"  {mark} {entry['revision']}{head}  {message}")


@db_app.command("revision")
def db_revision(
    which: Annotated[OneDb, typer.Option("--db", help="The database the revision is for.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What the revision does.")],
    autogenerate: Annotated[
        bool,
        typer.Option(
            "--autogenerate", help="Compare the models with the database (must be at head)."
        ),
    ] = False,
) -> None:
    """Write a new migration file into enginehost/migrations/<db>/versions (developers)."""
    from enginehost.core.db.migrations import make_revision

    with _databases(which.value) as databases:
        typer.echo(make_revision(databases[0], message, autogenerate=autogenerate))


# ---------------------------------------------------------------------------- keys

if TYPE_CHECKING:
    from datetime import datetime

    from enginehost.core.auth.models import ApiKey
    from enginehost.core.auth.service import ApiKeyError, ApiKeyService

keys_app = typer.Typer(
    help=(
        "Create, list and revoke API keys, offline, in the main database "
        "(no running daemon needed; a running one sees the change within seconds)."
    ),
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


class KeyRole(enum.StrEnum):
    """The roles of enginehost.core.auth.roles.Role (kept here so --help stays instant)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_expires(value: str) -> datetime:
    """``--expires``: an ISO 8601 time with a timezone, or a duration like 30d, 12h, 90m."""
    import re
    from datetime import datetime, timedelta

    from enginehost.core.engine import utc_now

    text = value.strip()
    match = re.fullmatch(r"(\d+)\s*([smhdw])", text.lower())
    if match is not None:
        amount = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if amount <= 0:
            _fail(f"--expires {value!r}: a duration must be more than zero")
        try:
            return utc_now() + timedelta(seconds=amount)
        except OverflowError:
            _fail(f"--expires {value!r}: too far in the future")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(
            f"--expires {value!r}: give an ISO 8601 time with a timezone "
            "(2030-01-31T12:00:00Z) or a duration (90m, 12h, 30d, 2w)"
        )
    if when.tzinfo is None:
        _fail(f"--expires {value!r}: include a timezone (Z or +02:00, say)")
    return when


@contextmanager
def _key_service() -> Iterator[ApiKeyService]:
    """The API key service over the main database (migrated to head first if allowed)."""
    from enginehost.core.auth.keys import load_or_create_pepper
    from enginehost.core.auth.service import ApiKeyService
    from enginehost.core.db import DatabaseConfigError, DatabaseError, DatabaseRole, open_databases
    from enginehost.core.db.migrations import ensure_schema
    from enginehost.core.logging import silence_logging

    silence_logging()  # this command's output is its answer; errors come as messages
    settings = _settings()
    data_dir = settings.data_dir.expanduser().absolute()
    try:
        databases = open_databases(settings, data_dir, (DatabaseRole.MAIN,))
    except DatabaseConfigError as exc:
        _fail(str(exc))
    except DatabaseError as exc:
        _fail(str(exc), code=1)
    try:
        ensure_schema(databases.main, auto_migrate=settings.db_auto_migrate)
        configured = settings.api_key_pepper
        pepper = load_or_create_pepper(
            configured.get_secret_value() if configured else None, data_dir
        )
        yield ApiKeyService(databases.main, pepper)
    except DatabaseError as exc:
        _fail(str(exc), code=1)
    except OSError as exc:
        _fail(f"cannot use the data directory {data_dir}: {exc}", code=1)
    finally:
        databases.dispose()


def _key_error(exc: ApiKeyError) -> NoReturn:
    """Validation problems are usage errors (exit 2); refusals (409, 404) exit 1."""
    _fail(exc.message, code=2 if exc.status_code == 422 else 1)


def _key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _key_json(key: ApiKey, now: datetime) -> dict[str, Any]:
    """A key as ``GET /api/auth/api-keys`` shows it, plus ``status``."""

    from datetime import UTC

    def iso(value: datetime | None) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    status = _key_status(key, now)
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "sessions": list(key.sessions) if key.sessions is not None else None,
        "expiresAt": iso(key.expires_at),
        "createdAt": iso(key.created_at),
        "lastUsedAt": iso(key.last_used_at),
        "revokedAt": iso(key.revoked_at),
        "active": status == "active",
        "status": status,
    }


def _short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


_KEY_COLUMNS = ("ID", "NAME", "PREFIX", "ROLE", "SESSIONS", "EXPIRES", "LAST USED", "STATUS")


def _render_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


@keys_app.command("create")
def keys_create(
    role: Annotated[
        KeyRole,
        typer.Option(
            "--role",
            "-r",
            help="viewer reads; operator also acts on sessions; admin also manages keys.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="What the key is for (default: 'cli <role> key')."),
    ] = None,
    sessions: Annotated[
        list[str] | None,
        typer.Option(
            "--session",
            "-s",
            help="Limit the key to this session name; repeat for more (not with --role admin).",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            "-e",
            help="When the key stops working: an ISO 8601 time with a timezone "
            "(2030-01-31T12:00:00Z) or a duration from now (90m, 12h, 30d, 2w).",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object: the key's fields plus `key`."),
    ] = False,
) -> None:
    """Create an API key and print its secret: the only time it is shown.

    Without --json, stdout is the secret alone on one line and the id and prefix go to
    stderr, so a script can capture it: KEY=$(enginehost keys create --role viewer).
    With --json, stdout is one object: the key's fields (as the API shows them) plus `key`.
    """
    import anyio

    from enginehost.core.auth.service import ApiKeyError
    from enginehost.core.engine import utc_now

    expires_at = _parse_expires(expires) if expires is not None else None
    key_name = name if name is not None else f"cli {role.value} key"

    with _key_service() as service:

        async def create() -> tuple[ApiKey, str, bool]:
            key, secret = await service.create(
                name=key_name, role=role.value, sessions=sessions or None, expires_at=expires_at
            )
            now = utc_now()
            keys = await service.list()
            admins = [k for k in keys if k.role == "admin" and _key_status(k, now) == "active"]
            return key, secret, bool(admins)

        try:
            key, secret, has_admin = anyio.run(create)
        except ApiKeyError as exc:
            _key_error(exc)
    if as_json:
        typer.echo(json.dumps({**_key_json(key, key.created_at), "key": secret}, indent=2))
    else:
        typer.echo(secret)
        typer.echo(
            f"created {key.role} key {key.id} (prefix {key.prefix}); "
            "the secret above is shown only this once",
            err=True,
        )
    if not has_admin:
        typer.echo(
            "enginehost: note: there is no active admin key; "
            "create one with `enginehost keys create --role admin`",
            err=True,
        )


@keys_app.command("list")
def keys_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list (the API's key objects).")
    ] = False,
) -> None:
    """List every key: id, name, prefix, role, sessions, expiry, last use, status.

    Secrets are never shown (only a keyed hash of each is stored).
    """
    import anyio

    from enginehost.core.engine import utc_now

    with _key_service() as service:
        keys = anyio.run(service.list)
    now = utc_now()
    if as_json:
        typer.echo(json.dumps([_key_json(key, now) for key in keys], indent=2))
        return
    if not keys:
        typer.echo("no API keys")
        return
    rows: list[tuple[str, ...]] = [
        (
            key.id,
            key.name,
            key.prefix,
            key.role,
            ", ".join(key.sessions) if key.sessions is not None else "*",
            _short_time(key.expires_at) if key.expires_at is not None else "never",
            _short_time(key.last_used_at) if key.last_used_at is not None else "never",
            _key_status(key, now),
        )
        for key in keys
    ]
    typer.echo(_render_rows(_KEY_COLUMNS, rows))


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[
        str,
        typer.Argument(
            metavar="ID_OR_PREFIX",
            help="The key's id, or the start of its id or prefix (as `keys list` shows them).",
        ),
    ],
) -> None:
    """Revoke a key: it stops working (a running daemon notices within seconds).

    Revoking a revoked key changes nothing. The last active admin key cannot be revoked
    (exit 1): create another admin key first. An unknown or ambiguous ID_OR_PREFIX
    exits 2, listing the keys it matches.
    """
    import anyio

    from enginehost.core.auth.service import ApiKeyError
    from enginehost.core.engine import utc_now

    wanted = key.strip()
    if not wanted:
        _fail("name a key: its id or prefix (see `enginehost keys list`)")
    with _key_service() as service:
        keys = anyio.run(service.list)
        exact = [k for k in keys if wanted in (k.id, k.prefix)]
        matches = exact or [
            k for k in keys if k.id.startswith(wanted) or k.prefix.startswith(wanted)
        ]
        if not matches:
            _fail(f"no API key has the id or prefix {wanted!r} (see `enginehost keys list`)")
        if len(matches) > 1:
            now = utc_now()
            listed = "\n".join(
                f"  {k.id}  {k.prefix}  {k.role}  {_key_status(k, now)}  {k.name}" for k in matches
            )
            _fail(f"{wanted!r} matches {len(matches)} keys; give more of it:\n{listed}")
        target = matches[0]
        already = target.revoked_at is not None
        try:
            revoked = anyio.run(service.revoke, target.id)
        except ApiKeyError as exc:
            _key_error(exc)
    state = "was already revoked" if already else "revoked"
    typer.echo(f"{revoked.role} key {revoked.id} ({revoked.prefix}, {revoked.name!r}) {state}")


# ---------------------------------------------------------------------------- sessions

sessions_app = typer.Typer(
    help=(
        "Create, start, stop and link the sessions of a running daemon, over its REST API "
        "(--url, env ENGINEHOST_URL; --key, env ENGINEHOST_API_KEY)."
    ),
    no_args_is_help=True,
)
app.add_typer(sessions_app, name="sessions")

DEFAULT_URL = "http://127.0.0.1:2785"

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="ENGINEHOST_URL", help="The running daemon's base URL."),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="ENGINEHOST_API_KEY",
        show_default=False,
        help="An API key (operator for changes, viewer to read). Default: "
        "ENGINEHOST_ADMIN_KEY, else the daemon's <data dir>/admin-api-key when readable.",
    ),
]
SessionArgument = Annotated[
    str, typer.Argument(metavar="SESSION", help="The session's name (or id).")
]


class _ApiFailure(Exception):
    """An error answer of the API: its status, ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _SessionsApi:
    """A small client of the daemon's API (stdlib only: the CLI adds no dependency)."""

    def __init__(self, url: str, key: str | None) -> None:
        from urllib.parse import urlsplit

        url = url.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            _fail(f"--url {url!r}: give the daemon's base URL, like {DEFAULT_URL}")
        self.url = url
        self.key = _api_key(key)
        # A proxy from the environment must not intercept a daemon on this machine.
        self._direct = parts.hostname in ("localhost", "127.0.0.1", "::1")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The answer's JSON (None for an empty one); raises :class:`_ApiFailure` for an
        error answer and ends the command (exit 1) when the daemon cannot be reached."""
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"X-API-Key": self.key, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        handlers = [urllib.request.ProxyHandler({})] if self._direct else []
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=15) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_failure(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            _fail(
                f"cannot reach the daemon at {self.url}: {reason} "
                "(is `enginehost serve` running there? set --url or ENGINEHOST_URL)",
                code=1,
            )
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            _fail(f"{self.url} answered with something that is not JSON: is it enginehost?", 1)

    def session_path(self, session: str, suffix: str = "") -> str:
        from urllib.parse import quote

        return f"/api/sessions/{quote(session, safe='')}{suffix}"

    def run(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """:meth:`call`, with an error answer ending the command: its message, exit 1
        (exit 2 for invalid input, 422)."""
        try:
            return self.call(method, path, body)
        except _ApiFailure as exc:
            _fail(exc.message, code=2 if exc.status == 422 else 1)


def _api_failure(status: int, raw: bytes) -> _ApiFailure:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _ApiFailure(status, str(body.get("code") or ""), body["message"])
    return _ApiFailure(status, "", f"the daemon answered HTTP {status}")


def _api_key(given: str | None) -> str:
    """--key / ENGINEHOST_API_KEY, else ENGINEHOST_ADMIN_KEY, else the first-boot key file."""
    import os

    from enginehost.core.auth.service import ADMIN_KEY_FILE
    from enginehost.core.settings import Settings, SettingsError, load_settings

    if given and given.strip():
        return given.strip()
    try:
        settings: Settings | None = load_settings(Settings)
    except SettingsError:  # a setting the daemon needs, not this client
        settings = None
    if settings is not None and settings.admin_key is not None:
        return settings.admin_key.get_secret_value()
    data_dir = (
        settings.data_dir
        if settings is not None
        else Path(os.environ.get("ENGINEHOST_DATA_DIR", "data"))
    )
    path = data_dir.expanduser() / ADMIN_KEY_FILE
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError:
        secret = ""
    if not secret:
        _fail(
            f"no API key: pass --key or set ENGINEHOST_API_KEY (the default, {path}, "
            "is missing or not readable)"
        )
    return secret


_SESSION_COLUMNS = ("NAME", "ENGINE", "STATUS", "DESIRED", "PHONE", "ID")


def _session_line(session: dict[str, Any]) -> str:
    line = f"session {session['name']!r}: {session['status']} (desired {session['desiredState']})"
    if session.get("lastError"):
        line += f"; last error: {session['lastError']}"
    return line


@sessions_app.command("list")
def sessions_list(
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON list of sessions.")
    ] = False,
) -> None:
    """List the sessions (those the key may see): name, engine, status, phone, id."""
    api = _SessionsApi(url, key)
    sessions = api.run("GET", "/api/sessions")
    if as_json:
        typer.echo(json.dumps(sessions, indent=2))
        return
    if not sessions:
        typer.echo("no sessions")
        return
    rows: list[tuple[str, ...]] = [
        tuple(
            str(value)
            for value in (
                s["name"],
                s["engine"],
                s["status"],
                s["desiredState"],
                s.get("phone") or "-",
                s["id"],
            )
        )
        for s in sessions
    ]
    typer.echo(_render_rows(_SESSION_COLUMNS, rows))


@sessions_app.command("create")
def sessions_create(
    name: Annotated[str, typer.Argument(help="The new session's name (unique).")],
    engine: Annotated[
        str | None,
        typer.Option("--engine", "-e", help="The engine (default: the daemon's default)."),
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it at once.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Create a session (stopped unless --start). Link it with `enginehost sessions qr`."""
    api = _SessionsApi(url, key)
    body: dict[str, Any] = {"name": name, "start": start}
    if engine is not None:
        body["engine"] = engine
    session = api.run("POST", "/api/sessions", body)
    typer.echo(f"created session {session['name']!r} ({session['id']}) on {session['engine']}")
    if start:
        typer.echo(f"starting; link it with: enginehost sessions qr {session['name']}")


@sessions_app.command("start")
def sessions_start(
    session: SessionArgument, url: UrlOption = DEFAULT_URL, key: KeyOption = None
) -> None:
    """Start a session (a running one is left as it is)."""
    api = _SessionsApi(url, key)
    typer.echo(_session_line(api.run("POST", api.session_path(session, "/start"))))


@sessions_app.command("stop")
def sessions_stop(
    session: SessionArgument,
    force: Annotated[
        bool, typer.Option("--force", help="Do not wait for the engine to disconnect cleanly.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Stop a session, keeping its link (the next start needs no QR)."""
    api = _SessionsApi(url, key)
    path = api.session_path(session, "/force-kill" if force else "/stop")
    typer.echo(_session_line(api.run("POST", path)))


@sessions_app.command("logout")
def sessions_logout(
    session: SessionArgument, url: UrlOption = DEFAULT_URL, key: KeyOption = None
) -> None:
    """Stop a session and unlink it: the next start shows a new QR."""
    api = _SessionsApi(url, key)
    typer.echo(_session_line(api.run("POST", api.session_path(session, "/logout"))))


@sessions_app.command("delete")
def sessions_delete(
    session: SessionArgument, url: UrlOption = DEFAULT_URL, key: KeyOption = None
) -> None:
    """Stop and delete a session (deleting one that is gone already is not an error)."""
    api = _SessionsApi(url, key)
    api.run("DELETE", api.session_path(session))
    typer.echo(f"session {session!r} deleted")


@sessions_app.command("qr")
def sessions_qr(
    session: SessionArgument,
    timeout: Annotated[
        float,
        typer.Option(
            min=1, help="Seconds to wait for the phone to link before giving up (exit 1)."
        ),
    ] = 120,
    invert: Annotated[
        bool, typer.Option("--invert", help="Draw for a terminal with dark text on light.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Show a session's QR in the terminal until the phone links it.

    The session must be running (`enginehost sessions start`). The QR is redrawn when
    the engine rotates it; the command polls once a second and exits 0 once the session
    is ready ("linked as <phone>"), or 1 after --timeout seconds.
    """
    import time

    from enginehost.core.qr import terminal

    api = _SessionsApi(url, key)
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    shown: str | None = None
    said: str | None = None
    while True:
        current = api.run("GET", api.session_path(session))
        status = current["status"]
        if status == "ready":
            who = f" ({current['pushName']})" if current.get("pushName") else ""
            typer.echo(f"linked as {current.get('phone') or 'an unknown number'}{who}")
            return
        if current["desiredState"] != "running":
            error = f"; last error: {current['lastError']}" if current.get("lastError") else ""
            _fail(
                f"session {current['name']!r} is not running ({status}{error}); "
                f"start it with `enginehost sessions start {current['name']}`",
                code=1,
            )
        try:
            code = api.call("GET", api.session_path(session, "/qr"))
        except _ApiFailure as exc:
            if exc.code != "qr_not_available":
                _fail(exc.message, code=1)
            code = None
        if code is not None and code["qr"] != shown:
            shown = code["qr"]
            if tty:
                typer.echo("\x1b[H\x1b[2J", nl=False)  # a fresh screen for the new QR
            typer.echo(terminal(shown, invert=invert), nl=False)
            pairing = (
                f" or enter the pairing code {code['pairingCode']}"
                if code.get("pairingCode")
                else ""
            )
            typer.echo(
                f"Scan with WhatsApp (Settings > Linked devices > Link a device){pairing}. "
                f"Session {current['name']!r}, {status}; waiting..."
            )
            said = status
        elif code is None and status != said:
            typer.echo(f"session {current['name']!r} is {status}; waiting...")
            said = status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _fail(
                f"session {current['name']!r} did not link within {timeout:g} s (status {status})",
                code=1,
            )
        time.sleep(min(1.0, remaining))


# ---------------------------------------------------------------------------- webhooks

webhooks_app = typer.Typer(
    help=(
        "Register, inspect and test the webhooks of a running daemon, and re-drive its "
        "dead letters, over its REST API (--daemon-url, env ENGINEHOST_URL; --key, env "
        "ENGINEHOST_API_KEY)."
    ),
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")

# Here --url is also accepted for the daemon (as in `sessions`), except on `create`,
# where it is the webhook's own URL.
DaemonUrlOption = Annotated[
    str,
    typer.Option(
        "--daemon-url", "--url", envvar="ENGINEHOST_URL", help="The running daemon's base URL."
    ),
]
CreateDaemonUrlOption = Annotated[
    str,
    typer.Option(
        "--daemon-url",
        envvar="ENGINEHOST_URL",
        help="The running daemon's base URL (here --url is the webhook's URL).",
    ),
]
WebhookArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The webhook's id (see `enginehost webhooks list`).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]

WEBHOOK_SECRET_VARIABLE = "ENGINEHOST_WEBHOOK_SECRET"


class Direction(enum.StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"


def _webhook_path(webhook_id: str, suffix: str = "") -> str:
    from urllib.parse import quote

    return f"/api/webhooks/{quote(webhook_id.strip(), safe='')}{suffix}"


def _session_names(api: _SessionsApi) -> dict[str, str]:
    """Session ids to names, for tables; empty when the key may not list sessions."""
    try:
        sessions = api.call("GET", "/api/sessions")
    except _ApiFailure:
        return {}
    return {s["id"]: s["name"] for s in sessions or []}


def _webhook_secret(secret_file: Path | None) -> str | None:
    """The signing secret: from --secret-file ('-' is standard input), else from the
    environment; never from a command-line value (see `webhooks create --help`)."""
    import os

    if secret_file is None:
        return os.environ.get(WEBHOOK_SECRET_VARIABLE, "").strip() or None
    try:
        text = sys.stdin.read() if str(secret_file) == "-" else secret_file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--secret-file {secret_file}: cannot read it: {exc}")
    secret = text.strip()  # the line break an editor or `echo` adds is no part of it
    if not secret:
        _fail(f"--secret-file {secret_file} is empty")
    return secret


def _parse_headers(given: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in given:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            _fail(f"--header {item.split(':', 1)[0]!r}...: give it as 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def _filters(
    chats: list[str] | None,
    direction: Direction | None,
    from_me: bool | None,
    types: list[str] | None,
    group: bool | None,
) -> dict[str, Any]:
    given = {
        "chatIds": chats or None,
        "direction": direction.value if direction is not None else None,
        "fromMe": from_me,
        "messageTypes": types or None,
        "isGroup": group,
    }
    return {name: value for name, value in given.items() if value is not None}


def _owner(hook: dict[str, Any], names: dict[str, str]) -> str:
    session_id = hook.get("sessionId")
    if session_id is None:
        return "(global)"
    return names.get(str(session_id), str(session_id))


_WEBHOOK_COLUMNS = ("ID", "SESSION", "ACTIVE", "EVENTS", "URL")


@webhooks_app.command("list")
def webhooks_list(
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="Only this session's webhooks (name or id)."),
    ] = None,
    as_json: JsonOption = False,
    url: DaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List webhooks: every one the key may see, or one session's.

    An admin key sees global webhooks too. Secrets and header values are never shown.
    """
    api = _SessionsApi(url, key)
    path = api.session_path(session, "/webhooks") if session else "/api/webhooks"
    hooks = api.run("GET", path)
    if as_json:
        typer.echo(json.dumps(hooks, indent=2))
        return
    if not hooks:
        typer.echo("no webhooks")
        return
    names = _session_names(api)
    rows: list[tuple[str, ...]] = [
        (
            hook["id"],
            _owner(hook, names),
            "yes" if hook["active"] else "no",
            ",".join(hook["events"]),
            hook["url"],
        )
        for hook in hooks
    ]
    typer.echo(_render_rows(_WEBHOOK_COLUMNS, rows))


@webhooks_app.command("create")
def webhooks_create(
    target: Annotated[
        str,
        typer.Option(
            "--url", help="Where deliveries are POSTed: an http(s) URL, without user:password."
        ),
    ],
    events: Annotated[
        list[str],
        typer.Option(
            "--event",
            "-e",
            help="An event to receive (message.received, session.status, ...); repeat "
            'for more, or "*" for every event.',
        ),
    ],
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="The session whose events it receives (name or id)."),
    ] = None,
    everywhere: Annotated[
        bool,
        typer.Option(
            "--global", help="Receive the events of every session instead (needs an admin key)."
        ),
    ] = False,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help="Read the signing secret (16 to 512 characters) from this file, '-' for "
            f"standard input. Default: env {WEBHOOK_SECRET_VARIABLE}. There is no option "
            "taking the secret itself: it would stay in the shell history and show in "
            "the process list.",
        ),
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            help="An extra header sent with every delivery, as 'Name: value'; repeat for "
            "more. Write-only, but a command-line value stays in the shell history.",
        ),
    ] = None,
    chats: Annotated[
        list[str] | None,
        typer.Option("--chat", help="Only message events of this chat (123@c.us); repeatable."),
    ] = None,
    direction: Annotated[
        Direction | None, typer.Option("--direction", help="Only messages in this direction.")
    ] = None,
    from_me: Annotated[
        bool | None,
        typer.Option("--from-me/--not-from-me", help="Only own messages, or only others'."),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only messages of this type (text, image, ...); repeatable."),
    ] = None,
    group: Annotated[
        bool | None,
        typer.Option("--group/--no-group", help="Only group chats, or only other chats."),
    ] = None,
    retry_count: Annotated[
        int | None,
        typer.Option(
            "--retry-count",
            min=0,
            max=100,
            help="Retries after a failed first attempt (default: the daemon's setting).",
        ),
    ] = None,
    inactive: Annotated[
        bool, typer.Option("--inactive", help="Register it without delivering yet.")
    ] = False,
    as_json: JsonOption = False,
    daemon_url: CreateDaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Register a webhook for one session (--session) or for all (--global).

    Filters (--chat, --direction, --from-me, --type, --group) narrow message events;
    every filter given must match. Deliveries are signed when a secret is given
    (--secret-file or ENGINEHOST_WEBHOOK_SECRET); the secret and header values are
    never shown again. The daemon refuses URLs whose host resolves to a loopback or
    private address unless ENGINEHOST_WEBHOOK_ALLOWED_HOSTS allows it.
    """
    if (session is None) == (not everywhere):
        _fail("give either --session SESSION or --global")
    body: dict[str, Any] = {"url": target, "events": events, "active": not inactive}
    secret = _webhook_secret(secret_file)
    if secret is not None:
        body["secret"] = secret
    if headers:
        body["headers"] = _parse_headers(headers)
    filters = _filters(chats, direction, from_me, types, group)
    if filters:
        body["filters"] = filters
    if retry_count is not None:
        body["retryCount"] = retry_count
    api = _SessionsApi(daemon_url, key)
    path = api.session_path(session, "/webhooks") if session is not None else "/api/webhooks"
    hook = api.run("POST", path, body)
    if as_json:
        typer.echo(json.dumps(hook, indent=2))
        return
    owner = f"session {session!r}" if session is not None else "every session (global)"
    signed = "signed" if hook["hasSecret"] else "unsigned"
    typer.echo(
        f"created webhook {hook['id']} for {owner}: {', '.join(hook['events'])} "
        f"-> {hook['url']} ({signed}{'' if hook['active'] else ', inactive'})"
    )


@webhooks_app.command("show")
def webhooks_show(
    webhook: WebhookArgument,
    as_json: JsonOption = False,
    url: DaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Show one webhook (whether a secret is set and the header names; never their values)."""
    api = _SessionsApi(url, key)
    hook = api.run("GET", _webhook_path(webhook))
    if as_json:
        typer.echo(json.dumps(hook, indent=2))
        return
    filters = {name: value for name, value in hook["filters"].items() if value is not None}
    policy = hook["retryPolicy"] or {}
    delays = ", ".join(
        f"{label} {policy[field]:g} s"
        for label, field in (("base", "baseSeconds"), ("cap", "capSeconds"))
        if policy.get(field) is not None
    )
    retries = "the daemon's setting" if hook["retryCount"] is None else str(hook["retryCount"])
    lines = [
        ("id", hook["id"]),
        ("session", _owner(hook, _session_names(api))),
        ("url", hook["url"]),
        ("events", ", ".join(hook["events"])),
        ("active", "yes" if hook["active"] else "no"),
        ("filters", json.dumps(filters) if filters else "none"),
        ("retries", retries),
        ("retry delays", delays or "the daemon's settings"),
        ("secret", "set" if hook["hasSecret"] else "none (deliveries are unsigned)"),
        ("headers", ", ".join(hook["headerNames"]) or "none"),
        ("created", hook["createdAt"]),
        ("updated", hook["updatedAt"]),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        typer.echo(f"{label.ljust(width)}  {value}")


@webhooks_app.command("delete")
def webhooks_delete(
    webhook: WebhookArgument, url: DaemonUrlOption = DEFAULT_URL, key: KeyOption = None
) -> None:
    """Delete a webhook, with the deliveries it still had to make."""
    api = _SessionsApi(url, key)
    api.run("DELETE", _webhook_path(webhook))
    typer.echo(f"webhook {webhook.strip()} deleted")


@webhooks_app.command("test")
def webhooks_test(
    webhook: WebhookArgument,
    as_json: JsonOption = False,
    url: DaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Send one webhook.test event to the webhook now, active or not, and say how it went.

    Exit 0 when the receiver took it (a 2xx answer), 1 otherwise.
    """
    api = _SessionsApi(url, key)
    result = api.run("POST", _webhook_path(webhook, "/test"))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif result["delivered"]:
        typer.echo(f"delivered: HTTP {result['statusCode']} in {result['durationMs']:g} ms")
    else:
        status = f" (HTTP {result['statusCode']})" if result["statusCode"] is not None else ""
        again = "would be retried" if result["retryable"] else "would not be retried"
        typer.echo(
            f"not delivered: {result['error']}{status} after {result['durationMs']:g} ms; "
            f"a real delivery {again}"
        )
    if not result["delivered"]:
        raise typer.Exit(1)


_DEAD_LETTER_COLUMNS = ("ID", "WEBHOOK", "EVENT", "ATTEMPTS", "DEAD AT", "LAST ERROR")


@webhooks_app.command("dead-letters")
def webhooks_dead_letters(
    webhook: Annotated[
        str | None, typer.Option("--webhook", "-w", help="Only this webhook's (its id).")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session's (name or id).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=500, help="At most this many, newest first.")
    ] = 50,
    as_json: JsonOption = False,
    url: DaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List dead letters: deliveries whose attempts ran out (needs an admin key).

    Deliver them again with `enginehost webhooks redrive`.
    """
    from urllib.parse import urlencode

    query: dict[str, Any] = {"limit": limit}
    if webhook is not None:
        query["webhookId"] = webhook
    if session is not None:
        query["sessionId"] = session
    api = _SessionsApi(url, key)
    page = api.run("GET", f"/api/webhooks/dead-letters?{urlencode(query)}")
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    letters = page["deadLetters"]
    if not letters:
        typer.echo("no dead letters")
        return
    rows: list[tuple[str, ...]] = [
        (
            letter["id"],
            letter["webhookId"],
            letter["event"],
            str(letter["attempts"]),
            letter["deadAt"],
            " ".join((letter["lastError"] or "-").split())[:80],
        )
        for letter in letters
    ]
    typer.echo(_render_rows(_DEAD_LETTER_COLUMNS, rows))
    if page["total"] > len(letters):
        typer.echo(f"({len(letters)} of {page['total']}; --limit shows more)")


@webhooks_app.command("redrive")
def webhooks_redrive(
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="A dead letter's id; repeat for more."),
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            "-w",
            help="Every dead letter of this webhook (with --id: only those ids of it).",
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every dead letter of every webhook.")
    ] = False,
    url: DaemonUrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Deliver dead letters again (needs an admin key).

    Each goes out with the same body and idempotency key, so receivers can drop what
    they already took; its attempts start from zero.
    """
    if everything == bool(ids or webhook):
        _fail("give --id ID (repeatable) and/or --webhook ID, or --all")
    body: dict[str, Any] = {"all": True} if everything else {}
    if ids:
        body["ids"] = ids
    if webhook is not None:
        body["webhookId"] = webhook
    api = _SessionsApi(url, key)
    count = api.run("POST", "/api/webhooks/dead-letters/redrive", body)["redriven"]
    typer.echo(f"re-drove {count} dead letter{'' if count == 1 else 's'}")


# ---------------------------------------------------------------------------- bridges

from enginehost.bridges_cli import bridges_app  # noqa: E402 - after the app it joins

app.add_typer(bridges_app, name="bridges")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside the daemon (which handles it itself)
        sys.exit(130)
