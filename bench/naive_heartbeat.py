"""The baseline of the heartbeat benchmark: a bare FastAPI endpoint, one UPDATE per request.

It identifies the peer from the trusted proxy's CN header like the hub does, runs
`UPDATE federation_peer SET last_heartbeat_at = now() WHERE id = $1` on an asyncpg pool (as large
as the hub's), and answers a small JSON envelope. Served like the hub's API: a uvicorn.Server on
the same kind of event loop, at the same log level (so with the same access log).

    python -m bench.naive_heartbeat --port P --database-url URL [--log-level info] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

PATH = "/heartbeat"
POOL_SIZE = 20  # the hub's DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW defaults
UPDATE = "UPDATE federation_peer SET last_heartbeat_at = now() WHERE id = $1 RETURNING last_heartbeat_at"


def create_app(database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(database_url, min_size=POOL_SIZE, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post(PATH)
    async def heartbeat(request: Request) -> JSONResponse:
        cn = request.headers.get("x-client-s-dn-cn", "")
        try:
            peer_id = uuid.UUID(cn.removeprefix("fed:"))
        except ValueError:
            return JSONResponse({"success": False, "error": "unauthorized"}, 401)
        at = await request.app.state.pool.fetchval(UPDATE, peer_id)
        if at is None:
            return JSONResponse({"success": False, "error": "unauthorized"}, 401)
        return JSONResponse({"success": True, "data": {"last_heartbeat_at": at.isoformat()}})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_heartbeat")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (when the hub does)")
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(args.database_url), host="127.0.0.1", port=args.port, log_level=args.log_level
    )
    server = uvicorn.Server(config)
    if args.uvloop:
        import uvloop

        uvloop.run(server.serve())
    else:
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()
