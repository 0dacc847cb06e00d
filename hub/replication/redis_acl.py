"""A cluster_member's own Redis identity: an ACL user limited to the platform queue (Redis 6+ ACLs).

Its workers share the platform queue with ours, so it may run exactly what an arq worker and pool
need there, on the platform queue's keys, in the platform queue's database. It may not SELECT any
other database (the primary-duties queue lives in its own, see `Settings.primary_redis_url`), and it
has none of CONFIG, FLUSH*, KEYS, SCAN, EVAL/SCRIPT/FUNCTION, MODULE, DEBUG, ACL, CLIENT, SHUTDOWN,
pub/sub…. The user is named like the member's PostgreSQL role, made by the setup, given a new
password by a reissue and deleted (its connections dropped) on revoke.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit, urlunsplit

import redis.exceptions
from redis.asyncio import Redis

from hub.config import Settings

log = logging.getLogger(__name__)

# What arq's worker and pool send (arq/connections.py, arq/worker.py, arq/jobs.py) and redis-py's
# pipelines around them; nothing else.
WORKER_COMMANDS = (
    "ping",
    "info",
    "dbsize",
    "get",
    "set",
    "setex",
    "psetex",
    "del",
    "exists",
    "expire",
    "pexpire",
    "incr",
    "incrby",
    "zadd",
    "zcard",
    "zincrby",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zremrangebyscore",
    "zscore",
    "watch",
    "unwatch",
    "multi",
    "exec",
    "discard",
)
# arq's fixed key prefixes (arq:job:, arq:in-progress:, arq:retry:, arq:result:, arq:abort), then
# the queue's sorted set and its health-check key.
KEY_PATTERNS = ("arq:*",)


def database_of(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def member_rules(*, password: str, queue: str, database: int) -> list[str]:
    """`ACL SETUSER` arguments: everything reset, then the allow-list."""
    return [
        "reset",
        "resetchannels",
        "on",
        f">{password}",
        *(f"~{pattern}" for pattern in (*KEY_PATTERNS, queue, f"{queue}:health-check")),
        "-@all",
        *(f"+{command}" for command in WORKER_COMMANDS),
        f"+select|{database}",
    ]


async def ensure_user(client: Redis, *, username: str, password: str, queue: str, database: int) -> None:
    """Create or reset the member's user to exactly these rules and this password."""
    rules = member_rules(password=password, queue=queue, database=database)
    await client.execute_command("ACL", "SETUSER", username, *rules)
    await _save(client)


async def delete_user(client: Redis, *, username: str) -> bool:
    """Delete the user; Redis closes the connections authenticated as it. False if there was none."""
    deleted = bool(await client.execute_command("ACL", "DELUSER", username))
    await _save(client)
    return deleted


async def _save(client: Redis) -> None:
    """Persist the users where Redis has an ACL file (the embedded one does); else they live in
    memory and the setup makes them again (README: what the operator must allow)."""
    try:
        await client.execute_command("ACL", "SAVE")
    except redis.exceptions.ResponseError as e:
        log.debug("ACL SAVE not possible on this Redis: %s", e)


def advertised_url(settings: Settings) -> str | None:
    """Where members reach our Redis: `REDIS_ADVERTISED_URL`, else our own URL (its host and port
    are what count; the credentials in it are never passed on)."""
    if settings.redis.advertised_url:
        return settings.redis.advertised_url
    return settings.redis.url.get_secret_value() if settings.redis.url else None


def member_url(settings: Settings, *, username: str, password: str) -> str | None:
    """The URL a member's hub uses: our (advertised) Redis, platform database, the member's user."""
    base = advertised_url(settings)
    if base is None:
        return None
    parts = urlsplit(base)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    database = database_of(settings.redis.url.get_secret_value()) if settings.redis.url else 0
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}", path=f"/{database}"))
