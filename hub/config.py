"""Settings, read from the environment (and `.env`), grouped by the part they configure."""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "changethis",
        "secret",
        "password",
        "root",
        "dev",
        "admin",
        "test",
        "example",
    }
)


class UnsafeProduction(RuntimeError):
    """These settings must not run with POWERNODE_ENVIRONMENT=production; one line for the operator."""


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore")


class DatabaseSettings(BaseSettings):
    """`DATABASE_URL`: an external PostgreSQL; unset means the embedded one in the data dir."""

    model_config = _group("DATABASE_")
    url: SecretStr | None = None
    pool_size: int = Field(default=10, ge=1, le=200)
    max_overflow: int = Field(default=10, ge=0, le=200)


class RedisSettings(BaseSettings):
    """`REDIS_URL`: an external Redis; unset means the embedded one in the data dir."""

    model_config = _group("REDIS_")
    url: SecretStr | None = None
    advertised_url: str | None = None
    # The primary-duties queue's own database: a cluster_member's Redis user may not SELECT it.
    primary_db: int | None = Field(default=None, ge=0, le=15)


class VaultSettings(BaseSettings):
    """`VAULT_ADDR` + `VAULT_TOKEN`: Vault/OpenBao KV v2; unset means the local encrypted store."""

    model_config = _group("VAULT_")
    addr: str | None = None
    token: SecretStr | None = None
    namespace: str | None = None
    kv_mount: str = "secret"
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)


class FederationSettings(BaseSettings):
    """How this hub speaks to its peers (`POWERNODE_FEDERATION_*`)."""

    model_config = _group("POWERNODE_FEDERATION_")
    trusted_proxies: list[str] = Field(default_factory=list)
    # The one header a trusted proxy's client-certificate subject is read from (deploy/traefik).
    client_cert_header: str = Field(default="X-Forwarded-Tls-Client-Cert-Info", min_length=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 << 20)
    heartbeat_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    heartbeat_stale_seconds: float = Field(default=300.0, gt=0)
    findings_interval_seconds: float = Field(default=60.0, gt=0)
    default_token_ttl_seconds: int = Field(default=7 * 86400, ge=86400, le=30 * 86400)
    grant_ttl_days: int = Field(default=365, ge=1, le=3650)
    grant_retention_days: int = Field(default=90, ge=1)
    # Lifetime of the client certificates our CA issues to peers; they renew over mTLS before it ends.
    peer_cert_ttl_days: int = Field(default=90, ge=1, le=825)
    # How long after a token's first use the same key may retry accept (never past the token's expiry).
    accept_retry_window_seconds: int = Field(default=900, ge=1, le=86400)
    # The whole of one call to a peer's federation API, however slowly it answers.
    call_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    # A peer, node or member setup that has not moved on for this long gets a finding.
    stuck_seconds: float = Field(default=600.0, gt=0)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.strip() == "*":
                raise ValueError("'*' is not allowed: list the proxies' addresses or CIDRs")
            ipaddress.ip_network(entry.strip(), strict=False)  # ValueError names the bad entry
        return [entry.strip() for entry in value]


class ReplicationSettings(BaseSettings):
    """cluster_member replication on the primary this hub runs on (`POWERNODE_REPLICATION_*`)."""

    model_config = _group("POWERNODE_REPLICATION_")
    primary_host: str | None = None
    primary_port: int | None = Field(default=None, ge=1, le=65535)
    password_ttl_days: int = Field(default=30, ge=1, le=3650)
    slot_inactive_seconds: float = Field(default=3600.0, gt=0)
    slot_max_retained_bytes: int = Field(default=1 << 30, gt=0)


class OutboxSettings(BaseSettings):
    """The transactional outbox's relay (`POWERNODE_OUTBOX_*`): jobs that follow a commit."""

    model_config = _group("POWERNODE_OUTBOX_")
    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # A dispatched job not finished by then (its worker died) is dispatched again.
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    failing_after_attempts: int = Field(default=3, ge=1)


