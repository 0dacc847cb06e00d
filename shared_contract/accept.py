"""``POST /accept``: the child agent redeems its acceptance token with the parent.

The original agent sends only ``acceptance_token`` and ``contract_version``; everything else is
optional. A blank token or an unsupported version is the hub's 422, not a schema error, so neither is
constrained here beyond a size limit.
"""

from pydantic import Field

from shared_contract._base import (
    MAX_CSR,
    MAX_ITEMS,
    MAX_TOKEN,
    IsoTimestamp,
    JsonObject,
    PemStr,
    ShortStr,
    UrlStr,
    WireModel,
)


class Endpoint(WireModel):
    """A URL at which a platform can be reached, with its scope and preference."""

    url: UrlStr
    scope: ShortStr
    priority: int = 0
    cidr_hint: ShortStr | None = None


class ChildInfo(WireModel):
    """Who the accepting child is (our addition)."""

    platform_id: ShortStr | None = None
    url: UrlStr | None = None
    name: ShortStr | None = None


class AcceptRequest(WireModel):
    """The accept body; contract_version is an integer on the wire."""

    acceptance_token: str = Field(repr=False, max_length=MAX_TOKEN)
    contract_version: int
    extension_slugs: list[ShortStr] = Field(default_factory=list, max_length=MAX_ITEMS)
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=MAX_ITEMS)
    capabilities: JsonObject = Field(default_factory=dict, max_length=MAX_ITEMS)
    csr_pem: str | None = Field(default=None, max_length=MAX_CSR)
    child: ChildInfo | None = None


class GrantInfo(WireModel):
    """A grant as the other side sees it; bearer_token is present only when delivered."""

    id: ShortStr
    resource_kind: ShortStr
    permission_scopes: list[ShortStr] = Field(default_factory=list, max_length=MAX_ITEMS)
    remote_subject: ShortStr
    expires_at: IsoTimestamp | None = None
    bearer_token: str | None = Field(default=None, repr=False, max_length=MAX_TOKEN)


class ClusterPgBlock(WireModel):
    """The cluster_member replication block; password and redis_url only when the credential is
    delivered (redis_url: the parent's Redis as the member's own ACL user, platform queue only)."""

    state: ShortStr
    slot_name: ShortStr
    primary_host: ShortStr
    primary_port: int
    credential_id: ShortStr
    username: ShortStr
    password: str | None = Field(default=None, repr=False, max_length=MAX_TOKEN)
    database: ShortStr | None = None
    prepared_at: IsoTimestamp | None = None
    expires_at: IsoTimestamp | None = None
    redis_url: UrlStr | None = Field(default=None, repr=False)

    def without_password(self) -> "ClusterPgBlock":
        """Return a copy that is safe to store: the password and the Redis URL removed."""
        return self.model_copy(update={"password": None, "redis_url": None})


class AcceptResponseData(WireModel):
    """The accept response ``data``; the fields after handshake_at are our optional additions."""

    peer_id: ShortStr
    status: ShortStr
    peer_kind: ShortStr = "platform"
    contract_version_agreed: int
    accepted_at: IsoTimestamp
    handshake_at: IsoTimestamp
    spawn_mode: ShortStr | None = None
    client_cert_pem: PemStr | None = None
    ca_chain_pem: PemStr | None = None
    client_cert_fingerprint: ShortStr | None = None
    grant: GrantInfo | None = None
    cluster_pg: ClusterPgBlock | None = None
    parent_platform_url: UrlStr | None = None
    # Where the child presents its client certificate (enroll, heartbeats, the replication
    # credential); it may differ from the parent_url the child accepted at.
    federation_url: UrlStr | None = None
    # No longer sent (the parent's own Redis URL was); the member's is cluster_pg.redis_url.
    redis_url: UrlStr | None = Field(default=None, repr=False)
