"""Loaded into every pytest session `make mutate` has mutmut start (`-p tests.harness.mutmut_plugin`).

- Two mutants may run at once (`--jobs 2`): each session takes a Redis server of its own, the first
  of `PN_MUTATE_REDIS_URLS` whose lock file it can lock (the lock goes with the process). The
  databases need nothing: their names carry the pid.
- A mutant's tests run fastest first (by the durations mutmut measured), a test module's tests kept
  together, so a killed mutant costs little more than its quickest failing test.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

_held: list[Any] = []


def pytest_configure(config: Any) -> None:
    urls = os.environ.get("PN_MUTATE_REDIS_URLS")
    # mutmut's fork server only collects (and must not hold a lock its children inherit)
    if not urls or _held or config.option.collectonly:
        return
    for index, url in enumerate(urls.split()):
        lock = open(Path(os.environ["PN_MUTATE_LOCKS"]) / f"redis-{index}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held.append(lock)
        os.environ["REDIS_URL"] = url
        return
    raise RuntimeError("make mutate: more test sessions at once than Redis servers")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    try:
        durations: dict[str, float] = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    slowest = max(durations.values(), default=0.0) + 1.0
    cost = {item.nodeid: durations.get(item.nodeid, slowest) for item in items}
    modules: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        modules[module] = min(modules.get(module, slowest), cost[item.nodeid])
    items.sort(
        key=lambda item: (modules[item.nodeid.split("::")[0]], item.nodeid.split("::")[0], cost[item.nodeid])
    )
