"""Inside the development guest: relay the guest's own loopback ports to the parent's forwards.

``python -m hub.provisioning.guest_relay HOST PORT...`` listens on 127.0.0.1:PORT in the guest and
connects each connection to HOST:PORT, where QEMU's ``guestfwd`` takes it to the same port on the
parent's loopback. Addresses the parent hands out as 127.0.0.1 (its primary, its Redis, its
federation endpoint) then work unchanged inside the guest. Standard library only: it starts
before anything else in the guest and must start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _serve(host: str, port: int) -> asyncio.Server:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError as e:
            print(f"[relay] {host}:{port} unreachable: {e.strerror or e}", flush=True)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        for w in (writer, upstream_writer):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    return await asyncio.start_server(relay, "127.0.0.1", port)


async def main(host: str, ports: list[int]) -> None:
    servers = []
    for port in ports:
        try:
            servers.append(await _serve(host, port))
        except OSError as e:
            print(f"[relay] cannot listen on 127.0.0.1:{port}: {e.strerror or e}", flush=True)
    print(f"[relay] 127.0.0.1:{{{','.join(map(str, ports))}}} -> {host}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(p) for p in sys.argv[2:]]))
