"""Shared fixtures: the anyio backend, a clean environment, and in-tree test plugins."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest

from enginehost.core.plugins import ENTRY_POINT_GROUP, PluginHost
from enginehost.core.settings import Settings, load_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ENGINEHOST_* variable or .env file from the developer's shell leaks into a test."""
    import os

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
