"""An in-process API for tests: real SQLite databases, migrated, with real keys.

async with api_harness(tmp_path) as api:
    admin = api.client(api.admin_secret)
    viewer = api.client(await api.key("viewer"))
    scoped = api.client(await api.key("operator", sessions=["alpha"]))
    alpha = await api.session("alpha")
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI

from enginehost.core.db import Databases, open_databases, prepare_schemas
from enginehost.core.http.app import AppState, create_app
from enginehost.core.plugins import PluginHost
from enginehost.core.sessions.models import SessionRecord
from enginehost.core.settings import Settings, load_settings

ADMIN_SECRET = "ehk_test-admin-key-0123456789abcdefghijklmnopqrstuv"


@dataclass
class ApiHarness:
    app: FastAPI
    state: AppState
    settings: Settings
    databases: Databases
    admin_secret: str = ADMIN_SECRET
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, secret: str | None = None, *, bearer: bool = False) -> httpx.AsyncClient:
        """A client sending ``secret`` as X-API-Key (or as a bearer token), or no key."""
        headers = {}
        if secret is not None:
            headers = {"Authorization": f"Bearer {secret}"} if bearer else {"X-API-Key": secret}
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://test",
            headers=headers,
        )
        self.clients.append(client)
        return client

    async def key(self, role: str, *, sessions: Sequence[str] | None = None, **kwargs: Any) -> str:
        """The secret of a new key with ``role`` (and session scope)."""
        _, secret = await self.state.keys.create(
            name=f"{role} test key", role=role, sessions=sessions, **kwargs
        )
        return secret

    async def session(self, name: str, engine: str = "sandbox") -> SessionRecord:
        return await self.state.sessions.create(name, engine=engine)


SANDBOX = importlib.metadata.EntryPoint(
    name="sandbox", value="enginehost.plugins.sandbox", group="enginehost"
)
BAILEYS = importlib.metadata.EntryPoint(
    name="baileys_bridge", value="enginehost.plugins.baileys_bridge", group="enginehost"
)
WEBJS = importlib.metadata.EntryPoint(
    name="webjs_bridge", value="enginehost.plugins.webjs_bridge", group="enginehost"
)


@asynccontextmanager
async def api_harness(
    tmp_path: Path,
    *,
    entry_points: Sequence[importlib.metadata.EntryPoint] = (SANDBOX,),
    **settings: Any,
) -> AsyncIterator[ApiHarness]:
    """The API over fresh databases, with the plugins of ``entry_points`` (the sandbox
    unless told otherwise) enabled as in the daemon."""
    import dataclasses

    from enginehost.core.daemon import build_state

    data_dir = tmp_path / "data"
    config = load_settings(data_dir=data_dir, admin_key=ADMIN_SECRET, **settings)
    databases = open_databases(config, data_dir)
    prepare_schemas(databases, auto_migrate=True)
    plugins = PluginHost(config, data_dir=data_dir, entry_points=list(entry_points))
    plugins.load()
    state = await build_state(config, data_dir, databases, plugins)
    services = dataclasses.replace(plugins.services(), messages=state.send.messages)
    state.ready = True
    dispatcher = state.deliveries  # a test may stand another in for the routes
    harness = ApiHarness(app=create_app(state), state=state, settings=config, databases=databases)
    # The audit writer runs as in the daemon. An error of the body is re-raised as itself
    # after the task group, not wrapped in an ExceptionGroup by it.
    failure: BaseException | None = None
    try:
        async with (
            anyio.create_task_group() as tg,
            plugins.running(services, retry=False),
            state.manager.running(),
        ):
            tg.start_soon(state.audit.run)
            # Webhook deliveries and metrics run as in the daemon.
            if dispatcher is not None:
                await tg.start(dispatcher.run)
            if state.metrics is not None:
                await tg.start(state.metrics.run, state.bus)
            try:
                yield harness
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                failure = exc
            finally:
                for client in harness.clients:
                    await client.aclose()
                tg.cancel_scope.cancel()  # the writer writes what is left, then stops
        await state.send.messages.writes.drain()
        if failure is not None:
            raise failure
    finally:
        if dispatcher is not None:
            await dispatcher.aclose()
        databases.dispose()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check ``response`` is the error model with ``status`` and ``code``; its body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body
