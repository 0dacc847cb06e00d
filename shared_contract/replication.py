"""``GET /replication_credential`` (ours): the cluster_member's one-time replication credential."""

from pydantic import Field

from shared_contract._base import MAX_TOKEN, IsoTimestamp, ShortStr, UrlStr, WireModel


class ReplicationCredential(WireModel):
    """What the child needs for ``pg_basebackup -R -S <slot_name>``."""

    slot_name: ShortStr
    primary_host: ShortStr
    primary_port: int
    username: ShortStr
    password: str = Field(repr=False, max_length=MAX_TOKEN)
    credential_id: ShortStr
    expires_at: IsoTimestamp | None = None
    database: ShortStr | None = None
    # Our addition: the parent's Redis as the member's own ACL user (platform queue only).
    redis_url: UrlStr | None = Field(default=None, repr=False)
