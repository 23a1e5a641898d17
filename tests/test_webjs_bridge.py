"""The webjs engine with the real sidecar, whatsapp-web.js and Debian's Chromium,
through the host: a stub WhatsApp Web page (tests/webjs) gets the library to its QR;
nothing leaves the machine (Chromium's host resolver maps every name to nothing)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from enginehost import EngineError, SessionInfo
from enginehost.core.plugins import PluginStatus
from enginehost.plugins.webjs_bridge import WebjsPlugin
from tests.support.api import SANDBOX, WEBJS, ApiHarness, api_harness
from tests.support.fakewa import node_modules_ready
from tests.support.procs import group_members
from tests.support.wait import until
from tests.support.webjs_stub import NO_QR_VERSION, STUB_VERSION, stub_cache

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"
WEBJS_MODULES = Path(__file__).parents[1] / "enginehost/plugins/webjs_bridge/sidecar/node_modules"


def _require_browser() -> None:
    missing = []
    if not node_modules_ready() or not (WEBJS_MODULES / "whatsapp-web.js").is_dir():
        missing.append("the bridges' node_modules (make bridges)")
    if shutil.which("chromium") is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class Browsers:
    api: ApiHarness
    client: httpx.AsyncClient
    plugin: WebjsPlugin
    profiles: Path

    async def session(self, session_id: str) -> dict[str, Any]:
        return dict((await self.client.get(f"/api/sessions/{session_id}")).json())

    async def create(self, name: str = "alpha") -> str:
        response = await self.client.post(
            "/api/sessions", json={"name": name, "engine": "webjs", "start": True}
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    async def qr(self, session_id: str, within: float = 60) -> str:
        found: dict[str, Any] = {}

        async def shown() -> bool:
            answer = await self.client.get(f"/api/sessions/{session_id}/qr")
            if answer.status_code == 200 and answer.json().get("qr"):
                found.update(answer.json())
                return True
            return False

        try:
            await until(shown, within=within, poll=0.1)
        except TimeoutError:
            raise AssertionError(f"no QR: {await self.session(session_id)}") from None
        return str(found["qr"])

    def browser_groups(self) -> list[int]:
        pool = self.plugin.pool
        if pool is None:
            return []
        return sorted(
            pgid for member in pool._members for pgid in member.process.child_process_groups
        )


@asynccontextmanager
async def browsers(tmp_path: Path, **config: Any) -> AsyncIterator[Browsers]:
    _require_browser()
    profiles = tmp_path / "profiles"
    blob = {
        "session_data_path": str(profiles),
        "web_version": STUB_VERSION,
        "web_version_cache_dir": str(stub_cache(tmp_path / "cache")),
        "chromium_args": [OFFLINE],
        "init_timeout_ms": 30_000,
        **config,
    }
    async with api_harness(
        tmp_path,
        entry_points=(SANDBOX, WEBJS),
        engines={"webjs": blob},
        reconnect_base=0.2,
        reconnect_cap=2.0,
    ) as api:
        plugin = api.state.plugins.engine_plugin("webjs")
        assert isinstance(plugin, WebjsPlugin)
        yield Browsers(api, api.client(api.admin_secret), plugin, profiles)


async def test_launch_shows_the_librarys_qr_and_stop_leaves_no_browser(tmp_path: Path) -> None:
    async with browsers(tmp_path) as b:
        session_id = await b.create()
        qr = await b.qr(session_id)
        assert qr.startswith("stub-ref-")
        [group] = b.browser_groups()
        assert len(group_members(group)) >= 3  # a browser is a dozen processes
        assert (b.profiles / f"session-{session_id}").is_dir()
        stopped = await b.client.post(f"/api/sessions/{session_id}/stop")
        assert stopped.status_code == 200
        await until(lambda: group_members(group) == [], within=15)
        # Stop keeps the profile (a restart would skip the QR).
        assert (b.profiles / f"session-{session_id}").is_dir()


async def test_a_sigkilled_sidecar_leaves_no_browser_and_the_session_comes_back(
    tmp_path: Path,
) -> None:
    async with browsers(tmp_path) as b:
        session_id = await b.create()
        await b.qr(session_id)
        [group] = b.browser_groups()
        [sidecar] = b.plugin.sidecar_pids()
        os.kill(sidecar, signal.SIGKILL)
        # puppeteer starts Chromium detached: only the host's kill ends it now.
        await until(lambda: group_members(group) == [], within=15)

        async def new_browser() -> bool:
            groups = b.browser_groups()
            return groups != [] and groups != [group]

        await until(new_browser, within=60, poll=0.1)
        await b.qr(session_id)
        assert b.plugin.sidecar_pids() != [sidecar]


async def test_offline_navigation_is_a_clear_transient_error(tmp_path: Path) -> None:
    # No local page: the library navigates to WhatsApp Web, which cannot resolve here.
    async with browsers(tmp_path, web_version_cache_dir="") as b:
        session_id = await b.create()

        async def failed_clearly() -> bool:
            session = await b.session(session_id)
            reasons = " ".join(entry.get("reason") or "" for entry in session["statusHistory"])
            # net::ERR_NAME_NOT_RESOLVED here; ERR_INTERNET_DISCONNECTED on other hosts.
            return "net::ERR_" in reasons and "reconnecting" in reasons

        await until(failed_clearly, within=60, poll=0.2)
        session = await b.session(session_id)
        assert session["desiredState"] == "running"


async def test_a_browser_that_never_shows_a_qr_is_closed_by_the_deadline(
    tmp_path: Path,
) -> None:
    async with browsers(tmp_path, web_version=NO_QR_VERSION, init_timeout_ms=3_000) as b:
        session_id = await b.create()

        async def timed_out() -> bool:
            history = (await b.session(session_id))["statusHistory"]
            return any("INIT_TIMEOUT" in (entry.get("reason") or "") for entry in history)

        await until(timed_out, within=60, poll=0.2)


async def test_a_second_launch_on_a_live_profile_is_refused(tmp_path: Path) -> None:
    async with browsers(tmp_path) as b:
        session_id = await b.create()
        await b.qr(session_id)
        # Another host (its own plugin and sidecar) on the same profiles folder.
        other = WebjsPlugin(dict(b.plugin.construction_config.model_dump()), data_dir=tmp_path)
        other._services = b.plugin._services
        engine = other.create_engine(SessionInfo(id=session_id, name="alpha"))
        events: list[object] = []

        async def sink(event: object) -> None:
            events.append(event)

        async with anyio.create_task_group() as tg:
            with pytest.raises(EngineError, match="profile_in_use"):
                await engine.start(sink, tg)
        await other.disable()
        # The first browser is untouched.
        assert len(b.browser_groups()) == 1


async def test_the_operators_paths_are_used_even_when_enable_failed(tmp_path: Path) -> None:
    _require_browser()
    # A Chromium wrapper that cannot say its version (so enable fails) but launches
    # the real browser, and records that it was the one launched.
    launched = tmp_path / "launched"
    wrapper = tmp_path / "operator-chromium"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do [ "$arg" = --version ] && exit 3; done\n'
        f'echo launched >> "{launched}"\n'
        f'exec "{shutil.which("chromium")}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    profiles = tmp_path / "operator-profiles"
    async with browsers(
        tmp_path, executable_path=str(wrapper), session_data_path=str(profiles)
    ) as b:
        record = b.api.state.plugins.engines["webjs"]
        assert record.status is PluginStatus.RETRYING
        session_id = await b.create()
        await b.qr(session_id)
        assert launched.read_text().strip() == "launched"
        assert (profiles / f"session-{session_id}").is_dir()
