"""``enginehost bridges``: install and check the Node sidecars of bridge engines.

A bridge is an engine plugin whose class has a ``sidecar_package``
(:class:`~enginehost.sidecar.SidecarPackage`). The commands find bridges the way the
daemon does, through the plugins' entry points, so a third-party bridge is installed
and checked like the built-in ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from enginehost.core.settings import Settings
    from enginehost.sidecar import NodeRuntime, SidecarPackage

bridges_app = typer.Typer(
    help="Install and check the Node sidecars of the bridge engines (baileys, ...).",
    no_args_is_help=True,
)


@dataclass(frozen=True, slots=True)
class _Bridge:
    engine: str
    package: SidecarPackage
    fallback_dir: Path
    node_path: str
    own_checks: Callable[[], list[str]]
    """The bridge's own checks (a browser, say): problems, empty when fine."""


def _bridges(settings: Settings) -> list[_Bridge]:
    from enginehost.core.logging import silence_logging
    from enginehost.core.plugins import PluginHost
    from enginehost.sidecar import SidecarPackage

    silence_logging()
    plugins = PluginHost(settings, data_dir=settings.data_dir.expanduser().absolute())
    plugins.load()
    found = []
    for name, record in sorted(plugins.engines.items()):
        instance = record.instance
        package = getattr(instance, "sidecar_package", None)
        if instance is None or not isinstance(package, SidecarPackage):
            continue
        fallback = getattr(instance, "install_fallback_dir", instance.data_dir / "sidecar")
        node_path = getattr(instance.construction_config, "node_path", "node")
        checks = getattr(instance, "doctor_problems", None)
        found.append(
            _Bridge(
                name,
                package,
                Path(fallback),
                str(node_path),
                checks if callable(checks) else (lambda: []),
            )
        )
    return found


def _select(
    bridges: list[_Bridge], names: list[str] | None, fail: Callable[[str], Any]
) -> list[_Bridge]:
    if not names:
        return bridges
    known = {bridge.engine: bridge for bridge in bridges}
    unknown = [name for name in names if name not in known]
    if unknown:
        fail(f"unknown bridge {', '.join(unknown)}; bridges: {', '.join(known) or 'none'}")
    return [known[name] for name in names]


def _runtime_line(runtime: NodeRuntime) -> str:
    node = f"node {runtime.node_version} ({runtime.node})" if runtime.node else "node: not found"
    npm = f"npm {runtime.npm_version} ({runtime.npm})" if runtime.npm else "npm: not found"
    return f"{node}; {npm}"


NamesArgument = Annotated[
    list[str] | None, typer.Argument(help="Bridge engine names (default: every bridge).")
]


@bridges_app.command("install")
def bridges_install(names: NamesArgument = None) -> None:
    """Install each bridge's Node dependencies with `npm ci` from its committed lock file.

    Dependencies go into the bridge's package directory when it is writable, else into
    `<data dir>/engines/<name>/sidecar`. Safe to repeat. Exits 1 when one failed.
    """
    from enginehost.cli import _fail, _settings
    from enginehost.sidecar import InstallError, probe_node

    bridges = _select(_bridges(_settings()), names, _fail)
    failed = 0
    for bridge in bridges:
        runtime = probe_node(bridge.node_path)
        if not runtime.ok:
            typer.echo(f"{bridge.engine}: cannot install: {runtime.problem}", err=True)
            failed += 1
            continue
        typer.echo(f"{bridge.engine}: npm ci ({_runtime_line(runtime)}) ...")
        try:
            where = bridge.package.install(runtime, bridge.fallback_dir)
        except InstallError as exc:
            typer.echo(f"{bridge.engine}: install failed: {exc}", err=True)
            failed += 1
            continue
        version = bridge.package.pinned_version(bridge.package.library)
        typer.echo(f"{bridge.engine}: installed {bridge.package.library} {version} in {where}")
    if not bridges:
        typer.echo("no bridge engines are installed as plugins")
    if failed:
        raise typer.Exit(1)


@bridges_app.command("doctor")
def bridges_doctor(
    names: NamesArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Report Node/npm versions and whether each bridge's dependencies are installed.

    Exits 0 when every bridge can run, 1 otherwise (each problem names its fix).
    """
    from enginehost.cli import _fail, _settings
    from enginehost.sidecar import probe_node

    bridges = _select(_bridges(_settings()), names, _fail)
    report: list[dict[str, Any]] = []
    healthy = True
    for bridge in bridges:
        runtime = probe_node(bridge.node_path)
        installed = bridge.package.installed_dir(bridge.fallback_dir)
        problems = []
        if not runtime.ok:
            problems.append(str(runtime.problem))
        if installed is None:
            missing = bridge.package.problems_in(bridge.package.source_dir)
            problems.append(
                f"dependencies not installed ({missing[0] if missing else 'unknown'}); "
                "run: enginehost bridges install"
            )
        problems.extend(bridge.own_checks())
        healthy = healthy and not problems
        report.append(
            {
                "engine": bridge.engine,
                "library": bridge.package.library,
                "libraryVersion": bridge.package.pinned_version(bridge.package.library),
                "installed": installed is not None,
                "nodeModules": str(installed / "node_modules") if installed else None,
                "runtime": runtime.to_json(),
                "problems": problems,
                "ok": not problems,
            }
        )
    if as_json:
        typer.echo(json.dumps({"bridges": report, "ok": healthy}, indent=2))
    elif not report:
        typer.echo("no bridge engines are installed as plugins")
    else:
        for entry in report:
            versions = entry["runtime"]
            state = "ok" if entry["ok"] else "NOT READY"
            node = versions["nodeVersion"] or "missing"
            npm = versions["npmVersion"] or "missing"
            typer.echo(
                f"{entry['engine']}: {state} — {entry['library']} {entry['libraryVersion']}, "
                f"node {node}, npm {npm}"
            )
            if entry["nodeModules"]:
                typer.echo(f"  dependencies: {entry['nodeModules']}")
            for problem in entry["problems"]:
                typer.echo(f"  problem: {problem}")
    if not healthy:
        raise typer.Exit(1)
