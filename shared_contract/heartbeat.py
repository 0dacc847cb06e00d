"""``POST /heartbeat``: the child hub's periodic liveness and state report."""

from pydantic import Field

from shared_contract._base import MAX_ITEMS, IsoTimestamp, JsonObject, ShortStr, WireModel
from shared_contract.accept import Endpoint


class HeartbeatRequest(WireModel):
    """Every field is optional; an empty body is a valid heartbeat."""

    capabilities: JsonObject | None = Field(default=None, max_length=MAX_ITEMS)
    endpoints: list[Endpoint] | None = Field(default=None, max_length=MAX_ITEMS)
    sync_cursor: ShortStr | None = None
    extension_slugs: list[ShortStr] | None = Field(default=None, max_length=MAX_ITEMS)
    platform_version: ShortStr | None = None
    data_residency: ShortStr | None = None


class HeartbeatResponseData(WireModel):
    """The heartbeat response ``data``: the parent's view and its own endpoints."""

    status: ShortStr
    last_heartbeat_at: IsoTimestamp
    our_endpoints: list[Endpoint] = Field(default_factory=list)
    schema_compatibility: JsonObject = Field(default_factory=dict)
