"""The replication password is in the secret store and in the one answer that delivers it: nowhere else."""

import logging

import redis.asyncio as aioredis

from tests.hub.helpers import make_csr
from tests.hub.replication.conftest import CHILDREN, FEDERATION_API


async def every_row_as_text(primary) -> str:
    tables = await primary.fetch(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS name "
        "FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    rows = [await primary.fetch(f"SELECT t::text AS row FROM {table['name']} t") for table in tables]
    assert any(rows), "expected rows in the hub tables"
    return "\n".join(row["row"] for table in rows for row in table)


async def everything_in_redis(redis_url) -> bytes:
    client = aioredis.Redis.from_url(redis_url)
    try:
        values = []
        for key in await client.keys("*"):
            kind = (await client.type(key)).decode()
            if kind == "string":
                values.append(await client.get(key))
            elif kind == "zset":
                values.extend(await client.zrange(key, 0, -1))
        return b"\n".join(values)
    finally:
        await client.aclose()


async def test_no_password_in_logs_tables_or_job_results(
    spawn, run_jobs, client, operator, primary, redis_url, caplog
):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # every statement and its parameters
    child = await spawn()
    await run_jobs()
    accepted = await client.post(
        f"{FEDERATION_API}/accept",
        json={"acceptance_token": child.token, "contract_version": 1, "csr_pem": make_csr()[1]},
    )
    await client.post(f"{CHILDREN}/{child.id}/replication/reissue", headers=operator)
    fetched = await client.get(f"{FEDERATION_API}/replication_credential", headers=child.peer_headers)
    await client.post(f"{CHILDREN}/{child.id}/replication/retry", headers=operator)
    await run_jobs()

    passwords = [accepted.json()["data"]["cluster_pg"]["password"], fetched.json()["data"]["password"]]
    assert len(set(passwords)) == 2
    assert "create_member_slot" in caplog.text  # the statement log was on
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    assert "PASSWORD" not in logged  # not even the SCRAM verifier the role statement carries
    tables = await every_row_as_text(primary)
    jobs = await everything_in_redis(redis_url)
    for password in passwords:
        assert password not in logged
        assert password not in tables
        assert password.encode() not in jobs
