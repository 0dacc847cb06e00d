"""Whose CPU a measurement window used: ours (this run's processes) or other work on the machine.

These 2-core machines are shared; a figure taken while someone else's test suite runs is low for
reasons that have nothing to do with the code, so every measured window reports the foreign load.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import BENCH_ROOT

_TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[int, int, float]]:
    """(pid, ppid, cpu seconds) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(entry.name), int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _ours(pids: dict[int, int]) -> set[int]:
    """This process, its descendants, and whatever works inside `.bench/` (PostgreSQL, Redis)."""
    mine = {os.getpid()}
    for pid in pids:
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd == BENCH_ROOT or BENCH_ROOT in cwd.parents:
            mine.add(pid)
    changed = True
    while changed:
        children = {pid for pid, parent in pids.items() if parent in mine} - mine
        mine |= children
        changed = bool(children)
    return mine


def _reaped_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    seconds: float = 0.0
    ours: float = 0.0
    foreign: float = 0.0
    watched: float = 0.0  # the one process asked about (a hub), included in `ours`

    @property
    def foreign_share(self) -> float:
        """Other work on the machine, as a share of all its cores over the window."""
        return self.foreign / (self.seconds * (os.cpu_count() or 1)) if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"CPU: ours {self.ours:.1f}s, other work on this machine {self.foreign:.1f}s "
            f"({self.foreign_share:.0%} of {os.cpu_count()} cores over {self.seconds:.1f}s)"
        )


@contextmanager
def cpu_window(watch: int | None = None) -> Iterator[CpuWindow]:
    """CPU seconds used while the block ran, split into ours and foreign; `watch`: a pid of ours
    whose own CPU is also reported (a hub's event loop is what a figure is usually bound by)."""
    window = CpuWindow()
    before = {pid: (ppid, cpu) for pid, ppid, cpu in _processes()}
    reaped = _reaped_children()
    began = time.monotonic()
    yield window
    window.seconds = time.monotonic() - began
    window.ours += _reaped_children() - reaped  # tools that ran and exited within the window (wrk)
    after = {pid: (ppid, cpu) for pid, ppid, cpu in _processes()}
    mine = _ours({pid: ppid for pid, (ppid, _) in after.items()})
    for pid, (_, cpu) in after.items():
        used = cpu - before.get(pid, (0, 0.0))[1]
        if pid == watch:
            window.watched = used
        if pid in mine:
            window.ours += used
        else:
            window.foreign += used
