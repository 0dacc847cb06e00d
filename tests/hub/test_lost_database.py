"""PostgreSQL stopped under a running app: 503 DATABASE_UNAVAILABLE, then back without a restart;
a transaction that loses a serialization race is run again, not answered with a 500."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from hub import migrate
from hub.config import DatabaseSettings, RedisSettings, Settings, VaultSettings
from hub.database import session_scope
from hub.embedded.postgres import PostgresServer
from hub.guard import GuardMiddleware
from hub.main import create_app
from hub.operators import service as operators_service
from hub.runtime import HubRuntime

CHILDREN = "/api/v1/system/federation/children"
TOKEN_SHAPED = "pnat_" + "a" * 16 + "_" + "b" * 43  # well-formed: the lookup needs the database


@pytest.fixture
async def own_database(scratch_dir):
    server = PostgresServer(scratch_dir / "pg").init(durable=False)
    server.start()
    server.create_database("powernode")
    await migrate.upgrade(server.url("powernode"))
    try:
        yield server
    finally:
        server.stop(mode="immediate")


async def test_every_endpoint_answers_503_while_postgres_is_down_and_recovers(
    own_database, redis_url, openbao, tmp_path
):
    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=own_database.url("powernode"), pool_size=2, max_overflow=0),
        redis=RedisSettings(url=redis_url),
        vault=VaultSettings(addr=openbao.addr, token=openbao.token),
    )
    runtime = await HubRuntime.open(settings)
    async with session_scope(runtime.sessionmaker) as session:
        _, token = await operators_service.create_operator_token(
            session, name="t", permissions=operators_service.ALL_PERMISSIONS
        )
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=create_app(settings, runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            assert (await client.get(CHILDREN, headers=headers)).status_code == 200
            await asyncio.to_thread(own_database.stop)

            answers = [
                await client.get(CHILDREN, headers=headers),
                await client.get("/api/v1/system/federation/findings", headers=headers),
                await client.post(
                    "/api/v1/system/federation_api/accept",
                    json={"acceptance_token": TOKEN_SHAPED, "contract_version": 1},
                ),
            ]
            ready = await client.get("/readyz")

            await asyncio.to_thread(own_database.start)
            back = await client.get(CHILDREN, headers=headers)
    finally:
        await runtime.close()

    assert [a.status_code for a in answers] == [503, 503, 503]
    assert {a.json()["code"] for a in answers} == {"DATABASE_UNAVAILABLE"}
    assert all(a.json()["success"] is False for a in answers)
    # accept's 503 is the guard's own answer, outside FastAPI's middleware: it carries the id too
    assert all(a.headers.get("x-request-id") for a in answers), [dict(a.headers) for a in answers]
    assert ready.status_code == 503 and "database is unreachable" in ready.json()["error"]
    assert back.status_code == 200


async def test_a_serialization_failure_is_retried_not_a_500(runtime):
    await _execute(runtime, "CREATE TABLE IF NOT EXISTS race (id int PRIMARY KEY, n int)")
    await _execute(runtime, "INSERT INTO race VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0")
    attempts = 0
    read_done, rival_committed = asyncio.Event(), asyncio.Event()
    app = FastAPI()
    app.add_middleware(GuardMiddleware)  # as create_app does: inside Starlette's 500 handler

    @app.post("/bump")
    async def bump() -> dict:
        nonlocal attempts
        attempts += 1
        async with runtime.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="SERIALIZABLE")
            async with conn.begin():
                n = await conn.scalar(text("SELECT n FROM race WHERE id = 1"))
                if attempts == 1:  # a rival transaction commits between our read and our write
                    read_done.set()
                    await rival_committed.wait()
                await conn.execute(text("UPDATE race SET n = :n WHERE id = 1"), {"n": n + 1})
        return {"n": n + 1}

    async def rival() -> None:
        await read_done.wait()
        await _execute(runtime, "UPDATE race SET n = n + 10 WHERE id = 1")
        rival_committed.set()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        response, _ = await asyncio.gather(client.post("/bump", json={}), rival())

    assert response.status_code == 200 and response.json() == {"n": 11}
    assert attempts == 2


async def _execute(runtime, sql):
    async with runtime.engine.begin() as conn:
        await conn.execute(text(sql))
