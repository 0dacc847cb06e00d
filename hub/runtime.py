"""What one hub process holds while it runs: settings, the engine, Redis, the secret store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hub import database
from hub.config import Settings
from hub.exceptions import ServiceUnavailable
from hub.jobcodec import ARQ_CODEC
from hub.secrets import ca as ca_service
from hub.secrets.store import SecretStore, open_store

# arq's default 1 s connect timeout fails a hub whose CPU is starved (a TCG guest on a busy host).
REDIS_CONNECT_TIMEOUT_S = 10


def arq_redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = REDIS_CONNECT_TIMEOUT_S
    return settings


@dataclass
class HubRuntime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    secrets: SecretStore
    ca: ca_service.FederationCA
    # The primary-duties queue's pool, in its own Redis database; None on a node without primary
    # duties (a cluster_member), whose Redis user may not reach that database.
    primary_redis: ArqRedis | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def open(cls, settings: Settings) -> HubRuntime:
        engine = database.create_engine(
            settings.database_url(),
            pool_size=settings.database.pool_size,
            max_overflow=settings.database.max_overflow,
        )
        redis = await create_pool(
            arq_redis_settings(settings.redis_url()), default_queue_name=queue_name(), **ARQ_CODEC
        )
        primary_redis: ArqRedis | None = None
        try:
            if settings.primary_duties:
                primary_redis = await create_pool(
                    arq_redis_settings(settings.primary_redis_url()),
                    default_queue_name=PRIMARY_QUEUE,
                    **ARQ_CODEC,
                )
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            secrets = open_store(settings)
            ca = await ca_service.load_or_create(data_dir=settings.data_dir, store=secrets)
        except BaseException:
            if primary_redis is not None:
                await primary_redis.aclose()
            await redis.aclose()
            await engine.dispose()
            raise
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=database.create_sessionmaker(engine),
            redis=redis,
            secrets=secrets,
            ca=ca,
            primary_redis=primary_redis,
        )

    def primary_queue(self) -> ArqRedis:
        """Where the primary's own work is queued; refused on a node without primary duties."""
        if self.primary_redis is None:
            raise ServiceUnavailable(
                "This node has no primary duties (a cluster_member): do this on the parent hub",
                code="NOT_PRIMARY",
            )
        return self.primary_redis

    async def close(self) -> None:
        for hot_path in ("heartbeats", "accepts", "children"):  # their dedicated connections
            connections = self.extras.pop(hot_path, None)
            if connections is not None:
                await connections.close()
        if self.primary_redis is not None:
            await self.primary_redis.aclose()
        await self.redis.aclose()
        await self.engine.dispose()


PRIMARY_QUEUE = "powernode:queue:primary"


def queue_name() -> str:
    return "powernode:queue"
