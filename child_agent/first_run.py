"""first-run: payload → key and CSR → accept → (cluster_member) streaming standby → the result file.

Every step can be repeated: the key is reused, the accept answer is kept (so a re-run does not
spend the token again), a complete base backup is reused and a half-done one redone. The result
file is written last, so its presence means "done" and a re-run is then a no-op.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from child_agent import fwcfg, identity, pg_replica
from child_agent.backoff import Backoff
from child_agent.client import ParentClient
from child_agent.errors import AgentError, ParentRefused, PayloadInvalid
from child_agent.identity import Identity
from child_agent.pg_local import pg_bin_dir, server_user
from child_agent.state import (
    DEFAULT_STATE_DIR,
    StatePaths,
    load_accept,
    read_result,
    save_accept,
    write_json,
)
from shared_contract.accept import AcceptRequest, AcceptResponseData, ChildInfo, ClusterPgBlock
from shared_contract.first_run import FirstRunResult, StandbyInfo
from shared_contract.payload import SpawnPayload
from shared_contract.replication import ReplicationCredential
from shared_contract.version import CONTRACT_VERSION, SUPPORTED_CONTRACT_VERSIONS, parse_contract_version

log = logging.getLogger(__name__)

DEFAULT_STANDBY_DIR = Path("/var/lib/powernode/pg-replica/data")
DEFAULT_STANDBY_PORT = 5432
DEFAULT_ACCEPT_WAIT = 7 * 86400.0  # no token_expires_at in the payload: the spawn API's default TTL
# The parent's replica setup job may need an operator's retry; the primary may be unreachable at boot.
DEFAULT_CREDENTIAL_WAIT = 3600.0


@dataclass(frozen=True)
class FirstRunOptions:
    """The first-run command line."""

    fw_cfg_root: Path | None = None
    payload_file: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    result_file: Path | None = None
    max_wait: float | None = None
    pg_bin: Path | None = None
    standby_dir: Path = DEFAULT_STANDBY_DIR
    standby_port: int = DEFAULT_STANDBY_PORT


def first_run(options: FirstRunOptions) -> str:
    """Run (or resume) the first run; return the line to tell the operator."""
    paths = StatePaths(options.state_dir, options.result_file)
    if (done := read_result(paths.result)) is not None:
        return f"first run already done (peer {done.peer_id}); nothing to do"
    payload = fwcfg.read_payload(fw_cfg_root=options.fw_cfg_root, payload_file=options.payload_file)
    if not payload.is_spawned_child:
        return "not a spawned child; nothing to do"
    _check_contract_version(payload)
    # Without PostgreSQL binaries a cluster_member must fail before the parent delivers its credential.
    pg_bin = pg_bin_dir(options.pg_bin) if payload.spawn_mode == "cluster_member" else None
    # The client refuses plain http and an unusable ca_pem before anything is written.
    with ParentClient(payload) as parent:
        key = identity.load_or_create_key(paths.key)
        accepted = load_accept(paths) or _accept(parent, payload, key, options)
    ident = identity.store(paths, key=key, accepted=accepted, payload=payload)
    save_accept(paths, accepted)
    mode = accepted.spawn_mode or payload.spawn_mode
    cluster_pg = standby = None
    if mode == "cluster_member":
        cluster_pg, standby = _cluster_member(paths, payload, accepted, ident, options, pg_bin)
    _result(payload, accepted, ident, mode, cluster_pg, standby).write(paths.result)
    # The result supersedes it; the hub scrubs the grant's bearer from the result after ingesting it.
    paths.accept_response.unlink(missing_ok=True)
    return f"first run complete: peer {accepted.peer_id} ({mode}); result in {paths.result}"


def _check_contract_version(payload: SpawnPayload) -> None:
    wanted = parse_contract_version(payload.contract_version)
    if wanted not in SUPPORTED_CONTRACT_VERSIONS:
        supported = list(SUPPORTED_CONTRACT_VERSIONS)
        raise PayloadInvalid(f"the payload asks for contract version {wanted}; supported: {supported}")


def _accept(
    parent: ParentClient, payload: SpawnPayload, key: ec.EllipticCurvePrivateKey, options: FirstRunOptions
) -> AcceptResponseData:
    request = AcceptRequest(
        acceptance_token=payload.acceptance_token,
        contract_version=CONTRACT_VERSION,
        csr_pem=identity.build_csr(key, payload),
        child=ChildInfo(
            platform_id=payload.instance_uuid or None,
            url=payload.platform_url or None,
            name=payload.instance_name or None,
        ),
    )
    log.info("accepting with the parent at %s", parent.base_url)
    accepted = parent.accept(request, backoff=Backoff.for_seconds(_accept_wait(payload, options.max_wait)))
    if accepted.contract_version_agreed not in SUPPORTED_CONTRACT_VERSIONS:
        agreed = accepted.contract_version_agreed
        raise ParentRefused(f"the parent agreed on contract version {agreed}, which this agent lacks")
    log.info("accepted: peer %s (%s)", accepted.peer_id, accepted.spawn_mode or payload.spawn_mode)
    return accepted


def _accept_wait(payload: SpawnPayload, max_wait: float | None) -> float:
    """Seconds to keep retrying accept: --max-wait, else until the token expires."""
    if max_wait is not None:
        return max_wait
    expiry = payload.token_expiry()
    if expiry is None:
        return DEFAULT_ACCEPT_WAIT
    return max(0.0, (expiry.replace(tzinfo=expiry.tzinfo or UTC) - datetime.now(UTC)).total_seconds())


def _wait(max_wait: float | None, default: float) -> float:
    return default if max_wait is None else max_wait


def _cluster_member(
    paths: StatePaths,
    payload: SpawnPayload,
    accepted: AcceptResponseData,
    ident: Identity,
    options: FirstRunOptions,
    pg_bin: Path | None,
) -> tuple[ClusterPgBlock, StandbyInfo]:
    """Get the credential if the standby still needs it, then make sure the standby streams."""
    block = accepted.cluster_pg
    credential = _delivered(block)
    needs_password = not pg_replica.base_backup_done(options.standby_dir)
    if block is None or block.state != "ready" or (needs_password and credential is None):
        credential = _fetch_credential(payload, ident, options.max_wait, accepted.federation_url)
        block = _block_of(credential, block)
        save_accept(paths, accepted.model_copy(update={"cluster_pg": block}))
    if credential is not None:
        _hand_over_database_credential(paths, credential, block)
    standby = pg_replica.Standby(
        options.standby_dir,
        port=options.standby_port,
        pg_bin=pg_bin or pg_bin_dir(options.pg_bin),
        owner=server_user(),
        login_role=block.username,
    )
    wait = _wait(options.max_wait, DEFAULT_CREDENTIAL_WAIT)
    return block, pg_replica.ensure_standby(standby, credential=credential, connect_wait=wait)


def _hand_over_database_credential(
    paths: StatePaths, credential: ReplicationCredential, block: ClusterPgBlock
) -> None:
    """The member's hub has no primary of its own: it writes to the parent's with this role, and
    joins the parent's platform queue with its own Redis user."""
    write_json(
        paths.platform_database,
        {
            "host": credential.primary_host,
            "port": credential.primary_port,
            "database": block.database or "postgres",
            "username": credential.username,
            "password": credential.password,
            # The parent's Redis as this member's own ACL user (platform queue only), if it sent one.
            "redis_url": credential.redis_url,
        },
    )


