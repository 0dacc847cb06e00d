"""`make chaos`: kill -9 the parent's parts under load and check that everything converges.

A parent hub on the embedded default (its own PostgreSQL and Redis), one extra `worker` process,
and children in all three modes booted by the `local` provisioner. A load thread keeps spawning
manually attached children, redeeming their tokens (and trying each token a second time), and
revoking them; the main loop keeps one booted child per mode, replacing the oldest each round
(spawn, wait for `active`, revoke the old one), and between rounds injects one fault:

  hub       kill -9 `serve` (its PostgreSQL and Redis stay up), then start it again
  worker    kill -9 the extra worker, then start it again
  redis     kill -9 the embedded Redis (the hub starts it again)
  postgres  kill -9 the postmaster (the hub starts it again)
  parent    kill -9 serve, worker, PostgreSQL and Redis at once, then start serve and worker again

After each fault, the invariants are polled until they all hold (the recovery time) or until
CHAOS_RECOVERY_SECONDS pass (a break). At the end: what was injected, recovery times (median,
worst) per fault, every broken invariant; the exit status is 1 if one broke.

Settings (environment): CHAOS_SECONDS (600), CHAOS_RECOVERY_SECONDS (240), CHAOS_DIR (a temp dir,
removed afterwards unless CHAOS_KEEP=1). Only processes it started are touched: the parent's
`serve`, its worker, the parent's PostgreSQL and Redis (by the pids in their data dirs) and the
children's "VMs" (halted through the local provisioner's own halt).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import pid_alive, process_cwd, wait_until
from hub.embedded.redis import RedisServer
from hub.localhub import API, LocalHub, halt_node, hub_command, hub_env
from hub.replication.credentials import PREFIX, SECRET_ROOT, ReplicaNames

DURATION = float(os.environ.get("CHAOS_SECONDS", "600"))
RECOVERY = float(os.environ.get("CHAOS_RECOVERY_SECONDS", "240"))
FAST = {
    "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "1",
    "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "2",
    "POWERNODE_FEDERATION_HEARTBEAT_STALE_SECONDS": "8",
    "POWERNODE_LOG_LEVEL": "WARNING",
}
TEMPLATES = {
    "managed_child": "powernode-hub",
    "autonomous_peer": "powernode-hub",
    "cluster_member": "powernode-hub-cluster-member",
}
FAULTS = ["hub", "worker", "redis", "postgres", "parent"]
ACCEPT = "/api/v1/system/federation_api/accept"


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Child:
    id: str
    mode: str
    node_dir: Path | None
    spawned_at: float
    active: bool = False
    revoked: bool = False


@dataclass
class Ledger:
    """What the driver was told: every answered request, so its effect can be checked."""

    children: dict[str, Child] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)  # manual children whose accept answered 200
    breaks: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)
    to_halt: list[tuple[float, Path]] = field(default_factory=list)

    def broke(self, message: str) -> None:
        with self.lock:
            self.breaks.append(message)
        say(f"BROKEN: {message}")


class Parent:
    def __init__(self, root: Path) -> None:
        self.hub = LocalHub(root / "parent")
        self.data_dir = self.hub.data_dir
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = root / "worker.log"

    @property
    def postgres(self) -> PostgresServer:
        return PostgresServer(self.data_dir / "postgres")

    @property
    def redis(self) -> RedisServer:
        return RedisServer(self.data_dir / "redis")

    def start_hub(self) -> None:
        (self.data_dir / "serve.json").unlink(missing_ok=True)  # a killed hub leaves it behind
        self.hub.start(FAST, timeout=300)

    def start_worker(self) -> None:
        env = hub_env(
            FAST
            | {
                "DATABASE_URL": self.postgres.url("powernode"),
                "REDIS_URL": self.redis.url(),
                "POWERNODE_DATA_DIR": str(self.data_dir),
            }
        )
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                [*hub_command(), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def hub_pid(self) -> int | None:
        return self.hub.process.pid if self.hub.process and self.hub.process.poll() is None else None

    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker and self.worker.poll() is None else None

    def postgres_pids(self) -> list[int]:
        """The postmaster and its backends: the live processes working in the cluster's dir."""
        root = self.postgres.data_dir.resolve()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and pid_alive(int(entry.name)) and process_cwd(int(entry.name)) == root:
                pids.append(int(entry.name))
        return pids

    def ready(self) -> bool:
        try:
            return httpx.get(self.hub.url + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGINT)
            try:
                self.worker.wait(60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.hub.stop()


def kill_9(pids: list[int | None]) -> list[int]:
    killed = []
    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    wait_until(lambda: not any(pid_alive(p) for p in killed), 30)
    return killed


def inject(parent: Parent, fault: str) -> None:
    if fault == "hub":
        kill_9([parent.hub_pid()])
        parent.hub.process = None
        parent.start_hub()
    elif fault == "worker":
        kill_9([parent.worker_pid()])
        parent.start_worker()
    elif fault == "redis":
        kill_9([parent.redis.pid()])
    elif fault == "postgres":
        kill_9([parent.postgres.pid()])
    elif fault == "parent":
        kill_9([parent.hub_pid(), parent.worker_pid(), parent.redis.pid(), *parent.postgres_pids()])
        parent.hub.process = None
        parent.start_hub()
        parent.start_worker()


class Load(threading.Thread):
    """Steady operator and federation traffic: manual spawns, accepts (each token twice), revokes."""

    def __init__(self, parent: Parent, ledger: Ledger) -> None:
        super().__init__(daemon=True)
        self.parent, self.ledger = parent, ledger
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=20) as http:
            while not self.stopping.is_set():
                try:
                    self.round(http)
                except (httpx.HTTPError, OSError):
                    self.ledger.counts["load: no answer (connection refused or reset)"] += 1
                self.stopping.wait(0.5)

    def call(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self.parent.hub.headers if not path.startswith(ACCEPT) else {}
        response = http.request(method, self.parent.hub.url + path, headers=headers, **kwargs)
        kind = f"load: {path.rstrip('/').split('/')[-1]}"
        self.ledger.counts[f"{kind} {response.status_code}"] += 1
        if response.status_code >= 500 and response.status_code != 503:
            self.ledger.broke(f"{method} {path} answered {response.status_code}: {response.text[:200]}")
        return response

    def round(self, http: httpx.Client) -> None:
        mode = random.choice(["managed_child", "autonomous_peer"])  # noqa: S311 - not a secret
        body = {
            "spawn_mode": mode,
            "parent_url": self.parent.hub.federation_url,
            "spawn_target": {"template_id": TEMPLATES[mode], "manual_attach": True},
        }
        spawned = self.call(http, "POST", f"{API}/children/spawn", json=body)
        if spawned.status_code != 201:
            return
        data = spawned.json()["data"]
        child_id, token = data["child"]["id"], data["acceptance_token"]
        with self.ledger.lock:
            self.ledger.children[child_id] = Child(child_id, mode, None, time.monotonic())
        accept = {"acceptance_token": token, "contract_version": 1}
        first = self.call(http, "POST", ACCEPT, json=accept)
        if first.status_code == 200:
            with self.ledger.lock:
                self.ledger.accepted.add(child_id)
            second = self.call(http, "POST", ACCEPT, json=accept)
            if second.status_code == 200:
                self.ledger.broke(f"the token of {child_id} was accepted twice")
        revoked = self.call(http, "POST", f"{API}/children/{child_id}/revoke", json={})
        if revoked.status_code == 200:
            with self.ledger.lock:
                self.ledger.children[child_id].revoked = True


async def invariants(parent: Parent, ledger: Ledger) -> tuple[list[str], bool]:
    """Every invariant that does not hold right now (empty: all hold); whether there is an outbox."""
    problems: list[str] = []
    connection = await asyncpg.connect(parent.postgres.url("powernode"), timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT id::text, status, spawn_mode FROM federation_peer WHERE spawn_role = 'parent'"
        )
        slots = {
            r["slot_name"]: r["active"]
            for r in await connection.fetch(
                "SELECT slot_name, active FROM pg_replication_slots WHERE starts_with(slot_name, $1)", PREFIX
            )
        }
        roles = {
            r["rolname"]
            for r in await connection.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", PREFIX
            )
        }
        consumed = {
            r["peer_id"]
            for r in await connection.fetch(
                "SELECT peer_id::text FROM acceptance_token WHERE consumed_at IS NOT NULL"
            )
        }
        outbox = await _outbox(connection)
        problems += outbox or []
    finally:
        await connection.close()
    status = {r["id"]: r["status"] for r in rows}
    with ledger.lock:
        children = list(ledger.children.values())
        accepted = set(ledger.accepted)
    live_members = set()
    for child in children:
        found = status.get(child.id)
        if found is None:
            problems.append(f"child {child.id} ({child.mode}) was answered 201 but has no row")
            continue
        if child.revoked:
            if found != "revoked":
                problems.append(f"child {child.id} was revoked (200) but is {found}")
            continue
        if child.node_dir is not None and child.active and found != "active":
            problems.append(f"live child {child.id} ({child.mode}) is {found}, not active")
        if child.id in accepted and child.id not in consumed:
            problems.append(f"child {child.id}'s accept answered 200 but its token is not spent")
        if child.mode == "cluster_member" and child.active:
            live_members.add(child.id)
            names = ReplicaNames.of(uuid.UUID(child.id))
            if names.slot not in slots:
                problems.append(f"member {child.id} has no replication slot")
            elif not slots[names.slot]:
                problems.append(f"member {child.id}'s standby is not streaming (slot inactive)")
            if names.role not in roles:
                problems.append(f"member {child.id} has no replication role")
    known_members = {c.id for c in children if c.mode == "cluster_member" and not c.revoked}
    allowed_slots = {ReplicaNames.of(uuid.UUID(i)).slot for i in known_members}
    allowed_roles = {ReplicaNames.of(uuid.UUID(i)).role for i in known_members}
    for slot in set(slots) - allowed_slots:
        problems.append(f"slot {slot} belongs to no live member")
    for role in roles - allowed_roles:
        problems.append(f"role {role} belongs to no live member")
    secrets_dir = parent.data_dir / "secrets" / SECRET_ROOT
    stored = (
        {p.name.removesuffix(".enc") for p in secrets_dir.glob("*.enc")} if secrets_dir.exists() else set()
    )
    for orphan in stored - known_members:
        problems.append(f"replication secret of {orphan} is an orphan (no live member)")
    for member in live_members - stored:
        problems.append(f"member {member} has no replication secret")
    return problems, outbox is not None


