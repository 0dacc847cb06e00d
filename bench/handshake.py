"""handshake: a spawned managed_child's first run and its hub's enroll + first heartbeat, until
the parent shows it `active`, with process and VM boot left out.

Measured (the figure with the target): the product's own code run in this process with every
process it needs already up, so nothing is timed that is start-up:
  agent   `child_agent.first_run.first_run()` on the fw_cfg tree the manual provisioner staged:
          payload, key, CSR, accept over HTTPS pinned to the payload's CA, identity and result files
  hub     `bootstrap.ingest_first_run()` (reciprocal peer row, child-side grant) and one
          `bootstrap.sync_with_parent()` tick (mTLS enroll + heartbeat), on the child's embedded
          PostgreSQL/Redis already started and migrated; this is what the child hub's worker runs
          first thing when it starts
  parent  one operator API call on the parent answering `status: active`
Left out: interpreter start of agent and child hub, initdb/start of the child's PostgreSQL and
Redis, migrations, uvicorn/arq start-up.

Cross-check on the real path: one child booted by the `local` provisioner. From its console.log,
read as it is written: handshake = (first run, minus the agent's interpreter start) + (the child
hub's worker start → the parent's `activated_at`); the child hub's start-up in between is left out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from bench.common import ROOT, Result, median, running_hub, workdir
from child_agent.first_run import FirstRunOptions, first_run
from hub import migrate
from hub.config import DatabaseSettings, RedisSettings, Settings
from hub.embedded.services import EmbeddedServices
from hub.federation import bootstrap
from hub.localhub import LocalHub
from hub.runtime import HubRuntime

ROUNDS = 5
WARMUP_ROUNDS = 1  # the first tick in this process imports and builds what a child hub has at start
TARGET_STARTUP_RATIO = 1.0  # handshake / the agent's and child hub's own start-up
FAST = {
    "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "1",
    "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "5",
}


@dataclass
class Round:
    agent: float
    ingest: float
    sync: float
    confirm: float

    @property
    def total(self) -> float:
        return self.agent + self.ingest + self.sync + self.confirm


@contextmanager
def quiet(logger: str) -> Iterator[None]:
    """The child runtimes opened here log what a child hub would (its secret store warning)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def child_settings(base: Path, services: EmbeddedServices, result_file: Path) -> Settings:
    return Settings(
        data_dir=base / "data",
        public_url="http://127.0.0.1:9",
        first_run_result=result_file,
        database=DatabaseSettings(url=SecretStr(services.database_url)),
        redis=RedisSettings(url=SecretStr(services.redis_url)),
    )


def _spawn(parent: LocalHub) -> tuple[str, Path]:
    """A managed_child; its id and the fw_cfg tree the manual provisioner staged."""
    data = parent.spawn("managed_child")
    details = data["child"]["node_instance"]["details"]
    return data["child"]["id"], Path(details["payload_file"]).parent / "by_name"


async def one_round(parent: LocalHub, services: EmbeddedServices, base: Path) -> Round:
    child_id, fw_cfg = _spawn(parent)
    state = base / "agent"
    runtime = await HubRuntime.open(child_settings(base, services, state / "first-run-result.json"))
    options = FirstRunOptions(fw_cfg_root=fw_cfg, state_dir=state, max_wait=30)
    try:
        async with httpx.AsyncClient(base_url=parent.url, headers=parent.headers, timeout=30) as api:
            began = time.perf_counter()
            await asyncio.to_thread(first_run, options)
            agent_done = time.perf_counter()
            await bootstrap.ingest_first_run(runtime)
            ingested = time.perf_counter()
            answer = await bootstrap.sync_with_parent(runtime)
            synced = time.perf_counter()
            shown = (await api.get(f"{ROOT}/federation/children/{child_id}")).json()["data"]["child"]
            confirmed = time.perf_counter()
    finally:
        await runtime.close()
    if answer != "active" or shown["status"] != "active":
        raise RuntimeError(
            f"child {child_id}: heartbeat answered {answer!r}, parent shows {shown['status']!r}"
        )
    return Round(agent_done - began, ingested - agent_done, synced - ingested, confirmed - synced)


