"""API key storage and the first-boot admin key (service level, both backends)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from enginehost.core.auth.keys import hash_secret, load_or_create_pepper
from enginehost.core.auth.models import ApiKey
from enginehost.core.auth.service import (
    ADMIN_KEY_FILE,
    ApiKeyError,
    ApiKeyService,
    AuthenticationError,
)
from enginehost.core.db.migrations import upgrade
from tests.conftest import open_database

pytestmark = pytest.mark.anyio


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def main_db(database_url: str, tmp_path: Path) -> Any:
    database = open_database(database_url, "main", tmp_path)
    upgrade(database)
    yield database
    database.dispose()


async def test_only_a_peppered_hash_and_a_prefix_are_stored(main_db: Any) -> None:
    keys = ApiKeyService(main_db, b"pepper-one")
    key, secret = await keys.create(name="ci", role="operator")
    rows = main_db.run_sync(lambda s: list(s.exec(select(ApiKey)).all()))
    assert [(r.prefix, r.key_hash) for r in rows] == [
        (secret[:12], hash_secret(secret, b"pepper-one"))
    ]
    assert secret not in repr(rows)
    assert (await keys.authenticate(secret)).key_id == key.id
    # The same secret under another pepper is a different hash: the database alone is useless.
    with pytest.raises(AuthenticationError, match="unknown API key"):
        await ApiKeyService(main_db, b"pepper-two").authenticate(secret)


async def test_first_boot_seeds_an_admin_key_shown_once_on_a_terminal(
    main_db: Any, tmp_path: Path
) -> None:
    keys = ApiKeyService(main_db, b"p")
    terminal = Terminal()
    await keys.ensure_admin_key(tmp_path, None, console=terminal)
    secret = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
    assert (tmp_path / ADMIN_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert secret in terminal.getvalue()
    assert (await keys.authenticate(secret)).role.value == "admin"

    later = Terminal()
    await keys.ensure_admin_key(tmp_path, None, console=later)
    assert later.getvalue() == ""  # later boots log the prefix only, never the secret
    assert len(await keys.list()) == 1


async def test_the_secret_is_not_printed_when_the_console_is_not_a_terminal(
    main_db: Any, tmp_path: Path
) -> None:
    piped = io.StringIO()
    await ApiKeyService(main_db, b"p").ensure_admin_key(tmp_path, None, console=piped)
    assert piped.getvalue() == ""
    assert (tmp_path / ADMIN_KEY_FILE).is_file()


async def test_a_configured_admin_key_is_accepted_and_never_duplicated(
    main_db: Any, tmp_path: Path
) -> None:
    keys = ApiKeyService(main_db, b"p")
    configured = "operator-chosen-admin-key-of-40-characters"
    for _ in range(2):
        await keys.ensure_admin_key(tmp_path, configured, console=Terminal())
    assert [k.role for k in await keys.list()] == ["admin"]
    assert (await keys.authenticate(configured)).role.value == "admin"
    assert not (tmp_path / ADMIN_KEY_FILE).exists()
    with pytest.raises(ApiKeyError, match="at least 32 characters"):
        await keys.ensure_admin_key(tmp_path, "short", console=Terminal())


async def test_the_last_active_admin_cannot_be_revoked_or_deleted(main_db: Any) -> None:
    keys = ApiKeyService(main_db, b"p")
    first, _ = await keys.create(name="one", role="admin")
    for attempt in (keys.revoke, keys.delete):
        with pytest.raises(ApiKeyError) as caught:
            await attempt(first.id)
        assert caught.value.status_code == 409
    second, _ = await keys.create(name="two", role="admin")
    await keys.revoke(first.id)
    with pytest.raises(ApiKeyError, match="last active admin"):
        await keys.delete(second.id)
    await keys.delete(first.id)  # a revoked admin is not an active one


async def test_revocation_takes_effect_at_once_despite_the_cache(main_db: Any) -> None:
    keys = ApiKeyService(main_db, b"p")
    await keys.create(name="admin", role="admin")
    key, secret = await keys.create(name="bot", role="viewer")
    await keys.authenticate(secret)  # now cached
    await keys.revoke(key.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await keys.authenticate(secret)


def test_the_pepper_file_is_made_once_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_pepper(None, tmp_path)
    assert load_or_create_pepper(None, tmp_path) == first
    assert (tmp_path / "api-key-pepper").stat().st_mode & 0o777 == 0o600
    assert load_or_create_pepper("from-the-environment", tmp_path) == b"from-the-environment"


async def test_concurrent_removals_of_the_only_two_admins_leave_one(main_db: Any) -> None:
    import anyio

    keys = ApiKeyService(main_db, b"p")
    one, _ = await keys.create(name="one", role="admin")
    two, _ = await keys.create(name="two", role="admin")
    outcomes: list[int] = []

    async def remove(key_id: str, how: Any) -> None:
        try:
            await how(key_id)
            outcomes.append(200)
        except ApiKeyError as exc:  # a deadlock would surface as a busy error instead
            outcomes.append(exc.status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(remove, one.id, keys.revoke)
        tg.start_soon(remove, two.id, keys.delete)
    assert sorted(outcomes) == [200, 409]
    active = [k for k in await keys.list() if k.role == "admin" and k.revoked_at is None]
    assert len(active) == 1


async def test_an_admin_key_is_seeded_when_no_admin_can_get_in(
    main_db: Any, tmp_path: Path
) -> None:
    keys = ApiKeyService(main_db, b"p")
    await keys.create(name="made offline", role="viewer")
    await keys.ensure_admin_key(tmp_path, None, console=io.StringIO())
    roles = sorted(k.role for k in await keys.list())
    assert roles == ["admin", "viewer"]
    secret = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
    assert (await keys.authenticate(secret)).role.value == "admin"
