"""End-to-end tests drive real hubs through hub.localhub, with short federation intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.localhub import LocalHub, halt_node, hub_env, serve_state

FAST = {
    "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "1",
    "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "1",
    "POWERNODE_FEDERATION_HEARTBEAT_STALE_SECONDS": "4",
}
__all__ = ["FAST", "Hub", "child_serve_state", "halt_node", "hub_env"]


class Hub(LocalHub):
    def start(self, env: dict[str, str] | None = None, timeout: float = 90) -> Hub:
        super().start(FAST | (env or {}), timeout)
        return self


def child_serve_state(node_dir: Path) -> dict[str, Any]:
    return serve_state(node_dir / "data")