@dataclass
class Console:
    """Each console.log line with the wall-clock time it appeared (polled every 5 ms)."""

    path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        offset, partial = 0, ""
        while not self._stop.is_set():
            if self.path.exists():
                with self.path.open() as log:
                    log.seek(offset)
                    chunk = log.read()
                    offset = log.tell()
                now = time.time()
                *complete, partial = (partial + chunk).split("\n")
                self.lines.extend((now, line) for line in complete)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()

    def first(self, needle: str) -> tuple[float, str]:
        for seen, line in self.lines:
            if needle in line:
                return seen, line
        raise RuntimeError(f"{self.path} has no line with {needle!r}")


def _logged_at(line: str) -> float:
    """The timestamp a child hub's log line carries (JSON `time`, or the text format's asctime)."""
    if line.startswith("{"):
        return datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def real_path(parent: LocalHub) -> dict[str, float]:
    """One child through the local provisioner; the handshake and the start-ups it excludes."""
    data = parent.spawn("managed_child")
    child_id = data["child"]["id"]
    console = Console(Path(data["child"]["node_instance"]["details"]["work_dir"]) / "console.log")
    follower = threading.Thread(target=console.follow, daemon=True)
    follower.start()
    try:
        child: dict[str, Any] = parent.wait_for(child_id, "active", timeout=120)
    finally:
        time.sleep(0.05)  # the last lines reach the file a moment after the parent shows active
        console.stop()
        follower.join()
    boot, _ = console.first("[boot] first run")
    agent_ready, _ = console.first("accepting with the parent")
    hub_exec, _ = console.first("[boot] starting the child hub")
    worker = _logged_at(console.first("Starting worker")[1])
    active = datetime.fromisoformat(child["activated_at"].replace("Z", "+00:00")).timestamp()
    return {
        "agent_startup": agent_ready - boot,
        "agent_work": hub_exec - agent_ready,
        "hub_startup": worker - hub_exec,
        "enroll_to_active": active - worker,
        "handshake": (hub_exec - agent_ready) + (active - worker),
        "total": active - boot,
    }


def run() -> Result:
    result = Result("handshake")
    base = workdir("handshake")
    with running_hub(base / "parent", FAST | {"POWERNODE_PROVISIONER": "manual"}) as parent:
        with EmbeddedServices(base / "child-services") as services:
            asyncio.run(migrate.upgrade(services.database_url))
            with quiet("hub"):
                rounds = [
                    asyncio.run(one_round(parent, services, base / f"child{i}"))
                    for i in range(WARMUP_ROUNDS + ROUNDS)
                ][WARMUP_ROUNDS:]
    result.say(
        "definition: agent first_run() + child hub ingest_first_run() + one sync_with_parent() tick "
        "(mTLS enroll + heartbeat) + the parent's operator API showing `active`; run in-process with "
        f"every process already up (no interpreter, PostgreSQL, Redis, uvicorn or arq start-up); "
        f"{WARMUP_ROUNDS} warm-up round not counted"
    )
    for i, r in enumerate(rounds):
        result.say(
            f"round {i + 1}: {r.total * 1000:6.0f} ms = agent {r.agent * 1000:.0f} + ingest "
            f"{r.ingest * 1000:.0f} + enroll/heartbeat {r.sync * 1000:.0f} + parent shows active "
            f"{r.confirm * 1000:.0f}"
        )
    totals = [r.total for r in rounds]
    result.say(
        f"median {median(totals) * 1000:.0f} ms, worst {max(totals) * 1000:.0f} ms over {ROUNDS} rounds"
    )
    with running_hub(base / "parent-local", FAST) as parent:
        real = real_path(parent)
    result.say(
        f"real path (local provisioner, one child): spawn→active {real['total']:.2f}s; handshake "
        f"{real['handshake']:.2f}s = agent work {real['agent_work']:.2f}s + worker start→parent "
        f"activated_at {real['enroll_to_active']:.2f}s; left out: agent interpreter start "
        f"{real['agent_startup']:.2f}s, child hub start-up {real['hub_startup']:.2f}s"
    )
    startup = real["agent_startup"] + real["hub_startup"]
    result.ratio("handshake (median of rounds) / start-up", median(totals), startup, TARGET_STARTUP_RATIO,
                 at_least=False, unit="s", baseline_name="programs' start-up")  # fmt: skip
    result.ratio("handshake (real path) / start-up", real["handshake"], startup, TARGET_STARTUP_RATIO,
                 at_least=False, unit="s", baseline_name="programs' start-up")  # fmt: skip
    return result
