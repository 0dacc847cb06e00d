"""``POST /enroll`` (ours): the child hub announces itself to its parent after the first run."""

from pydantic import Field

from shared_contract._base import MAX_ITEMS, IsoTimestamp, JsonObject, ShortStr, UrlStr, WireModel
from shared_contract.accept import Endpoint


class EnrollRequest(WireModel):
    """The child platform's identity and reachability; granted_grant_id is its child-side grant."""

    platform_id: ShortStr
    platform_url: UrlStr
    name: ShortStr | None = None
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=MAX_ITEMS)
    capabilities: JsonObject = Field(default_factory=dict, max_length=MAX_ITEMS)
    granted_grant_id: ShortStr | None = None


class EnrollResponseData(WireModel):
    """The enroll response ``data``."""

    peer_id: ShortStr
    status: ShortStr
    enrolled_at: IsoTimestamp