class Settings(BaseSettings):
    """Everything the hub reads at start; secrets are `SecretStr` and never printed."""

    model_config = SettingsConfigDict(env_prefix="POWERNODE_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".powernode")
    public_url: str | None = None
    # Where peers present their client certificate (see hub.federation.endpoints).
    federation_url: str | None = None
    provisioner: Literal["local", "manual", "qemu"] = "local"
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    metrics_query_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # /readyz reports the data dir's filesystem below this (spawns write payloads and node dirs there).
    min_free_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    platform_name: str = "powernode"
    first_run_result: Path | None = None
    # False on a cluster_member node: its hub lacks the privileges to manage roles and slots.
    primary_duties: bool = True
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    # None: on in production, off in development.
    metrics_require_token: bool | None = None
    # None: served in development, not in production.
    api_docs: bool | None = None

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    federation: FederationSettings = Field(default_factory=FederationSettings)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def embedded(self) -> bool:
        """True when no external database is configured: the hub runs its own PostgreSQL and Redis."""
        return self.database.url is None

    @property
    def metrics_token_required(self) -> bool:
        default = self.environment == "production"
        return default if self.metrics_require_token is None else self.metrics_require_token

    @property
    def api_docs_enabled(self) -> bool:
        default = self.environment != "production"
        return default if self.api_docs is None else self.api_docs

    def production_problems(self) -> list[str]:
        """Why this configuration must not run as POWERNODE_ENVIRONMENT=production; empty when it may."""
        if self.environment != "production":
            return []
        problems = [
            f"{name} is not set (the embedded {what} is for development)"
            for name, value, what in (
                ("DATABASE_URL", self.database.url, "PostgreSQL"),
                ("REDIS_URL", self.redis.url, "Redis"),
                ("VAULT_ADDR", self.vault.addr, "local secret store"),
            )
            if not value
        ]
        secrets = {"VAULT_TOKEN": self.vault.token}
        urls = {
            "DATABASE_URL": self.database.url,
            "REDIS_URL": self.redis.url,
            "REDIS_ADVERTISED_URL": self.redis.advertised_url,
        }
        problems += [f"{name} is a placeholder" for name, value in secrets.items() if _placeholder(value)]
        problems += [
            f"the password in {name} is a placeholder" for name, url in urls.items() if _weak_url(url)
        ]
        weak = {name: v.get_secret_value() for name, v in secrets.items() if v and not _placeholder(v)}
        weak |= {
            f"the password in {name}": password
            for name, url in urls.items()
            if (password := _url_password(url)) is not None and not _weak_url(url)
        }
        problems += [
            f"{name} is too weak (about {bits:.0f} bits, under {MIN_SECRET_BITS}: use `openssl rand -hex 32`)"
            for name, value in weak.items()
            if (bits := secret_strength_bits(value)) < MIN_SECRET_BITS
        ]
        redis_urls = {"REDIS_URL": self.redis.url, "REDIS_ADVERTISED_URL": self.redis.advertised_url}
        problems += [
            f"{name} has no password (Redis must require one)"
            for name, url in redis_urls.items()
            if url and _url_password(url) is None
        ]
        problems += [
            f"POWERNODE_FEDERATION_TRUSTED_PROXIES must not contain {entry} (it trusts every address)"
            for entry in self.federation.trusted_proxies
            if ipaddress.ip_network(entry, strict=False).prefixlen == 0
        ]
        if self.vault.addr and self.vault.token is None:
            problems.append("VAULT_TOKEN is not set")
        if not (self.public_url or "").lower().startswith("https://"):
            problems.append("POWERNODE_PUBLIC_URL must be an https:// URL (federation carries tokens)")
        return problems

    def check_production(self) -> None:
        """Raise UnsafeProduction, naming every problem, before a production hub starts anything."""
        if problems := self.production_problems():
            raise UnsafeProduction(
                "refusing to start with POWERNODE_ENVIRONMENT=production: " + "; ".join(problems)
            )

    def database_url(self) -> str:
        if self.database.url is None:
            raise RuntimeError("DATABASE_URL is not set and the embedded PostgreSQL is not running")
        return self.database.url.get_secret_value()

    def redis_url(self) -> str:
        if self.redis.url is None:
            raise RuntimeError("REDIS_URL is not set and the embedded Redis is not running")
        return self.redis.url.get_secret_value()

    def primary_redis_url(self) -> str:
        """The primary-duties queue: same Redis, database `REDIS_PRIMARY_DB` (default: the next one)."""
        url = self.redis_url()
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{primary_db(url, self.redis.primary_db)}"))


def primary_db(platform_url: str, configured: int | None = None) -> int:
    """The primary-duties queue's database: `configured`, else the one after the platform queue's."""
    if configured is not None:
        return configured
    path = urlsplit(platform_url).path.strip("/")
    platform = int(path) if path.isdigit() else 0
    return platform + 1 if platform < 15 else platform - 1


MIN_SECRET_BITS = 64


def secret_strength_bits(value: str) -> float:
    """A conservative estimate of a secret's entropy: the smaller of its length times the bits of
    the character classes it draws from and its Shannon entropy (which punishes repeated
    characters), of its shortest repeating unit ("abcabc" counts as "abc")."""
    if not value:
        return 0.0
    value = next(
        value[:p] for p in range(1, len(value) + 1) if (value[:p] * len(value))[: len(value)] == value
    )
    pool = sum(
        size
        for present, size in (
            (any(c.islower() for c in value), 26),
            (any(c.isupper() for c in value), 26),
            (any(c.isdigit() for c in value), 10),
            (any(not c.isalnum() for c in value), 33),
        )
        if present
    )
    counts = Counter(value).values()
    shannon = -sum(n / len(value) * math.log2(n / len(value)) for n in counts) * len(value)
    return max(0.0, min(len(value) * math.log2(max(pool, 2)), shannon))


def _url_password(url: SecretStr | str | None) -> str | None:
    text = url.get_secret_value() if isinstance(url, SecretStr) else url
    if not text:
        return None
    parts = urlsplit(text)
    if parts.password:
        return parts.password
    query = parse_qs(parts.query).get("password")
    return query[0] if query else None


def _placeholder(value: SecretStr | None) -> bool:
    return value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS


def _weak_url(url: SecretStr | str | None) -> bool:
    """A URL whose password is a placeholder; no password at all (peer or cert auth) is fine."""
    text = url.get_secret_value() if isinstance(url, SecretStr) else url
    password = urlsplit(text).password if text else None
    return password is not None and password.lower() in PLACEHOLDER_SECRETS


@lru_cache
def get_settings() -> Settings:
    return Settings()
