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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside the daemon (which handles it itself)
        sys.exit(130)
