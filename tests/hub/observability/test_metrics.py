"""/metrics through the app: counters move with spawns, accepts and jobs; the database part is
read at scrape time, bounded in time, and its failures never fail the scrape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import asyncpg
import httpx
import pytest
from arq import Retry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import update

from hub.config import Settings
from hub.database import utcnow
from hub.federation.peers.models import FederationPeer
from hub.main import create_app
from hub.observability.jobs import instrument
from hub.runtime import HubRuntime
from hub.worker import worker_settings
from tests.hub.helpers import ACCEPT, SPAWN, make_csr, operator_headers, spawn

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample, by name and labels; a family without samples is listed as (name, {}) -> nan."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        samples.setdefault((family.name, frozenset()), float("nan"))
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_spawn_and_an_accept_move_the_counters_and_the_database_gauges(client, runtime):
    headers = await operator_headers(runtime)
    before = await scrape(client)

    child = await spawn(client, headers, "managed_child", manual_attach=True)
    _, csr = make_csr()
    body = {"acceptance_token": child["acceptance_token"], "contract_version": 1, "csr_pem": csr}
    first = await client.post(ACCEPT, json=body)
    again = await client.post(ACCEPT, json=body)
    _, other_csr = make_csr()
    stolen = await client.post(ACCEPT, json={**body, "csr_pem": other_csr})
    unknown = await client.post(ACCEPT, json={**body, "acceptance_token": "pnat_nope_" + "x" * 43})
    invalid = await client.post(ACCEPT, json={"acceptance_token": " ", "contract_version": 1})
    misfit = {
        "spawn_mode": "cluster_member",
        "spawn_target": {"template_id": "powernode-hub"},
        "parent_url": "https://parent.example.test/",
    }
    refused = await client.post(SPAWN, headers=headers, json=misfit)
    after = await scrape(client)

    codes = [r.status_code for r in (first, again, stolen, unknown, invalid, refused)]
    assert codes == [200, 200, 409, 401, 422, 422]
    assert moved(before, after, "powernode_spawns_total", mode="managed_child", outcome="ok") == 1
    assert moved(before, after, "powernode_spawns_total", mode="cluster_member", outcome="invalid") == 1
    for outcome in ("ok", "retry", "conflict", "unauthorized", "invalid"):
        assert moved(before, after, "powernode_accepts_total", outcome=outcome) == 1, outcome
    accepted = {"status": "accepted", "mode": "managed_child", "role": "parent"}
    assert value(before, "powernode_peers", **accepted) == 0
    assert value(after, "powernode_peers", **accepted) == 1
    assert value(after, "powernode_peers", status="revoked", mode="cluster_member", role="child") == 0


async def test_heartbeat_lag_open_findings_and_job_runs(client, runtime, settings):
    headers = await operator_headers(runtime)
    ids = [(await spawn(client, headers, "autonomous_peer", manual_attach=True))["child"]["id"] for _ in "ab"]
    async with runtime.sessionmaker() as session:
        for peer_id, (status, age) in zip(ids, [("active", 5), ("degraded", 1000)], strict=True):
            await session.execute(
                update(FederationPeer)
                .where(FederationPeer.id == peer_id)
                .values(status=status, last_heartbeat_at=utcnow() - timedelta(seconds=age))
            )
        await session.commit()
    [sweep] = [
        job for job in worker_settings(settings)["cron_jobs"] if job.name == "federation_findings_sweep"
    ]
    await sweep.coroutine({"runtime": runtime, "job_id": "cron:test"})  # as the worker runs it

    samples = await scrape(client)

    assert value(samples, "powernode_peer_heartbeat_lag_seconds_bucket", status="active", le="10.0") == 1
    assert value(samples, "powernode_peer_heartbeat_lag_seconds_bucket", status="degraded", le="900.0") == 0
    assert value(samples, "powernode_peer_heartbeat_lag_seconds_bucket", status="degraded", le="3600.0") == 1
    assert value(samples, "powernode_peer_heartbeat_lag_seconds_gcount", status="degraded") == 1
    assert 999 <= value(samples, "powernode_peer_heartbeat_lag_max_seconds", status="degraded") < 1100
    assert value(samples, "powernode_findings_open", kind="peer_heartbeat_stale") == 1
    assert value(samples, "powernode_jobs_total", function="federation_findings_sweep", outcome="ok") >= 1
    assert value(samples, "powernode_job_duration_seconds_count", function="federation_findings_sweep") >= 1


async def test_our_replication_slots_are_reported_with_their_retained_wal(client, runtime, superuser_url):
    slot = "powernode_repl_" + "ab" * 16
    connection = await asyncpg.connect(superuser_url)
    try:
        await connection.execute("SELECT pg_create_physical_replication_slot($1, true)", slot)
        await connection.execute("SELECT pg_create_physical_replication_slot('someone_elses', true)")
        # WAL written after the slot was created is WAL the slot holds back.
        await connection.execute("CREATE TABLE wal_filler AS SELECT g FROM generate_series(1, 10000) AS g")
        try:
            samples = await scrape(client)
        finally:
            await connection.execute("SELECT pg_drop_replication_slot($1)", slot)
            await connection.execute("SELECT pg_drop_replication_slot('someone_elses')")
    finally:
        await connection.close()

    retained = ("powernode_replication_slot_retained_bytes", frozenset({("slot", slot)}))
    assert retained in samples and samples[retained] > 100_000
    assert (("powernode_replication_slot_active", frozenset({("slot", slot)}))) in samples
    assert not any(dict(labels).get("slot") == "someone_elses" for _, labels in samples)


async def test_failed_and_retried_jobs_are_counted_by_function(settings):
    async def fails(ctx: dict) -> None:
        raise RuntimeError("boom")

    async def retries(ctx: dict) -> None:
        raise Retry(defer=1)

    async with _client_without_database(settings) as http:
        before = await scrape(http)
        for name, job, error in (("test_fails", fails, RuntimeError), ("test_retries", retries, Retry)):
            with pytest.raises(error):
                await instrument(name, job)({"job_id": name})
        after = await scrape(http)

    assert moved(before, after, "powernode_jobs_total", function="test_fails", outcome="failed") == 1
    assert moved(before, after, "powernode_jobs_total", function="test_retries", outcome="retry") == 1
    assert moved(before, after, "powernode_job_duration_seconds_count", function="test_fails") == 1


async def test_a_query_stuck_behind_a_lock_times_out_and_the_rest_still_answers(runtime, database_url):
    quick = runtime.settings.model_copy(update={"metrics_query_timeout_seconds": 0.3})
    app = create_app(quick, replace(runtime, settings=quick))
    locker = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub.test"
        ) as http:
            before = await scrape(http)
            async with locker.transaction():
                await locker.execute("LOCK TABLE federation_peer IN ACCESS EXCLUSIVE MODE")
                async with asyncio.timeout(60):  # without the statement timeout it would wait forever
                    during = await scrape(http)
    finally:
        await locker.close()

    assert moved(before, during, "powernode_scrape_errors_total", query="peers") == 1
    assert moved(before, during, "powernode_scrape_errors_total", query="heartbeat_lag") == 1
    assert moved(before, during, "powernode_scrape_errors_total", query="findings") == 0
    assert not any(name == "powernode_peers" for name, _ in during)
    assert any(name == "powernode_findings_open" for name, _ in during)


async def test_an_unreachable_database_is_a_scrape_error_not_a_500(settings):
    async with _client_without_database(settings) as http:
        before = await scrape(http)
        after = await scrape(http)

    assert moved(before, after, "powernode_scrape_errors_total", query="connection") == 1
    assert not any(name == "powernode_peers" for name, _ in after)


@asynccontextmanager
async def _client_without_database(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a runtime whose DATABASE_URL points at a port nothing listens on."""
    database = settings.database.model_copy(update={"url": SecretStr("postgresql://x@127.0.0.1:1/none")})
    broken = await HubRuntime.open(settings.model_copy(update={"database": database}))
    try:
        transport = httpx.ASGITransport(app=create_app(broken.settings, broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            yield http
    finally:
        await broken.close()