async def _outbox(connection: asyncpg.Connection) -> list[str] | None:
    """No job left behind in the transactional outbox; None when the schema has none."""
    table = await connection.fetchval(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '%outbox%' LIMIT 1"
    )
    if table is None:
        return None
    columns = {
        r["column_name"]
        for r in await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
    }
    done = next((c for c in ("done_at", "dispatched_at", "sent_at", "relayed_at") if c in columns), None)
    if done is None:
        return []
    waiting = await connection.fetchval(f'SELECT count(*) FROM "{table}" WHERE "{done}" IS NULL')  # noqa: S608
    return [f"{waiting} job(s) still waiting in the outbox"] if waiting else []


def queue_backlog(parent: Parent) -> list[str]:
    """Without an outbox: no job older than a minute sits in the arq queues."""
    import redis

    client = redis.Redis.from_url(parent.redis.url(), socket_timeout=5)
    try:
        cutoff = (time.time() - 60) * 1000
        queues = ("powernode:queue", "powernode:queue:primary")
        stale = sum(cast(int, client.zcount(q, 0, cutoff)) for q in queues)
    except redis.RedisError as e:
        return [f"Redis does not answer: {type(e).__name__}"]
    finally:
        client.close()
    return [f"{stale} job(s) waiting in the arq queues for over a minute"] if stale else []


