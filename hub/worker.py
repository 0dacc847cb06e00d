"""arq WorkerSettings: functions and cron jobs gathered from the domains."""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from hub.config import Settings, get_settings
from hub.runtime import HubRuntime, queue_name


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    ctx["runtime"] = await HubRuntime.open(settings)


async def on_shutdown(ctx: dict[str, Any]) -> None:
    runtime: HubRuntime | None = ctx.get("runtime")
    if runtime is not None:
        await runtime.close()


FUNCTIONS: list[Any] = []
CRON_JOBS: list[Any] = []


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` bound to these settings."""
    return {
        "functions": FUNCTIONS,
        "cron_jobs": CRON_JOBS,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url()),
        "queue_name": queue_name(),
        "ctx": {"settings": settings},
        "handle_signals": False,
    }
