"""Looking at processes through /proc, for tests and benchmarks (Linux only).

Zombies count as gone: on a machine whose PID 1 does not reap orphans, a killed
process can stay a zombie for good.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["alive", "children", "command_line", "group_members", "pss"]


def _stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid``."""
    return [pid for pid, fields in _stats() if int(fields[2]) == pgid and fields[0] != "Z"]


def children(pid: int) -> list[int]:
    """The running processes whose parent is ``pid``."""
    return [child for child, fields in _stats() if int(fields[1]) == pid and fields[0] != "Z"]


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces."""
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def pss(pid: int) -> int:
    """The proportional set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0