def check(parent: Parent, ledger: Ledger) -> list[str]:
    try:
        problems, has_outbox = asyncio.run(invariants(parent, ledger))
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        return [f"the parent's database does not answer: {type(e).__name__}"]
    if not parent.ready():
        problems.append("the parent's /readyz is not 200")
    return problems + ([] if has_outbox else queue_backlog(parent))


def converge(parent: Parent, ledger: Ledger, started: float) -> tuple[float | None, list[str]]:
    """Poll the invariants until they hold; (seconds since `started`, []) or (None, what failed)."""
    problems: list[str] = []
    while time.monotonic() - started < RECOVERY:
        boot_children(parent, ledger)
        problems = check(parent, ledger)
        if not problems:
            return time.monotonic() - started, []
        time.sleep(1)
    return None, problems


def boot_children(parent: Parent, ledger: Ledger) -> None:
    """Mark booted children active once the parent says so; a child never active is a break."""
    with ledger.lock:
        pending = [
            c for c in ledger.children.values() if c.node_dir is not None and not c.active and not c.revoked
        ]
    for child in pending:
        try:
            if parent.hub.child(child.id)["status"] == "active":
                child.active = True
                say(f"{child.mode} {child.id[:8]} is active ({time.monotonic() - child.spawned_at:.0f}s)")
        except (httpx.HTTPError, KeyError, ValueError):
            pass


def spawn_booted(parent: Parent, ledger: Ledger, mode: str) -> Child | None:
    try:
        data = parent.hub.spawn(mode, TEMPLATES[mode])
    except (RuntimeError, httpx.HTTPError) as e:
        ledger.counts[f"spawn {mode} refused"] += 1
        say(f"spawn {mode} refused: {str(e)[:200]}")
        return None
    node = Path(data["child"]["node_instance"]["details"]["work_dir"])
    child = Child(data["child"]["id"], mode, node, time.monotonic())
    with ledger.lock:
        ledger.children[child.id] = child
    ledger.counts[f"spawn {mode}"] += 1
    return child


