"""`GET …/children`: the children this hub spawned, newest first, a keyset-paginated page at a time.

One statement reads a page (the summary's columns and each child's live acceptance token); the
FastAPI route (hub/spawn/router.py) and the raw ASGI path below both run it. The raw path is the
one the hub serves (HubApp.dispatch): a console polling a 100,000-child fleet reads this page all
day, and FastAPI's middleware, dependencies and ORM cost several times the page's own work (DESIGN
§8). It answers only a well-formed request from an operator who may read children; anything else
(a bad parameter, no token, a lost database) it leaves to the route, which gives the same answer
and the one error shape.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic_core import to_json
from starlette.types import Scope, Send

from hub import guard, hotpath
from hub.database import utcnow
from hub.exceptions import ValidationFailed
from hub.federation.peers.models import PEER_STATUSES, SPAWN_MODES
from hub.observability import context
from hub.operators import permissions
from hub.operators import service as operators_service
from hub.runtime import HubRuntime
from hub.wire import envelope, send_json

log = logging.getLogger(__name__)
CHILDREN_PATH = "/api/v1/system/federation/children"
MAX_PAGE = 500
DEFAULT_LIMIT = 100
MAX_CURSOR = 200
EXTRAS_KEY = "children"
_PARAMETERS = frozenset({"limit", "cursor", "spawn_mode", "status"})
_LIMIT = re.compile(r"[1-9][0-9]{0,2}")

# A child's own URL once it reported one; until then, as the original, the spawn's URL. Its live
# acceptance token (not consumed, not superseded): what `acceptance_pending` is made of.
_SELECT = """
    SELECT p.id, p.name,
           coalesce(nullif(p.remote_url, ''), nullif(p.metadata -> 'spawn' ->> 'parent_url', ''))
               AS remote_instance_url,
           p.spawn_mode, p.status, p.created_at, p.last_heartbeat_at, p.template_id, p.region,
           p.emancipated_at IS NOT NULL AS emancipated,
           (SELECT max(t.expires_at) FROM acceptance_token AS t
            WHERE t.peer_id = p.id AND t.superseded_at IS NULL AND t.consumed_at IS NULL)
               AS token_expires_at
    FROM federation_peer AS p
    WHERE p.spawn_role = 'parent'"""


@dataclass(frozen=True)
class PageQuery:
    limit: int
    spawn_mode: str | None = None
    statuses: tuple[str, ...] = ()
    after: tuple[datetime, uuid.UUID] | None = None  # the cursor: the last child of the page before

    def statement(self, *, first: int = 1, also: str = "") -> tuple[str, list[Any]]:
        """The page's SQL (filters spelled out, so each shape gets its own plan) and its arguments,
        numbered from ${first}; `also` is one more condition."""
        sql, args = _SELECT + also, list[Any]([self.limit + 1])

        def arg(value: Any) -> str:
            args.append(value)
            return f"${first + len(args) - 1}"

        if self.spawn_mode:
            sql += f" AND p.spawn_mode = {arg(self.spawn_mode)}"
        if self.statuses:
            sql += f" AND p.status = ANY({arg(list(self.statuses))}::text[])"
        if self.after:
            created, peer_id = arg(self.after[0]), arg(self.after[1])
            sql += f" AND (p.created_at < {created} OR (p.created_at = {created} AND p.id < {peer_id}))"
        return sql + f" ORDER BY p.created_at DESC, p.id DESC LIMIT ${first}", args


# The operator token ($1, $2) and, if it may read children ($3), the page: no row without a live
# token, one row of NULLs for a token without the permission or for an empty page.
_AUTHENTICATED_PAGE = f"""
    WITH {operators_service.TOKEN_CTES}
    SELECT {operators_service.OPERATOR_COLUMNS}, page.*
    FROM token LEFT JOIN LATERAL ({{page}}) AS page ON true
    ORDER BY page.created_at DESC, page.id DESC
"""  # noqa: S608 - made of constants


def page_query(*, spawn_mode: str | None, status: str | None, limit: int, cursor: str | None) -> PageQuery:
    """The request's parameters checked (ValidationFailed names what is wrong)."""
    if spawn_mode is not None and spawn_mode not in SPAWN_MODES:
        raise ValidationFailed(f"Unknown spawn_mode {spawn_mode!r}; modes: {', '.join(SPAWN_MODES)}")
    return PageQuery(
        limit=limit,
        spawn_mode=spawn_mode,
        statuses=tuple(parse_statuses(status)),
        after=decode_cursor(cursor) if cursor else None,
    )


