"""The hub's outer edge, before routing, authentication or any body is parsed (issue 11, items 4, 7, 12).

- **Which listener.** The federation mTLS listener serves only the federation API (and `/healthz`):
  the operator API, `/metrics` and the docs answer 404 there.
- **Who is calling.** The immediate socket peer is recorded in the scope (`SOCKET_PEER`) before
  anything else; `X-Forwarded-For` rewrites the client address only when that socket peer is a
  configured trusted proxy. The peer authentication uses the socket peer, never the rewritten one.
- **How much.** A request body is read here, up to a limit (small on the federation API and the
  federation listener, larger for operator calls), before the app sees the request: a
  `Content-Length` over it is refused unread, a streamed body as soon as it passes it, with 413 in
  the error envelope and the connection closed. So an oversized upload costs at most the limit.
- **What.** A body that is not valid UTF-8, carries a NUL or nests deeper than MAX_JSON_DEPTH is
  refused with 400: no database driver, log line or JSON parser downstream gets to choke on it.
- **The access line.** One line per answer, in uvicorn's format, under the `hub.access` logger.
  It is written here, not by uvicorn (whose access logger is cut off, so it never even builds the
  record), so that an accepted heartbeat costs none: at thousands a second, each peer's
  `last_heartbeat_at` and /metrics' heartbeat lag say more than lines would. A refused one is logged.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable
from functools import lru_cache

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.federation.peering import HEARTBEAT_PATH
from hub.wire import error_body, send_json

ACCESS_LOG = logging.getLogger("hub.access")

SOCKET_PEER = "powernode.socket_peer"
LISTENER = "powernode.listener"
FEDERATION_LISTENER = "federation"
FEDERATION_API_PREFIX = "/api/v1/system/federation_api/"
_FEDERATION_LISTENER_PATHS = ("/healthz",)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def is_trusted_proxy(host: str | None, proxies: Iterable[str]) -> bool:
    return bool(host) and _trusted(host or "", tuple(proxies))


@lru_cache(maxsize=4096)  # asked once or twice per request, mostly of the same few addresses
def _trusted(host: str, proxies: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks(proxies))


def socket_peer(scope: Scope) -> str | None:
    """The address of whoever opened the TCP connection, whatever the headers say."""
    if SOCKET_PEER in scope:
        return scope[SOCKET_PEER]
    client = scope.get("client")
    return client[0] if client else None


def _forwarded_client(scope: Scope, proxies: tuple[str, ...]) -> str | None:
    """The right-most X-Forwarded-For hop that is not one of our proxies (the others can be forged)."""
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted_proxy(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(message, code), separators=(",", ":")).encode()
    await send_json(send, status, body, (b"connection", b"close"))


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, Message | None]:
    """The whole body, or _TooLarge as soon as it passes `limit`; a disconnect is handed back."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


MAX_JSON_DEPTH = 64


def _too_deep(body: bytes) -> bool:
    """Whether arrays and objects nest deeper than MAX_JSON_DEPTH. Most bodies have too few
    brackets to tell; the others are parsed (C) and walked, stopping at the first node too deep.
    Not JSON at all is for the app to refuse."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    try:
        document = json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False
    level = [document] if isinstance(document, dict | list) else []
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


# A JSON \u escape of half a surrogate pair decodes to a str that no database driver can encode.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _bad_target(scope: Scope) -> str | None:
    """A NUL in the path or the query (raw or %00) would reach a database query as text."""
    query: bytes = scope.get("query_string", b"")
    if "\x00" in scope["path"] or b"\x00" in query or b"%00" in query:
        return "The request URL contains a NUL character"
    return None


def _bad_text(body: bytes) -> str | None:
    if b"\x00" in body or b"\\u0000" in body:
        return "The request body contains a NUL character"
    if (b"\\ud" in body or b"\\uD" in body) and _LONE_SURROGATE.search(body):
        return "The request body contains an unpaired UTF-16 surrogate escape"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "The request body is not valid UTF-8"
    if _too_deep(body):
        return f"The request body nests deeper than {MAX_JSON_DEPTH} levels"
    return None


def _access_line(scope: Scope, status: int) -> None:
    """uvicorn's line; not its helpers, whose strict ASCII decode of the query would raise on a
    client's stray byte there."""
    client = scope.get("client")
    target = urllib.parse.quote(scope["path"])
    if query := scope.get("query_string"):
        target += "?" + query.decode("ascii", "replace")
    ACCESS_LOG.info(
        '%s - "%s %s HTTP/%s" %d',
        f"{client[0]}:{client[1]}" if client else "",
        scope["method"],
        target,
        scope.get("http_version", "1.1"),
        status,
    )


def _logging(scope: Scope, send: Send) -> Send:
    """`send`, writing the access line as the answer starts (with the client address the app saw)."""

    async def logged(message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status >= 400 or scope["path"] != HEARTBEAT_PATH:
                _access_line(scope, status)
        await send(message)

    return logged


class Edge:
    """Wraps the whole app (the heartbeat's raw path included); see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Iterable[str],
        max_body_bytes: int,
        federation_max_body_bytes: int,
    ) -> None:
        self.app = app
        self.proxies = tuple(trusted_proxies)
        self.max_body = max_body_bytes
        self.federation_max_body = federation_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            send = _logging(scope, send)
        path: str = scope["path"]
        federation_path = path.startswith(FEDERATION_API_PREFIX)
        on_federation_listener = scope.get(LISTENER) == FEDERATION_LISTENER
        if on_federation_listener and not (federation_path or path in _FEDERATION_LISTENER_PATHS):
            await _refuse(send, 404, "Not Found", "NOT_FOUND")
            return
        if problem := _bad_target(scope):
            await _refuse(send, 400, problem, "MALFORMED_REQUEST")
            return
        peer = socket_peer(scope)
        scope[SOCKET_PEER] = peer
        if self.proxies and is_trusted_proxy(peer, self.proxies):
            forwarded = _forwarded_client(scope, self.proxies)
            if forwarded is not None:
                client = scope.get("client")
                scope["client"] = (forwarded, client[1] if client else 0)

        limit = self.federation_max_body if federation_path or on_federation_listener else self.max_body
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"Request body too large (at most {limit} bytes)", "PAYLOAD_TOO_LARGE")
            return
        try:
            body, early = await _read_body(receive, limit)
        except _TooLarge:
            await _refuse(send, 413, f"Request body too large (at most {limit} bytes)", "PAYLOAD_TOO_LARGE")
            return
        if early is not None:  # the client went away while sending: nothing to answer
            return
        if body and (problem := _bad_text(body)):
            await _refuse(send, 400, problem, "MALFORMED_REQUEST")
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def federation_listener(app: ASGIApp) -> ASGIApp:
    """The app as the federation listener serves it: marked, so Edge serves the federation API only."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        scope[LISTENER] = FEDERATION_LISTENER
        await app(scope, receive, send)

    return marked
