"""Node sidecars for bridge plugins: the package, one process, and a supervised pool.

A *bridge* is an engine plugin that drives a Node.js WhatsApp library in separate
processes (sidecars) speaking the JSON-lines protocol of ``docs/sidecar-protocol.md``.
This package is the public toolkit bridges are built from; the host's core does not
use it.
"""

from enginehost.sidecar.engine import ConnectSlots, SidecarEngine, epoch_time
from enginehost.sidecar.package import InstallError, NodeRuntime, SidecarPackage, probe_node
from enginehost.sidecar.pool import SessionLink, SidecarLease, SidecarPool, SidecarSpec
from enginehost.sidecar.process import (
    PROTOCOL_VERSION,
    Hello,
    SidecarError,
    SidecarGoneError,
    SidecarProcess,
    node_environment,
    parent_death_prefix,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ConnectSlots",
    "Hello",
    "InstallError",
    "NodeRuntime",
    "SessionLink",
    "SidecarEngine",
    "SidecarError",
    "SidecarGoneError",
    "SidecarLease",
    "SidecarPackage",
    "SidecarPool",
    "SidecarProcess",
    "SidecarSpec",
    "epoch_time",
    "node_environment",
    "parent_death_prefix",
    "probe_node",
]