def parse_statuses(value: str | None) -> list[str]:
    statuses = [s.strip() for s in (value or "").split(",") if s.strip()]
    unknown = sorted(set(statuses) - set(PEER_STATUSES))
    if unknown:
        raise ValidationFailed(f"Unknown status {unknown}; statuses: {', '.join(PEER_STATUSES)}")
    return statuses


def encode_cursor(created_at: datetime, peer_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{peer_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, peer_id = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(peer_id)
    except ValueError as e:
        raise ValidationFailed("cursor is not a cursor this API returned") from e


def page(rows: list[Any], query: PageQuery) -> dict[str, Any]:
    """The envelope of one page from the statement's rows (one more than the page: is there a next)."""
    now = utcnow()
    children = [_summary(row, now) for row in rows[: query.limit]]
    last = rows[query.limit - 1] if len(rows) > query.limit else None
    next_cursor = encode_cursor(last[5], last[0]) if last is not None else None
    meta = {"count": len(children), "limit": query.limit, "next_cursor": next_cursor}
    # Plain data: the route's response model checks it; the raw path writes it out.
    return envelope({"children": children, "count": len(children)}, meta=meta)


def _summary(row: Any, now: datetime) -> dict[str, Any]:
    """A ChildSummary's fields from a row of the statement."""
    peer_id, name, url, mode, status, created, heartbeat, template, region, emancipated, token = row
    proposed = status == "proposed"
    return {
        "id": str(peer_id),
        "name": name,
        "remote_instance_url": url,
        "spawn_mode": mode,
        "status": status,
        "created_at": created,
        "last_heartbeat_at": heartbeat,
        "acceptance_pending": proposed and token is not None and token > now,
        "acceptance_expires_at": token if proposed else None,
        "template_id": template,
        "region": region,
        "emancipated": emancipated,
    }


def _raw_query(query_string: bytes) -> PageQuery | None:
    """The parameters if each is well-formed and given once, else None (the route says what is wrong)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    given = dict(pairs)
    if len(given) != len(pairs) or not given.keys() <= _PARAMETERS:
        return None
    limit = given.get("limit", str(DEFAULT_LIMIT))
    cursor = given.get("cursor")
    if not _LIMIT.fullmatch(limit) or int(limit) > MAX_PAGE or (cursor and len(cursor) > MAX_CURSOR):
        return None
    try:
        return page_query(
            spawn_mode=given.get("spawn_mode"), status=given.get("status"), limit=int(limit), cursor=cursor
        )
    except ValidationFailed:
        return None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":  # the first, as Starlette's request.headers.get reads it
            return operators_service.bearer_of(value.decode("latin-1"))
    return None


async def serve_raw(runtime: HubRuntime, scope: Scope, send: Send) -> bool:
    """Answer `GET …/children` as raw ASGI; False, with nothing sent, to leave it to the route."""
    query = _raw_query(scope.get("query_string", b""))
    parts = operators_service.bearer_parts(_bearer(scope))
    if query is None or parts is None:
        return False
    connections = runtime.extras.get(EXTRAS_KEY)
    if connections is None:
        connections = runtime.extras[EXTRAS_KEY] = hotpath.Connections(runtime.settings.database_url())
    request_id = context.request_id_of(scope)
    with context.scope(request_id=request_id):
        try:
            sql, args = query.statement(first=4, also=" AND token.permissions ? $3")
            async with connections.connection() as connection:
                rows = await connection.fetch(
                    _AUTHENTICATED_PAGE.format(page=sql), *parts, permissions.CHILDREN_READ, *args
                )
            operator = operators_service.operator_of(rows[0] if rows else None)
            if operator is None or permissions.CHILDREN_READ not in operator.permissions:
                return False  # the route's 401 or 403
            page_rows = [row[3:] for row in rows if row[3] is not None]
            # The values are the database's, of ChildSummary's types: written out as they are,
            # by the serializer the route's response model uses (test_children_list_raw compares).
            body = to_json(page(page_rows, query))
        except Exception as e:
            # The route meets the same trouble and answers it: 503 for a lost database, the one
            # error shape for anything else (which is a bug here, and logged as one).
            if guard.classify(e) is None:
                log.error("children list's raw path failed: %s", type(e).__name__, exc_info=e)
            return False
        # Inside the request's log context: the access line names the request id too.
        await send_json(send, 200, body, (context.REQUEST_ID_HEADER.encode(), request_id.encode()))
        return True
