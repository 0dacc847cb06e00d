"""Scale-out: two `serve --no-worker` and two `worker` processes on one PostgreSQL, Redis and data dir.

The hub keeps nothing in process memory that matters, so it does not matter which API process
answers: a spawn through one is accepted through the other, a token raced from both has one
winner, all processes share one federation CA although they create it at the same moment, and
each cron job runs once per period, not once per worker.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import time
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis.asyncio as aioredis

from hub.config import primary_db
from hub.database import create_engine, create_sessionmaker, session_scope
from hub.embedded.process import free_port, wait_until
from hub.localhub import hub_command, hub_env
from hub.operators.service import ALL_PERMISSIONS, create_operator_token
from hub.secrets.store import LocalEncryptedStore
from tests.hub.helpers import ACCEPT, SPAWN, make_csr

pytestmark = pytest.mark.e2e

CRONS = ("federation_findings_sweep", "replication_slot_janitor")
CRON_RUNS = 3  # periods each cron job must have run while both workers run side by side


def _cron_runs(workers: list[Process], name: str, *, since: float) -> set[str]:
    """Job ids of the periods of `name` that ended well in any worker, from `since` on (a line
    still being written is read next time)."""
    runs = set()
    for worker in workers:
        for line in worker.log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            job_id = str(event.get("job_id", ""))
            if event.get("function") == name and event.get("outcome") == "ok" and job_id[-1:].isdigit():
                if int(job_id.rsplit(":", 1)[-1]) >= since * 1000:
                    runs.add(job_id)
    return runs


class Process:
    """One hub process; stdout and stderr (its log) go to files beside the shared data dir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("w") as stderr, (logs / f"{name}.out").open("w") as stdout:
            self.popen = subprocess.Popen(
                [*hub_command(), *args], env=env, stdout=stdout, stderr=stderr, start_new_session=True
            )

    def __repr__(self) -> str:
        return f"Process({self.name!r}, pid={self.popen.pid})"

    def events(self) -> list[dict[str, Any]]:
        """Every line it logged, each of which must be one JSON event."""
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self} exited {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def started(tmp_path: Path) -> Any:
    """Start processes (all at once if asked together); every one of them is stopped afterwards."""
    processes: list[Process] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> Process:
        processes.append(Process(name, args, env, tmp_path))
        return processes[-1]

    yield start
    _stop(processes)


def _stop(processes: list[Process]) -> None:
    """SIGTERM to all first, so they stop together, then wait for each."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    for process in processes:
        process.stop()


async def _operator_token(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            _, token = await create_operator_token(session, name="scale-out", permissions=ALL_PERMISSIONS)
    finally:
        await engine.dispose()
    return token


def _ready(api: Process, url: str) -> bool:
    try:
        return api.alive() and httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_started(worker: Process) -> bool:
    return worker.alive() and "Starting worker for" in worker.log.read_text()


def _served_by_our_ca(port: int, ca_file: Path) -> bool:
    """The federation listener's certificate verifies against the CA in the shared data dir."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        return True


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_two_apis_and_two_workers_share_one_database_redis_and_data_dir(
    database_url, redis_url, tmp_path, started
):
    token = await _operator_token(database_url)
    headers = {"Authorization": f"Bearer {token}"}
    data_dir = tmp_path / "data"
    env = hub_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "POWERNODE_DATA_DIR": str(data_dir),
            "POWERNODE_PROVISIONER": "manual",
            # Scaled out behind a load balancer: the URL children use is the balancer's.
            "POWERNODE_PUBLIC_URL": "https://hub.example.test",
            "POWERNODE_LOG_FORMAT": "json",
            "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "1",
        }
    )
    ports = [(free_port(), free_port()) for _ in range(2)]
    metrics_ports = [free_port() for _ in range(2)]
    # All four at once, on an empty data dir: they race to create the CA and the secrets key.
    apis = [
        started(f"api-{i}", ["serve", "--no-worker", "--port", str(p), "--federation-port", str(f)], env)
        for i, (p, f) in enumerate(ports, 1)
    ]
    workers = [
        started(f"worker-{i}", ["worker", "--metrics-port", str(m)], env)
        for i, m in enumerate(metrics_ports, 1)
    ]
    urls = [f"http://127.0.0.1:{p}" for p, _ in ports]
    assert wait_until(lambda: all(_ready(a, u) for a, u in zip(apis, urls, strict=True)), 90, interval=0.2)
    assert wait_until(lambda: all(_worker_started(w) for w in workers), 60, interval=0.2)
    together_since = time.time()

    async with httpx.AsyncClient(timeout=30) as http:
        body = {
            "spawn_mode": "managed_child",
            "parent_url": "https://hub.example.test/",
            "spawn_target": {"template_id": "powernode-hub"},
        }
        spawned = await http.post(urls[0] + SPAWN, json=body, headers=headers)
        assert spawned.status_code == 201, spawned.text
        child_id, acceptance_token = (
            spawned.json()["data"]["child"]["id"],
            spawned.json()["data"]["acceptance_token"],
        )
        accepts = [
            {"acceptance_token": acceptance_token, "contract_version": 1, "csr_pem": make_csr()[1]}
            for _ in range(50)
        ]
        responses = await asyncio.gather(
            *(http.post(urls[i % 2] + ACCEPT, json=accept) for i, accept in enumerate(accepts))
        )
        [winner] = [i for i, r in enumerate(responses) if r.status_code == 200]
        # The winning key retrying after a lost response, through the other process: the same answer.
        retried = await http.post(urls[(winner + 1) % 2] + ACCEPT, json=accepts[winner])
        child = (
            await http.get(f"{urls[1]}/api/v1/system/federation/children/{child_id}", headers=headers)
        ).json()
        # However loaded the machine, wait (with a deadline) until each cron ran a few periods.
        async with asyncio.timeout(120):
            while any(len(_cron_runs(workers, name, since=together_since)) < CRON_RUNS for name in CRONS):
                await asyncio.sleep(0.2)
        api_metrics = [(await http.get(f"{url}/metrics")).text for url in urls]
        worker_metrics = [(await http.get(f"http://127.0.0.1:{m}/metrics")).text for m in metrics_ports]
    ca_file = data_dir / "ca" / "ca.crt"
    listeners_trusted = [_served_by_our_ca(federation_port, ca_file) for _, federation_port in ports]
    _stop([*apis, *workers])

    # Exactly one of the 50 accepts, split across both processes, won; the others met a used token.
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(409) == 49, codes
    won = responses[winner].json()["data"]
    assert child["data"]["child"]["status"] == "accepted" and won["peer_id"] == child_id
    assert retried.status_code == 200 and retried.json()["data"]["peer_id"] == child_id
    assert sum(_metric(m, "powernode_accepts_total", outcome="ok") for m in api_metrics) == 1
    assert sum(_metric(m, "powernode_accepts_total", outcome="retry") for m in api_metrics) == 1
    assert sum(_metric(m, "powernode_accepts_total", outcome="conflict") for m in api_metrics) == 49
    for text in api_metrics:  # read from the database, so every API process reports the same
        assert _metric(text, "powernode_peers", mode="managed_child", role="parent", status="accepted") == 1

    # One CA for all: it signed the winner's certificate, and both listeners' server certificates.
    assert won["ca_chain_pem"] == ca_file.read_text()
    assert listeners_trusted == [True, True]
    # One secrets key for all: the grant bearer the winning process stored decrypts with it.
    bearer = await LocalEncryptedStore(data_dir).get(f"federation_grant_bearer/{won['grant']['id']}")
    assert bearer is not None and bearer["bearer"] == won["grant"]["bearer_token"]

    # Every cron job ran at most once per period: no period twice (across both workers).
    events = [event for worker in workers for event in worker.events()]
    # The findings sweep runs on the platform queue; the janitor on the primary duties' database.
    primary = urlunsplit(urlsplit(redis_url)._replace(path=f"/{primary_db(redis_url)}"))
    queues = {CRONS[0]: aioredis.Redis.from_url(redis_url), CRONS[1]: aioredis.Redis.from_url(primary)}
    try:
        for name in CRONS:
            redis = queues[name]
            runs = [e["job_id"] for e in events if e.get("function") == name and e.get("outcome") == "ok"]
            # One id per period (name:<period start in ms>) is what lets workers agree on who runs it.
            assert all(re.fullmatch(rf"{name}:\d+", job_id) for job_id in runs), runs
            periods = sorted(int(job_id.rsplit(":", 1)[1]) for job_id in runs)
            assert len(runs) == len(set(runs)) >= CRON_RUNS, (name, runs)
            # Distinct one-second periods; on a loaded machine one may pass without a run.
            assert all(b > a and (b - a) % 1000 == 0 for a, b in pairwise(periods)), periods
            # arq's own record: a cron run keeps its in-progress key for a minute, so no worker repeats it.
            marks = {key.decode() async for key in redis.scan_iter(f"arq:in-progress:{name}:*")}
            assert {f"arq:in-progress:{job_id}" for job_id in runs} <= marks
    finally:
        for redis in queues.values():
            await redis.aclose()
    assert (
        sum(_metric(m, "powernode_jobs_total", function=CRONS[0], outcome="ok") for m in worker_metrics) >= 1
    )

    # The logs: JSON lines, requests carry their id, and no secret from any of the above.
    everything = "".join(p.log.read_text() for p in [*apis, *workers])
    secrets = [token, acceptance_token, won["grant"]["bearer_token"]]
    secrets += [urlsplit(database_url).password, urlsplit(redis_url).password]
    assert not [s for s in secrets if s and s in everything]
    access = [e for api in apis for e in api.events() if e["logger"] == "hub.access"]
    assert access and all(e.get("request_id") for e in access)
