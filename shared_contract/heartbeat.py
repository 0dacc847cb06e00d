"""``POST /heartbeat``: the child hub's periodic liveness and state report.

The body is the original's: ``capabilities`` (the latest snapshot, replacing the stored one),
``endpoints``, ``sync_cursor`` (an object, per table ``{last_synced_at, last_id}``, merged into the
stored one), ``extension_slugs``, ``platform_version`` and ``data_residency`` (stamped). A string
``sync_cursor`` (this contract's first form) is still accepted.
"""

from typing import Literal

from pydantic import Field

from shared_contract._base import MAX_ITEMS, IsoTimestamp, JsonObject, ShortStr, WireModel
from shared_contract.accept import Endpoint


class HeartbeatRequest(WireModel):
    """Every field is optional; an empty body is a valid heartbeat."""

    capabilities: JsonObject | None = Field(default=None, max_length=MAX_ITEMS)
    endpoints: list[Endpoint] | None = Field(default=None, max_length=MAX_ITEMS)
    sync_cursor: JsonObject | ShortStr | None = Field(default=None)
    extension_slugs: list[ShortStr] | None = Field(default=None, max_length=MAX_ITEMS)
    platform_version: ShortStr | None = None
    data_residency: ShortStr | None = None


class SchemaCompatibility(WireModel):
    """The original's schema version negotiation result; `contract_version` and `compatible` are
    this hub's first form of the answer, kept beside it."""

    status: Literal["compatible", "incompatible"]
    source: Literal["operator", "default", "implicit"]
    local_version: ShortStr
    remote_version: ShortStr | None = None
    notes: str | None = Field(default=None, max_length=1024)
    contract_version: int | None = None
    compatible: bool | None = None


class HeartbeatResponseData(WireModel):
    """The heartbeat response ``data``: the parent's view and its own endpoints."""

    status: ShortStr
    last_heartbeat_at: IsoTimestamp
    our_endpoints: list[Endpoint] = Field(default_factory=list)
    schema_compatibility: SchemaCompatibility | JsonObject = Field(default_factory=dict)