def _delivered(block: ClusterPgBlock | None) -> ReplicationCredential | None:
    """The credential, when the accept answer carried its password."""
    if block is None or block.state != "ready" or not block.password:
        return None
    return ReplicationCredential.model_validate(block.model_dump())


def _block_of(credential: ReplicationCredential, previous: ClusterPgBlock | None) -> ClusterPgBlock:
    return ClusterPgBlock(
        state="ready",
        **credential.model_dump(),
        prepared_at=previous.prepared_at if previous else None,
    )


def _fetch_credential(
    payload: SpawnPayload, ident: Identity, max_wait: float | None, federation_url: str | None
) -> ReplicationCredential:
    if ident.client_cert is None:
        raise AgentError("the parent issued no client certificate to fetch the replication credential with")
    log.info("fetching the replication credential from the parent")
    backoff = Backoff.for_seconds(_wait(max_wait, DEFAULT_CREDENTIAL_WAIT))
    # The client certificate goes where the parent said it is checked (its federation listener);
    # the parent_url may be its plain-http API.
    with ParentClient(payload, client_cert=ident.client_cert, base_url=federation_url) as parent:
        return parent.replication_credential(backoff=backoff)


def _result(
    payload: SpawnPayload,
    accepted: AcceptResponseData,
    ident: Identity,
    mode: str,
    cluster_pg: ClusterPgBlock | None,
    standby: StandbyInfo | None,
) -> FirstRunResult:
    return FirstRunResult(
        peer_id=accepted.peer_id,
        parent_peer_id=payload.parent_peer_id,
        parent_url=payload.parent_url,
        federation_url=accepted.federation_url,
        spawn_mode=mode,
        contract_version_agreed=accepted.contract_version_agreed,
        accepted_at=accepted.accepted_at,
        instance_uuid=payload.instance_uuid,
        instance_name=payload.instance_name,
        platform_url=payload.platform_url,
        client_cert_path=_str(ident.client_cert_path),
        client_key_path=str(ident.client_key_path),
        ca_chain_path=_str(ident.ca_chain_path),
        client_cert_fingerprint=ident.client_cert_fingerprint,
        grant=accepted.grant,
        cluster_pg=cluster_pg.without_password() if cluster_pg else None,
        standby=standby,
        redis_url=accepted.redis_url,
        completed_at=datetime.now(UTC).isoformat(),
    )


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
