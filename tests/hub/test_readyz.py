"""/readyz answers 503 naming what is missing when a dependency is down (here: nothing listens
on the configured port), and 200 with every check true when all is there."""

from __future__ import annotations

from dataclasses import replace

import httpx
from arq.connections import ArqRedis

from hub.database import create_engine
from hub.embedded.process import free_port
from hub.main import create_app


async def test_ready_with_every_dependency(client):
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["data"]["checks"] == {"database": True, "redis": True, "disk": True}


async def test_database_and_redis_down_is_503_naming_both_in_the_error_envelope(runtime):
    # The same runtime, its database and Redis addresses pointing at ports nothing listens on.
    engine = create_engine(f"postgresql://x:y@127.0.0.1:{free_port()}/none")
    redis = ArqRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    down = replace(runtime, engine=engine, redis=redis)
    try:
        transport = httpx.ASGITransport(app=create_app(down.settings, down))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            response = await http.get("/readyz")
            live = await http.get("/healthz")
    finally:
        await redis.aclose()
        await engine.dispose()

    body = response.json()
    assert response.status_code == 503
    assert body["success"] is False and body["code"] == "NOT_READY"
    assert body["error"] == "Not ready: the database is unreachable, Redis is unreachable"
    assert body["details"]["checks"] == {"database": False, "redis": False, "disk": True}
    assert "y@" not in response.text  # the URL's password is not echoed
    assert live.status_code == 200  # alive, just not ready


async def test_low_disk_is_503_naming_it(runtime):
    full = replace(runtime, settings=runtime.settings.model_copy(update={"min_free_bytes": 2**62}))
    transport = httpx.ASGITransport(app=create_app(full.settings, full))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        response = await http.get("/readyz")

    assert response.status_code == 503
    assert response.json()["error"] == "Not ready: low free space in the data dir"
    assert response.json()["details"]["checks"] == {"database": True, "redis": True, "disk": False}
