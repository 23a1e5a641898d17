"""A bridge's Node package: where its dependencies live, whether they are installed,
and how to install them (``npm ci`` from the committed lock file).

The package directory ships inside the Python package (``package.json``, the lock file,
the sidecar's JavaScript). Dependencies go into its ``node_modules`` when that
directory is writable (a source checkout); otherwise (a read-only site-packages) the
package files are copied to a writable directory of the engine's and installed there.
An installation counts only when it matches the lock file exactly, so a lock that
changed with an upgrade is reported as "not installed" rather than run half-updated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "InstallError",
    "NodeRuntime",
    "SidecarPackage",
    "probe_node",
]

MINIMUM_NODE_MAJOR = 20
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_PROBE_TIMEOUT = 15.0


class InstallError(Exception):
    """Installing a bridge's dependencies failed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class NodeRuntime:
    """What ``node`` (and the ``npm`` beside it) this host would run sidecars with."""

    node: str | None
    """Absolute path of the node binary, ``None`` when not found."""
    node_version: str | None = None
    npm: str | None = None
    npm_version: str | None = None
    problem: str | None = None
    """Why sidecars cannot run with it (missing, too old), ``None`` when they can."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "nodeVersion": self.node_version,
            "npm": self.npm,
            "npmVersion": self.npm_version,
            "problem": self.problem,
        }


def _version_of(command: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    output = done.stdout.strip()
    return output if done.returncode == 0 and output else None


def probe_node(node_path: str = "node") -> NodeRuntime:
    """Find ``node_path`` (a name on PATH or a path) and the npm beside it, with versions.

    Blocking (runs ``node --version``): call it from a worker thread in async code.
    """
    node = shutil.which(node_path)
    if node is None:
        return NodeRuntime(
            node=None,
            problem=f"Node.js was not found ({node_path!r}); install Node.js "
            f"{MINIMUM_NODE_MAJOR} or newer, or set the bridge's node_path",
        )
    node = str(Path(node).absolute())
    version = _version_of([node, "--version"])
    # npm beside node first (the same installation), then on PATH.
    beside = Path(node).parent / "npm"
    npm = str(beside) if beside.exists() else shutil.which("npm")
    npm_version = _version_of([npm, "--version"]) if npm else None
    problem = None
    match = _VERSION.match(version or "")
    if version is None or match is None:
        problem = f"{node} --version did not answer with a version"
    elif int(match.group(1)) < MINIMUM_NODE_MAJOR:
        problem = f"Node.js {version} is too old: the bridges need {MINIMUM_NODE_MAJOR} or newer"
    return NodeRuntime(
        node=node, node_version=version, npm=npm, npm_version=npm_version, problem=problem
    )


@dataclass(frozen=True, slots=True)
class SidecarPackage:
    """One bridge's Node package (see the module docstring).

    ``local_packages`` are folders of the package referenced with ``file:`` (copied
    along when installing elsewhere); ``install_env`` is added to npm's environment
    (for example to stop a dependency from downloading a browser).
    """

    bridge: str
    source_dir: Path
    library: str
    """The npm package the bridge exists to run (its version is reported)."""
    entry: str = "sidecar.js"
    local_packages: tuple[str, ...] = ()
    install_env: Mapping[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ where

    def install_dir(self, fallback_dir: Path) -> Path:
        """Where ``install`` puts dependencies: the package directory when writable."""
        return self.source_dir if os.access(self.source_dir, os.W_OK) else fallback_dir

    def installed_dir(self, fallback_dir: Path) -> Path | None:
        """The directory whose ``node_modules`` matches the lock file, if any."""
        for candidate in (self.source_dir, fallback_dir):
            if not self.problems_in(candidate):
                return candidate
        return None

    def node_modules(self, fallback_dir: Path) -> Path | None:
        found = self.installed_dir(fallback_dir)
        return None if found is None else found / "node_modules"

    # ------------------------------------------------------------------ checking

    def lock(self) -> Mapping[str, Any]:
        lock: Mapping[str, Any] = json.loads((self.source_dir / "package-lock.json").read_text())
        return lock

    def pinned_version(self, dependency: str) -> str | None:
        """The version of ``dependency`` the lock file pins (e.g. the library's)."""
        entry = self.lock().get("packages", {}).get(f"node_modules/{dependency}")
        return entry.get("version") if isinstance(entry, dict) else None

    def problems_in(self, directory: Path) -> list[str]:
        """Why ``directory/node_modules`` does not match the lock file (empty: it does).

        npm ci records the tree it installed in ``node_modules/.package-lock.json``;
        every package of the lock must be there at its locked version.
        """
        hidden = directory / "node_modules" / ".package-lock.json"
        if not hidden.is_file():
            return [f"dependencies are not installed in {directory / 'node_modules'}"]
        try:
            installed = json.loads(hidden.read_text()).get("packages", {})
            wanted = self.lock().get("packages", {})
        except (OSError, ValueError) as exc:
            return [f"cannot read the installed package list: {exc}"]
        problems = []
        for name, entry in wanted.items():
            if not name.startswith("node_modules/") or not isinstance(entry, dict):
                continue
            if entry.get("optional") or entry.get("peer"):
                continue
            have = installed.get(name)
            if not isinstance(have, dict):
                problems.append(f"{name.removeprefix('node_modules/')} is missing")
            elif have.get("version") != entry.get("version"):
                problems.append(
                    f"{name.removeprefix('node_modules/')} is {have.get('version')}, "
                    f"the lock wants {entry.get('version')}"
                )
        return problems[:10]

    # ------------------------------------------------------------------ installing

    def install(self, runtime: NodeRuntime, fallback_dir: Path, *, timeout: float = 600) -> Path:
        """Run ``npm ci`` (dependencies from the lock file only) and return the directory.

        Raises :class:`InstallError` with npm's own last lines when it fails.
        """
        if runtime.npm is None:
            raise InstallError(
                "npm was not found; install Node.js (with npm) "
                f"{MINIMUM_NODE_MAJOR} or newer, then run: enginehost bridges install"
            )
        target = self.install_dir(fallback_dir)
        if target != self.source_dir:
            self._copy_package_files(target)
        env = {**os.environ, **self.install_env}
        if runtime.node is not None:
            # npm runs lifecycle scripts with the node it finds first on PATH.
            env["PATH"] = f"{Path(runtime.node).parent}{os.pathsep}{env.get('PATH', '')}"
        command = [runtime.npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"]
        try:
            done = subprocess.run(
                command,
                cwd=target,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"npm ci in {target} took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise InstallError(f"could not run {runtime.npm}: {exc}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise InstallError(f"npm ci in {target} failed (exit {done.returncode}):\n{tail}")
        problems = self.problems_in(target)
        if problems:
            raise InstallError(f"npm ci finished but {target} is incomplete: {'; '.join(problems)}")
        return target

    def _copy_package_files(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(self.source_dir / name, target / name)
        for folder in self.local_packages:
            destination = target / folder
            if destination.exists():
                shutil.rmtree(destination)
            shutil.copytree(self.source_dir / folder, destination)