def revoke_booted(parent: Parent, ledger: Ledger, child: Child) -> None:
    try:
        response = parent.hub.api("POST", f"{API}/children/{child.id}/revoke", json={})
    except httpx.HTTPError:
        return
    if response.status_code == 200:
        child.revoked = True
        ledger.counts[f"revoke {child.mode}"] += 1
        if child.node_dir is not None:  # halted a little later: the revoke notice reaches it first
            with ledger.lock:
                ledger.to_halt.append((time.monotonic() + 60, child.node_dir))


def halt_revoked(ledger: Ledger, *, everything: bool = False) -> None:
    with ledger.lock:
        due = [n for at, n in ledger.to_halt if everything or at < time.monotonic()]
        ledger.to_halt = [(at, n) for at, n in ledger.to_halt if n not in due]
    for node in due:
        halt_node(node)


def wait_active(parent: Parent, ledger: Ledger, child: Child) -> None:
    deadline = time.monotonic() + RECOVERY
    while time.monotonic() < deadline and not child.active:
        boot_children(parent, ledger)
        time.sleep(1)
    if not child.active:
        ledger.broke(f"{child.mode} {child.id} never became active")
        child.revoked = True  # not counted as live from here on
        revoke_booted(parent, ledger, child)


def main() -> int:
    root = Path(os.environ.get("CHAOS_DIR") or tempfile.mkdtemp(prefix="powernode-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    say(f"working in {root}; running for {DURATION:.0f}s; load average {os.getloadavg()}")
    parent, ledger = Parent(root), Ledger()
    recoveries: dict[str, list[float]] = defaultdict(list)
    injected: list[str] = []
    load = Load(parent, ledger)
    try:
        parent.start_hub()
        parent.start_worker()
        booted: dict[str, list[Child]] = defaultdict(list)
        for mode in TEMPLATES:
            child = spawn_booted(parent, ledger, mode)
            if child is not None:
                booted[mode].append(child)
        for children in booted.values():
            for child in children:
                wait_active(parent, ledger, child)
        load.start()
        end = time.monotonic() + DURATION
        faults = itertools.cycle(FAULTS)
        modes = itertools.cycle(TEMPLATES)
        while time.monotonic() < end:
            halt_revoked(ledger)
            mode = next(modes)
            fresh = spawn_booted(parent, ledger, mode)
            fault = next(faults)
            say(f"injecting: {fault}")
            started = time.monotonic()
            inject(parent, fault)
            injected.append(fault)
            seconds, problems = converge(parent, ledger, started)
            if seconds is None:
                for problem in problems:
                    ledger.broke(f"after {fault}: {problem}")
            else:
                recoveries[fault].append(seconds)
                say(f"recovered from {fault} in {seconds:.1f}s")
            if fresh is not None:
                wait_active(parent, ledger, fresh)
                booted[mode].append(fresh)
                while len([c for c in booted[mode] if not c.revoked]) > 1:
                    oldest = next(c for c in booted[mode] if not c.revoked)
                    revoke_booted(parent, ledger, oldest)
                    if not oldest.revoked:
                        break
        load.stopping.set()
        load.join(60)
        seconds, problems = converge(parent, ledger, time.monotonic())
        for problem in problems:
            ledger.broke(f"at the end: {problem}")
    except KeyboardInterrupt:
        ledger.broke("interrupted before the end (Ctrl-C)")
    finally:
        load.stopping.set()
        for node in parent.hub.node_dirs():
            halt_node(node)
        parent.stop()
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
    report(injected, recoveries, ledger)
    return 1 if ledger.breaks else 0


def report(injected: list[str], recoveries: dict[str, list[float]], ledger: Ledger) -> None:
    print("\n== chaos report ==")
    print(f"faults injected: {len(injected)} ({', '.join(f'{f} x{injected.count(f)}' for f in FAULTS)})")
    every = [s for times in recoveries.values() for s in times]
    for fault in FAULTS:
        times = recoveries.get(fault, [])
        if times:
            print(
                f"  {fault:<9} recovered {len(times)}x: "
                f"median {statistics.median(times):.1f}s, worst {max(times):.1f}s"
            )
    if every:
        print(f"  all       median {statistics.median(every):.1f}s, worst {max(every):.1f}s")
    print("traffic: " + json.dumps(dict(sorted(ledger.counts.items()))))
    if ledger.breaks:
        print(f"BROKEN INVARIANTS ({len(ledger.breaks)}):")
        for problem in ledger.breaks:
            print(f"  - {problem}")
    else:
        print("every invariant held")


if __name__ == "__main__":
    sys.exit(main())
