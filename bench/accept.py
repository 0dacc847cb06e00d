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
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import ROOT, Result, Stopwatch, running_hub, workdir
from bench.machine import cpu_window
from bench.wrk import run_wrk
from hub.localhub import LocalHub
from shared_contract.version import CONTRACT_VERSION

CHILDREN = int(os.environ.get("BENCH_ACCEPT_CHILDREN", "3600"))
SECONDS = 5  # wrk runs this long; CHILDREN tokens are enough for it at well over the target rate
WARMUP = 96  # enough to warm every pooled connection's prepared statements
CLIENTS = 32
THREADS = 2
SPAWN_CONCURRENCY = 8
MODE = "managed_child"
TARGET_RATE = 300.0
TARGET_P99_MS = 150.0


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


def accept_script(path: Path, bodies: list[dict[str, Any]], threads: int) -> Path:
    """A wrk script POSTing each accept body once: thread k takes bodies k, k+T, k+2T, …"""
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
  return wrk.format(nil, "{ROOT}/federation_api/accept", nil, bodies[(i - 1) % #bodies + 1])
end
"""
    )
    return path


def run() -> Result:
    """Accepts driven by wrk, which (unlike a Python client on these 2 cores) measures the hub, not
    itself; every body is a fresh token with its own CSR, so a non-2xx answer means a failure."""
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
        with cpu_window(watch=hub.process.pid if hub.process else None) as cpu:
            run = run_wrk(hub.url, script, threads=THREADS, connections=CLIENTS, seconds=SECONDS)
    result.say(
        f"wrk -t{THREADS} -c{CLIENTS} -d{SECONDS}s: {run.requests} accepts (EC P-256 CSR signed, "
        f"{MODE} grant issued, each token once), plain HTTP port; {WARMUP} warm-up accepts not counted"
    )
    result.say(
        f"{run.rate:.0f} accepts/s; latency p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms; "
        f"non-2xx or socket errors: {run.errors}"
    )
    result.say(f"hub process CPU {cpu.watched * 1000 / max(run.requests, 1):.1f} ms per accept; {cpu}")
    if run.errors or run.requests > CHILDREN:
        raise RuntimeError(f"{run.errors} accepts failed or tokens ran out; see {script}")
    result.check("accepts/s", run.rate, TARGET_RATE, "/s", at_least=True)
    result.check("accept p99 latency", run.p99, TARGET_P99_MS, "ms", at_least=False)
    return result
