"""``enginehost db ...`` and the daemon's boot-time schema policy, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, cli_env, run_cli

pytestmark = pytest.mark.slow


def _head(role: str) -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", f"enginehost.migrations:{role}")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


DATA_HEAD = _head("data")


def test_upgrade_all_on_an_empty_data_dir_then_check_exits_0(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "fresh")
    before = run_cli("db", "check", env=env)
    assert before.returncode == 1
    assert "run `enginehost db upgrade all`" in before.stdout

    upgraded = run_cli("db", "upgrade", "all", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "the main database" in upgraded.stdout and "the data database" in upgraded.stdout
    assert (tmp_path / "fresh" / "main.sqlite").is_file()
    assert (tmp_path / "fresh" / "enginehost.sqlite").is_file()

    check = run_cli("db", "check", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    again = run_cli("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0


def test_current_history_downgrade_and_check_one_database(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    current = json.loads(run_cli("db", "current", "--json", env=env).stdout)
    assert [(row["database"], row["state"]) for row in current] == [
        ("main", "up-to-date"),
        ("data", "up-to-date"),
    ]
    history = run_cli("db", "history", "data", env=env).stdout
    assert f"* {DATA_HEAD} (head)" in history
    assert "* data_0001" in history

    down = run_cli("db", "downgrade", "data", "--revision", "data_0001", env=env)
    assert down.returncode == 0, down.stderr
    assert "now at data_0001" in down.stdout
    assert run_cli("db", "check", "main", env=env).returncode == 0
    behind = run_cli("db", "check", "data", env=env)
    assert behind.returncode == 1
    assert f"behind head {DATA_HEAD}" in behind.stdout
    assert run_cli("db", "upgrade", "data", "-r", DATA_HEAD, env=env).returncode == 0
    assert run_cli("db", "check", env=env).returncode == 0


def test_usage_errors(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    all_with_revision = run_cli("db", "upgrade", "all", "--revision", "data_0001", env=env)
    assert all_with_revision.returncode == 2
    assert "names a revision of one database" in all_with_revision.stderr
    assert run_cli("db", "downgrade", "all", "-r", "base", env=env).returncode == 2
    bad_url = run_cli("db", "check", env=cli_env(tmp_path, ENGINEHOST_DATABASE_URL="nope"))
    assert bad_url.returncode == 2
    assert "ENGINEHOST_DATABASE_URL: not a database URL" in bad_url.stderr
    same = cli_env(tmp_path, ENGINEHOST_MAIN_DATABASE_URL="sqlite:///enginehost.sqlite")
    conflict = run_cli("serve", "--port", "0", env=same)
    assert conflict.returncode == 2
    assert "point at the same SQLite file" in conflict.stderr


def test_serve_without_auto_migrate_refuses_a_schema_behind_head(tmp_path: Path) -> None:
    env = cli_env(tmp_path, ENGINEHOST_DB_AUTO_MIGRATE="false")
    refused = run_cli("serve", "--port", "0", env=env)
    assert refused.returncode == 1
    assert "run `enginehost db upgrade all`" in refused.stderr
    assert "ENGINEHOST_DB_AUTO_MIGRATE is false" in refused.stderr
    assert run_cli("db", "upgrade", "all", env=env).returncode == 0
    daemon = Daemon(env)
    try:
        daemon.start()
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()


def test_serve_migrates_at_boot_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    daemon = Daemon(env)
    try:
        daemon.start()
        ready = [line for line in daemon.lines if line.get("event") == "db.ready"]
        assert {line["database"] for line in ready} == {"main", "data"}
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()
    with sqlite3.connect(tmp_path / "enginehost.sqlite") as connection:
        connection.execute("UPDATE enginehost_data_version SET version_num = 'data_9999'")
    refused = run_cli("serve", "--port", "0", env=env)
    assert refused.returncode == 1
    assert "data_9999, which this version of enginehost does not know" in refused.stderr


def test_unreachable_database_stops_boot_with_the_setting_named(tmp_path: Path) -> None:
    # No PostgreSQL server needed: nothing listens on port 1 of loopback.
    env = cli_env(
        tmp_path,
        ENGINEHOST_DATABASE_URL="postgresql://app:hunter2@127.0.0.1:1/enginehost",
        ENGINEHOST_DB_CONNECT_TIMEOUT="2",
    )
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode == 1
    assert "from ENGINEHOST_DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stderr


# A read-only or full data directory, made for real: a private mount namespace (root and
# unshare needed) with a read-only bind mount or a tiny tmpfs over the data directory.


def _in_private_mount(tmp_path: Path, setup: str, *args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root with unshare; these checks must run there")
        pytest.skip("needs root and unshare for a private mount namespace")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    script = f'{setup}\nexec "$@"'
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        script,
        "sh",
        sys.executable,
        "-m",
        "enginehost",
        *args,
    ]
    return subprocess.run(
        command,
        env=cli_env(data),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )


def test_read_only_data_dir_names_the_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup = f"mount --bind {data} {data}\nmount -o remount,ro,bind {data}"
    result = _in_private_mount(tmp_path, setup, "db", "upgrade", "all")
    assert result.returncode == 1, result.stderr
    assert str(data) in result.stderr
    assert "not writable" in result.stderr or "readonly" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("size", ["24k", "100k"])  # full at once; full while migrating
def test_full_data_dir_names_the_path(tmp_path: Path, size: str) -> None:
    data = tmp_path / "data"
    setup = f"mount -t tmpfs -o size={size} tmpfs {data}"
    result = _in_private_mount(tmp_path, setup, "db", "upgrade", "all")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the file system holding {data} is full" in result.stderr
    assert "Traceback" not in result.stderr


def test_revision_writes_a_migration_file_and_autogenerate_needs_head(tmp_path: Path) -> None:
    import enginehost.migrations

    versions = Path(enginehost.migrations.__file__).parent / "data" / "versions"
    env = cli_env(tmp_path)
    refused = run_cli("db", "revision", "--db", "data", "-m", "probe", "--autogenerate", env=env)
    assert refused.returncode == 1
    assert "autogenerate compares the models with a database at head" in refused.stderr

    assert run_cli("db", "upgrade", env=env).returncode == 0
    before = set(versions.glob("*.py"))
    made = run_cli("db", "revision", "--db", "data", "-m", "probe", "--autogenerate", env=env)
    created = set(versions.glob("*.py")) - before
    try:
        assert made.returncode == 0, made.stderr
        [path] = created
        assert str(path) in made.stdout
        text = path.read_text()
        assert f"down_revision: str | None = '{DATA_HEAD}'" in text
        # The models and the migrations agree, so there is nothing to generate.
        upgrade_body = text.split("def upgrade() -> None:")[1].split("def downgrade")[0]
        assert "op." not in upgrade_body
        assert "pass" in upgrade_body
    finally:
        for path in created:
            path.unlink()
