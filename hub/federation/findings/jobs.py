"""The findings cron: heartbeat lapses, stuck handshakes and nodes, outbox jobs that keep failing;
once per period across all workers."""

from __future__ import annotations

import logging
from typing import Any

from hub.federation.findings import service as findings_service
from hub.outbox import service as outbox_service
from hub.provisioning import watch
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)


async def federation_findings_sweep(ctx: dict[str, Any]) -> dict[str, int]:
    runtime: HubRuntime = ctx["runtime"]
    async with runtime.sessionmaker() as session, session.begin():
        heartbeats = await findings_service.sweep_heartbeats(session, settings=runtime.settings)
        handshakes = await findings_service.sweep_handshakes(session, settings=runtime.settings)
        nodes = await watch.sweep_nodes(session, settings=runtime.settings)
        stuck = await findings_service.sweep_stuck(session, settings=runtime.settings)
        failing = await outbox_service.sweep(session, settings=runtime.settings)
    result = {**heartbeats, **handshakes, **nodes, **stuck, "outbox_failing": failing}
    if any(result.values()):
        log.info("findings sweep: %s", result)
    return result
