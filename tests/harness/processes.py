"""Finding the processes a test started, by what they work in: their working directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hub.embedded.process import pid_alive, process_cwd, wait_until


def processes_in(directory: Path) -> list[int]:
    """Live pids whose working directory is `directory` or below (PostgreSQL and Redis chdir
    into their data dirs)."""
    root = directory.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_alive(int(entry.name)):
            continue
        cwd = process_cwd(int(entry.name))
        if cwd is not None and (cwd == root or root in cwd.parents):
            found.append(int(entry.name))
    return found


def kill_9(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10)
