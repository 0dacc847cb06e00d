"""The floor of the children-list benchmark: the same page, from memory, through the same stack.

A bare FastAPI app on uvicorn (same event loop and log level as the hub) that answers
`GET /children` with the page the hub answered, parsed once at start and serialised on every
request: the cost of HTTP and JSON alone, no authentication, no query.

    python -m bench.floor_children --port P --page FILE [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

PATH = "/children"


def create_app(page: dict) -> FastAPI:
    app = FastAPI()

    @app.get(PATH)
    async def children() -> JSONResponse:
        return JSONResponse(page)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_children")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--page", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    page = json.loads(args.page.read_text())
    server = uvicorn.Server(
        uvicorn.Config(create_app(page), host="127.0.0.1", port=args.port, log_level=args.log_level)
    )
    if args.uvloop:
        import uvloop

        uvloop.run(server.serve())
    else:
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()
