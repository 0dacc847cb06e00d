"""accept: 200 children redeem their tokens with a CSR each, 32 at a time, against a real hub.

The hub is `powernode-hub serve` with the manual provisioner (no child boots). The children are
spawned through the operator API and their EC P-256 keys and CSRs made before the clock starts.
Load goes to the hub's plain-HTTP port, so the figure is the server's cost of accept (token
consumed in SQL, CSR verified and signed, the managed_child grant issued), not TLS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import ROOT, Result, Stopwatch, median, percentile, running_hub, workdir
from bench.machine import cpu_window
from hub.localhub import LocalHub
from shared_contract.version import CONTRACT_VERSION

CHILDREN = int(__import__("os").environ.get("BENCH_ACCEPT_CHILDREN", "200"))
WARMUP = 16
CLIENTS = 32
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


def run() -> Result:
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
        asyncio.run(accept_all(hub.url, bodies[:WARMUP], clients=4))
        with cpu_window(watch=hub.process.pid if hub.process else None) as cpu:
            wall, latencies = asyncio.run(accept_all(hub.url, bodies[WARMUP:], clients=CLIENTS))
    rate = CHILDREN / wall
    p50, p99 = median(latencies) * 1000, percentile(latencies, 99) * 1000
    result.say(
        f"{CHILDREN} accepts (EC P-256 CSR signed, {MODE} grant issued), {CLIENTS} concurrent "
        f"httpx clients, plain HTTP port (server-side cost, no TLS); {WARMUP} warm-up accepts not counted"
    )
    result.say(f"wall {wall:.2f}s → {rate:.0f} accepts/s; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    result.say(
        f"hub process CPU {cpu.watched * 1000 / CHILDREN:.1f} ms per accept "
        f"({cpu.watched / wall:.0%} of one core); {cpu}"
    )
    result.check("accepts/s", rate, TARGET_RATE, "/s", at_least=True)
    result.check("accept p99 latency", p99, TARGET_P99_MS, "ms", at_least=False)
    return result
