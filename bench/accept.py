"""accept: 200 children redeem their tokens with a CSR each, 32 at a time, against a real hub.

The hub is `powernode-hub serve` with the manual provisioner (no child boots). The children are
spawned through the operator API and their EC P-256 keys and CSRs made before the clock starts.
Load goes to the hub's plain-HTTP port, so the figure is the server's cost of accept (token
consumed in SQL, CSR verified and signed, the managed_child grant issued), not TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import (
    ROOT,
    Result,
    Stopwatch,
    hub_database_url,
    running_hub,
    start_baseline,
    stop_process,
    wait_for_answer,
    workdir,
)
from bench.heartbeat import uses_uvloop
from bench.machine import cpu_window
from bench.naive_accept import PATH as NAIVE_PATH
from bench.naive_accept import load_ca
from bench.wrk import WrkRun, run_wrk
from hub.localhub import LocalHub
from hub.secrets import ca as ca_service
from shared_contract.version import CONTRACT_VERSION

CHILDREN = int(os.environ.get("BENCH_ACCEPT_CHILDREN", "3600"))
SECONDS = 5  # wrk runs this long; CHILDREN tokens are enough for it at well over the target rate
WARMUP = 96  # enough to warm every pooled connection's prepared statements
CLIENTS = 32
THREADS = 2
SPAWN_CONCURRENCY = 8
MODE = "managed_child"
NAIVE_CHILDREN = int(os.environ.get("BENCH_ACCEPT_NAIVE_CHILDREN", "1500"))
CRYPTO_SAMPLES = 300
CRYPTO_ROUNDS = 4  # passes over the samples, before and again after the hub's window
SETTLED_SHARE = 0.05  # the hub's background before the window: under 5% of a core …
SETTLE_SECONDS = 20  # … waited for at most this long
TARGET_CPU_RATIO = 4.0  # hub CPU per accept / the cryptography alone
TARGET_RATE_RATIO = 3.0  # hub accepts/s / the naive ORM endpoint's
TARGET_P99_RATIO = 1.0  # hub p99 / the naive endpoint's p99


def make_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-child")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def spawn_all(hub: LocalHub, count: int) -> list[str]:
    """`count` children through `POST …/children/spawn`; their plaintext tokens."""
    body = {
        "spawn_mode": MODE,
        "parent_url": hub.federation_url,
        "spawn_target": {"template_id": "powernode-hub"},
    }
    limit = asyncio.Semaphore(SPAWN_CONCURRENCY)

    async with httpx.AsyncClient(base_url=hub.url, headers=hub.headers, timeout=30) as client:

        async def spawn() -> str:
            async with limit:
                response = await client.post(f"{ROOT}/federation/children/spawn", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"spawn failed: {response.status_code} {response.text[:300]}")
            return str(response.json()["data"]["acceptance_token"])

        return list(await asyncio.gather(*(spawn() for _ in range(count))))


async def accept_all(url: str, bodies: list[dict[str, Any]], clients: int) -> tuple[float, list[float]]:
    """Wall seconds for all accepts and each accept's latency; any non-200 or missing cert fails."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                began = time.perf_counter()
                response = await client.post(f"{ROOT}/federation_api/accept", json=body)
                latencies.append(time.perf_counter() - began)
                data = response.json().get("data") or {}
                if response.status_code != 200 or not data.get("client_cert_pem"):
                    raise RuntimeError(f"accept failed: {response.status_code} {response.text[:300]}")

        clock = Stopwatch()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return clock(), latencies


def accept_script(
    path: Path, bodies: list[dict[str, Any]], threads: int, target: str = f"{ROOT}/federation_api/accept"
) -> Path:
    """A wrk script POSTing each accept body once: thread k takes bodies k, k+T, k+2T, … and stops
    when its share is answered (a fast machine can run out of tokens before the run's end; wrk's
    rate is over the time it really ran). The few requests still in flight then repeat a body: a
    retry of a used token, at most `connections` of them."""
    listed = ",\n".join(f"[==[{json.dumps(body)}]==]" for body in bodies)
    path.write_text(
        f"""local bodies = {{
{listed}
}}
local threads = 0
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end
function init(args)
  i = first
  step = {threads}
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + step
  return wrk.format(nil, "{target}", nil, bodies[(i - 1) % #bodies + 1])
end
function response(status, headers, body)
  if i + step > #bodies then
    wrk.thread:stop()
  end
end
"""
    )
    return path


def crypto_only(ca_dir: Path, csrs: list[str]) -> float:
    """CPU seconds per accept spent in the cryptography alone: load and verify the CSR, build and
    sign the certificate, encode it (as the hub does, with the hub's own CA key). Measured over
    CRYPTO_ROUNDS passes (a third of a second or so): one pass swung 0.24-0.41 ms on one machine."""
    ca = load_ca(ca_dir)
    peer = uuid.uuid4()
    began = time.process_time()
    for _ in range(CRYPTO_ROUNDS):
        for pem in csrs:
            cert = ca.sign_peer_csr(ca_service.parse_csr(pem), peer_id=peer)
            cert.public_bytes(serialization.Encoding.PEM)
    return (time.process_time() - began) / (len(csrs) * CRYPTO_ROUNDS)


def process_cpu(pid: int) -> float:
    """CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, quiet: float = SETTLED_SHARE, patience: float = SETTLE_SECONDS) -> float:
    """Wait (up to `patience` s) until the hub's own background (its job worker and cron sweeps,
    which run in the same process) uses under `quiet` of a core over a second, so the window
    measures accepts rather than a sweep; the last second's share is returned and printed."""
    deadline = time.monotonic() + patience
    while True:
        before, began = process_cpu(pid), time.monotonic()
        time.sleep(1.0)
        share = (process_cpu(pid) - before) / (time.monotonic() - began)
        if share < quiet or time.monotonic() > deadline:
            return share


