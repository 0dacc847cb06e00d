"""A cluster_member node's hub: no PostgreSQL primary of its own, the parent's Redis.

Its first run left a streaming standby of the parent's primary and, once, the credential its
hub writes to that primary with (`platform-database.json`, 0600). At start the hub moves that
credential into its own secret store (and deletes the file), then runs against the parent's
primary and Redis: its workers join the parent's queue. After `powernode-child-agent promote`
(`promotion.json` beside the result) the promoted standby is this node's primary.

Where its reciprocal peer record lives: in the database it shares with the parent, as a
`spawn_role: child` row. The parent's own views list only `spawn_role: parent` rows, and only
the node holding the first-run result acts on that row (heartbeats read this node's result file).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from hub.config import Settings
from hub.secrets.store import open_store
from shared_contract.first_run import FirstRunResult

log = logging.getLogger(__name__)
CREDENTIAL_PATH = "platform/database"


def result_path(settings: Settings) -> Path:
    return settings.first_run_result or settings.data_dir / "agent" / "first-run-result.json"


def parent_ca_pem(settings: Settings) -> str:
    """The CA chain of the parent that spawned this node ('' if none): our listener trusts its calls."""
    path = result_path(settings)
    if not path.exists():
        return ""
    ca_chain_path = FirstRunResult.read(path).ca_chain_path
    try:
        return Path(ca_chain_path).read_text() if ca_chain_path else ""
    except OSError:
        return ""


def _member_result(settings: Settings) -> FirstRunResult | None:
    path = result_path(settings)
    if not path.exists():
        return None
    result = FirstRunResult.read(path)
    return result if result.spawn_mode == "cluster_member" else None


def _credential(settings: Settings, handover: Path) -> dict[str, Any] | None:
    store = open_store(settings)
    if handover.exists():
        asyncio.run(store.put(CREDENTIAL_PATH, json.loads(handover.read_text())))
        handover.unlink()
    return asyncio.run(store.get(CREDENTIAL_PATH))


def configure(settings: Settings) -> Settings:
    """The settings of a cluster_member node (unchanged for every other hub)."""
    if not settings.embedded:
        return settings
    result = _member_result(settings)
    if result is None:
        return settings
    state_dir = result_path(settings).parent
    credential = _credential(settings, state_dir / "platform-database.json")
    if credential is None:
        raise RuntimeError(
            "this cluster_member has no database credential for the parent's primary; "
            "ask the parent's operator to reissue it (children/{id}/replication/reissue)"
        )
    host, port = credential["host"], credential["port"]
    if (state_dir / "promotion.json").exists() and result.standby is not None:
        host, port = "127.0.0.1", result.standby.port
        log.info("this member was promoted: using its own primary on port %s", port)
    user, password = quote(credential["username"], safe=""), quote(credential["password"], safe="")
    url = f"postgresql://{user}:{password}@{host}:{port}/{credential['database']}"
    update: dict[str, Any] = {
        "database": settings.database.model_copy(update={"url": SecretStr(url)}),
        "primary_duties": False,
    }
    # Its own Redis ACL user on the parent's Redis (delivered with the database credential); an
    # agent of a parent from before member Redis users left the parent's URL in the result.
    redis_url = credential.get("redis_url") or result.redis_url
    if redis_url and settings.redis.url is None:
        update["redis"] = settings.redis.model_copy(update={"url": SecretStr(redis_url)})
    return settings.model_copy(update=update)
