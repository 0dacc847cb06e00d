"""The first-run result: the file the child agent writes and the child hub ingests at start."""

from pathlib import Path

from pydantic import Field, field_validator

from shared_contract._base import IsoTimestamp, ShortStr, UrlStr, WireModel
from shared_contract._files import write_private
from shared_contract.accept import ClusterPgBlock, GrantInfo


class StandbyInfo(WireModel):
    """The local PostgreSQL standby a cluster_member started."""

    data_dir: str
    port: int
    pg_bin: str


class FirstRunResult(WireModel):
    """The agent's hand-over; cluster_pg never carries the password (the agent strips it)."""

    result_version: int = 1
    peer_id: ShortStr
    parent_peer_id: ShortStr
    parent_url: UrlStr
    # Where to present the client certificate, when the parent said (else parent_url).
    federation_url: UrlStr | None = None
    spawn_mode: ShortStr
    contract_version_agreed: int
    accepted_at: IsoTimestamp
    instance_uuid: ShortStr = ""
    instance_name: ShortStr = ""
    platform_url: UrlStr = ""
    client_cert_path: str | None = None
    client_key_path: str | None = None
    ca_chain_path: str | None = None
    client_cert_fingerprint: ShortStr | None = None
    grant: GrantInfo | None = None
    cluster_pg: ClusterPgBlock | None = None
    standby: StandbyInfo | None = None
    redis_url: UrlStr | None = Field(default=None, repr=False)
    completed_at: IsoTimestamp

    @field_validator("cluster_pg")
    @classmethod
    def _refuse_password(cls, value: ClusterPgBlock | None) -> ClusterPgBlock | None:
        if value is not None and (value.password is not None or value.redis_url is not None):
            raise ValueError("cluster_pg.password must not be stored (nor its redis_url); strip them first")
        return value

    def write(self, path: Path) -> None:
        """Write the result as JSON, atomically, mode 0600."""
        write_private(path, (self.model_dump_json(indent=2) + "\n").encode())

    @classmethod
    def read(cls, path: Path) -> "FirstRunResult":
        """Read and validate a result written by write()."""
        return cls.model_validate_json(path.read_bytes())