def naive_run(result: Result, hub: LocalHub, base: Path, uvloop: bool) -> WrkRun:
    """The same wrk load against the naive ORM endpoint, on the hub's database and CA."""
    tokens = asyncio.run(spawn_all(hub, NAIVE_CHILDREN + WARMUP))
    bodies = [
        {"acceptance_token": token, "contract_version": CONTRACT_VERSION, "csr_pem": make_csr()}
        for token in tokens
    ]
    args = ["--database-url", hub_database_url(hub), "--ca-dir", str(hub.data_dir / "ca")]
    naive, url = start_baseline("bench.naive_accept", args, base / "naive.log", uvloop=uvloop)
    try:
        wait_for_answer(naive, lambda: httpx.post(url + NAIVE_PATH, json={}).status_code == 401)
        asyncio.run(accept_all_at(url, NAIVE_PATH, bodies[:WARMUP], clients=CLIENTS))
        script = accept_script(base / "naive.lua", bodies[WARMUP:], THREADS, target=NAIVE_PATH)
        with cpu_window(watch=naive.pid) as cpu:
            run = run_wrk(url, script, threads=THREADS, connections=CLIENTS, seconds=SECONDS)
    finally:
        stop_process(naive)
    if run.errors or run.requests > NAIVE_CHILDREN:
        raise RuntimeError(f"naive endpoint: {run.errors} accepts failed or tokens ran out")
    result.say(
        f"naive ORM endpoint: {run.rate:.0f} accepts/s; p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms; "
        f"its CPU {cpu.watched * 1000 / max(run.requests, 1):.2f} ms per accept"
    )
    return run


async def accept_all_at(url: str, path: str, bodies: list[dict[str, Any]], clients: int) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for body in bodies:
            response = await client.post(path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"warm-up accept failed: {response.status_code} {response.text[:200]}")


def run() -> Result:
    """Accepts driven by wrk, which (unlike a Python client on these 2 cores) measures the hub, not
    itself; every body is a fresh token with its own CSR, so a non-2xx answer means a failure.
    Baselines in the same run: the cryptography alone, and a naive ORM-per-request endpoint."""
    result = Result("accept")
    base = workdir("accept")
    with running_hub(base / "parent", {"POWERNODE_PROVISIONER": "manual"}) as hub:
        clock = Stopwatch()
        tokens = asyncio.run(spawn_all(hub, CHILDREN + WARMUP))
        result.say(f"spawned {len(tokens)} {MODE} children through the operator API in {clock():.1f}s")
        bodies = [
            {"acceptance_token": token, "contract_version": CONTRACT_VERSION, "csr_pem": make_csr()}
            for token in tokens
        ]
        asyncio.run(accept_all(hub.url, bodies[:WARMUP], clients=CLIENTS))
        script = accept_script(base / "accept.lua", bodies[WARMUP:], THREADS)
        hub_pid = hub.process.pid if hub.process else 0
        csrs = [str(b["csr_pem"]) for b in bodies[:CRYPTO_SAMPLES]]
        crypto_before = crypto_only(hub.data_dir / "ca", csrs)
        idle = settle(hub_pid)
        with cpu_window(watch=hub_pid) as cpu:
            run = run_wrk(hub.url, script, threads=THREADS, connections=CLIENTS, seconds=SECONDS)
        crypto_after = crypto_only(hub.data_dir / "ca", csrs)
        if run.errors or run.requests > CHILDREN + CLIENTS:
            raise RuntimeError(f"{run.errors} accepts failed or tokens ran out; see {script}")
        hub_cpu = cpu.watched / max(run.requests, 1)
        result.say(
            f"wrk -t{THREADS} -c{CLIENTS} -d{SECONDS}s: {run.requests} accepts (EC P-256 CSR signed, "
            f"{MODE} grant issued, each token once), plain HTTP port; {WARMUP} warm-up accepts not counted"
        )
        result.say(
            f"hub: {run.rate:.0f} accepts/s; latency p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms; "
            f"hub process CPU {hub_cpu * 1000:.2f} ms per accept (its background just before: "
            f"{idle:.0%} of a core); {cpu}"
        )
        crypto = (crypto_before + crypto_after) / 2
        result.say(
            f"cryptography alone (CSR load+verify, certificate build+sign+encode): {crypto * 1000:.3f} ms "
            f"(the mean of {crypto_before * 1000:.3f} ms just before the hub's window and "
            f"{crypto_after * 1000:.3f} ms just after, {CRYPTO_ROUNDS} x {CRYPTO_SAMPLES} CSRs each)"
        )
        naive = naive_run(result, hub, base, uses_uvloop(hub_pid))
    result.ratio("hub CPU per accept / crypto alone", hub_cpu * 1000, crypto * 1000, TARGET_CPU_RATIO,
                 at_least=False, unit="ms", baseline_name="crypto")  # fmt: skip
    result.ratio("accepts/s: hub / naive ORM endpoint", run.rate, naive.rate, TARGET_RATE_RATIO,
                 at_least=True, unit="/s", baseline_name="naive")  # fmt: skip
    result.ratio("accept p99: hub / naive ORM endpoint", run.p99, naive.p99, TARGET_P99_RATIO,
                 at_least=False, unit="ms", baseline_name="naive")  # fmt: skip
    return result
