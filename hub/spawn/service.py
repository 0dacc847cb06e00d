"""Spawn orchestration: peer + token + node instance in one transaction, then the provisioner."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import cast, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import Conflict
from hub.federation import endpoints
from hub.federation.accept import service as accept_service
from hub.federation.findings import service as findings_service
from hub.federation.grants import service as grants_service
from hub.federation.grants.models import FederationGrant
from hub.federation.peers import service as peers_service
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.observability import metrics
from hub.outbox import service as outbox_service
from hub.provisioning import service as provisioning_service
from hub.provisioning import templates as templates_service
from hub.provisioning.base import ProvisionError, ProvisionResult
from hub.provisioning.models import NodeInstance
from hub.runtime import HubRuntime
from hub.secrets import tokens
from hub.spawn.schemas import NodeConsole, RotateTokenRequest, SpawnPayloadView, SpawnRequest
from shared_contract.payload import SpawnPayload
from shared_contract.version import CONTRACT_VERSION_LABEL

log = logging.getLogger(__name__)
PROVISION_FAILED = "node_provision_failed"

PROVISION_JOB = "spawn_node_provision"


@dataclass(frozen=True)
class SpawnResult:
    peer: FederationPeer
    token: str
    payload: SpawnPayload

    def __repr__(self) -> str:
        return f"SpawnResult(peer={self.peer.id})"

    def payload_view(self) -> SpawnPayloadView:
        p = self.payload
        return SpawnPayloadView(
            parent_url=p.parent_url,
            acceptance_token=p.acceptance_token,
            spawn_mode=p.spawn_mode,
            parent_peer_id=p.parent_peer_id,
            child_template_id=p.child_template_id,
            contract_version=p.contract_version,
            region=p.region or None,
            initiated_by_user_id=p.initiated_by_user_id or None,
        )


def build_payload(
    *,
    runtime: HubRuntime,
    peer: FederationPeer,
    node: NodeInstance | None,
    token: str,
    expires_at: datetime,
) -> SpawnPayload:
    spawn = peer.metadata_.get("spawn", {})
    return SpawnPayload(
        parent_url=spawn.get("parent_url", ""),
        acceptance_token=token,
        spawn_mode=peer.spawn_mode,
        parent_peer_id=str(peer.id),
        contract_version=CONTRACT_VERSION_LABEL,
        instance_uuid=str(node.id) if node else "",
        instance_name=node.name if node else peer.name,
        ca_pem=runtime.ca.chain_pem,
        platform_url="",
        child_template_id=peer.template_id or "",
        token_expires_at=expires_at.isoformat(),
        provisioner=node.provider if node else "manual",
        region=peer.region or "",
        initiated_by_user_id=str(spawn.get("initiated_by_user_id") or ""),
    )


async def _issue_token(session: AsyncSession, *, peer_id: uuid.UUID, ttl: int) -> tuple[str, datetime]:
    issued = tokens.issue(tokens.ACCEPTANCE_TOKEN_PREFIX)
    expires_at = utcnow() + timedelta(seconds=ttl)
    session.add(
        AcceptanceToken(
            peer_id=peer_id,
            public_id=issued.public_id,
            secret_hash=issued.secret_hash,
            expires_at=expires_at,
        )
    )
    return issued.plaintext, expires_at


@metrics.counts_spawns
async def spawn(
    session: AsyncSession,
    *,
    runtime: HubRuntime,
    request: SpawnRequest,
    actor: str,
    initiated_by: str | None = None,
) -> SpawnResult:
    """`initiated_by`: the id of the operator who asked (the payload's initiated_by_user_id)."""
    settings = runtime.settings
    target = request.spawn_target
    endpoints.check_parent_url(settings, runtime.extras, request.parent_url)
    if request.spawn_mode == "cluster_member":
        runtime.primary_queue()  # its setup is primary work: refused here before anything is made
    template = await templates_service.get_or_raise(session, template_id=target.template_id)
    await templates_service.check_fits(session, template, spawn_mode=request.spawn_mode)
    peer_id = uuid.uuid4()
    short = peer_id.hex[:8]
    node = None
    if not target.manual_attach:
        node = NodeInstance(
            id=uuid.uuid4(),
            name=request.name or f"{request.spawn_mode.replace('_', '-')}-{short}",
            provider=template.provisioner or settings.provisioner,
            template_id=template.id,
            region=target.region,
            state="pending",
        )
        session.add(node)
        await session.flush()
    spawn_metadata: dict[str, Any] = {"parent_url": request.parent_url, "manual_attach": target.manual_attach}
    if initiated_by:
        spawn_metadata["initiated_by_user_id"] = initiated_by
    if request.spawn_mode == "managed_child":
        prepared = await accept_service.prepare_held_grant(runtime)
        await accept_service.claim_held_grant(session, prepared=prepared)
        spawn_metadata |= prepared
    peer = FederationPeer(
        id=peer_id,
        name=request.name or f"child-{short}",
        spawn_role="parent",
        spawn_mode=request.spawn_mode,
        status="proposed",
        template_id=template.id,
        region=target.region,
        node_instance_id=node.id if node else None,
        metadata_={"spawn": spawn_metadata, "provisioner_response": _manual_attach_response()}
        if node is None
        else {"spawn": spawn_metadata},
    )
    session.add(peer)
    await session.flush()
    ttl = request.token_ttl_seconds or settings.federation.default_token_ttl_seconds
    token, expires_at = await _issue_token(session, peer_id=peer.id, ttl=ttl)
    payload = build_payload(runtime=runtime, peer=peer, node=node, token=token, expires_at=expires_at)
    if node is not None:
        node.payload_digest = provisioning_service.payload_digest(payload)
    await audit_service.record(
        session,
        actor=actor,
        action="child.spawn",
        target=str(peer.id),
        details={"spawn_mode": peer.spawn_mode, "template_id": template.id, "manual": node is None},
    )
    entries = await _follow_ups(session, runtime=runtime, peer=peer, node=node)
    await session.commit()
    await outbox_service.dispatch_now(runtime, entries)
    if node is not None:
        await _provision(
            session,
            runtime=runtime,
            node=node,
            template_spec=templates_service.spec(template),
            payload=payload,
            peer=peer,
        )
        await session.refresh(peer)  # metadata.provisioner_response
    return SpawnResult(peer=peer, token=token, payload=payload)


async def _follow_ups(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, node: NodeInstance | None
) -> list[uuid.UUID]:
    """What must follow the spawn's commit, recorded in it (hub.outbox); the entries due now.

    The provisioning is done by the request itself; its entry waits a lease and takes over only
    when the process died before the provisioner finished.
    """
    if node is not None:
        await outbox_service.add(
            session,
            job=PROVISION_JOB,
            kwargs={"node_id": str(node.id), "peer_id": str(peer.id)},
            key=_provision_key(node.id),
            delay=runtime.settings.outbox.lease_seconds,
        )
    if peer.spawn_mode != "cluster_member":
        return []
    from hub.replication import jobs as replication_jobs

    return [await replication_jobs.request_setup(session, peer_id=peer.id)]


def _provision_key(node_id: uuid.UUID) -> str:
    return f"{PROVISION_JOB}:{node_id}"


@asynccontextmanager
async def _provisioning(runtime: HubRuntime, node_id: uuid.UUID, *, wait: bool) -> AsyncIterator[bool]:
    """Held while a node is provisioned (a lock that dies with its process): False if it is taken."""
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    async with runtime.engine.begin() as connection:
        got = await connection.scalar(
            text(f"SELECT {function}(hashtextextended(:key, 0))"), {"key": _provision_key(node_id)}
        )
        yield got is not False


async def _provision(
    session: AsyncSession,
    *,
    runtime: HubRuntime,
    node: NodeInstance,
    template_spec: templates_service.TemplateSpec,
    payload: SpawnPayload,
    peer: FederationPeer,
) -> None:
    """Hand the payload to the provisioner; a failure is recorded on the node and reported."""
    spec = provisioning_service.node_spec(runtime.settings, node)
    async with _provisioning(runtime, node.id, wait=True):
        try:
            provisioner = provisioning_service.get_provisioner(node.provider, runtime.settings)
            result = await provisioner.provision(node=spec, template=template_spec, payload=payload)
        except ProvisionError as e:
            await _provision_failed(session, node=node, peer=peer, message=e.message)
            await _record_response(
                session, peer.id, {"ok": False, "manual_attach_required": False, "error": e.message}
            )
            raise ProvisionError(
                f"Provisioning failed: {e.message}",
                details={"child_id": str(peer.id), "node_instance_id": str(node.id)},
            ) from e
        except OSError as e:  # a full disk under the node's directory, payload or console log
            shutil.rmtree(spec.work_dir, ignore_errors=True)  # nothing half-written stays behind
            message = f"cannot write the node's files under {spec.work_dir.parent}: {e.strerror or e}"
            await _provision_failed(session, node=node, peer=peer, message=message)
            raise ProvisionError(
                f"Provisioning failed: {message}",
                details={"child_id": str(peer.id), "node_instance_id": str(node.id)},
            ) from e
        await _record_node(
            session, node.id, state=result.state, provider_ref=result.provider_ref, details=result.details
        )
        await _record_response(session, peer.id, _provisioned_response(node, result))


def _manual_attach_response() -> dict[str, Any]:
    """spawn_target.manual_attach: no provisioner ran; the operator attaches the host."""
    return {"ok": True, "manual_attach_required": True, "provisioner": None}


def _provisioned_response(node: NodeInstance, result: ProvisionResult) -> dict[str, Any]:
    """The original's `metadata.provisioner_response`: what the provisioner answered."""
    return {
        "ok": True,
        # The manual provisioner only stages the payload: someone still has to boot the host.
        "manual_attach_required": node.provider == "manual",
        "provisioner": node.provider,
        "node_instance_id": str(node.id),
        "provider_ref": result.provider_ref,
        "state": result.state,
    }


async def _record_response(session: AsyncSession, peer_id: uuid.UUID, response: dict[str, Any]) -> None:
    await session.execute(
        update(FederationPeer)
        .where(FederationPeer.id == peer_id)
        .values(
            metadata_=FederationPeer.metadata_.op("||")(
                cast(literal(json.dumps({"provisioner_response": response})), JSONB)
            ),
            updated_at=utcnow(),
        )
    )
    await session.commit()


async def _provision_failed(
    session: AsyncSession, *, node: NodeInstance, peer: FederationPeer, message: str
) -> None:
    """The node is marked failed and a finding says so: the child is never left half-made."""
    await findings_service.open_finding(
        session,
        kind=PROVISION_FAILED,
        subject=str(node.id),
        peer_id=peer.id,
        message=f"{peer.name}: provisioning failed ({message}); fix that, revoke it and spawn again",
        severity="error",
    )
    await _record_node(session, node.id, state="failed", error=message)


async def _record_node(session: AsyncSession, node_id: uuid.UUID, **values: object) -> None:
    """What the provisioner did, and the provisioning's outbox entry closed, in one commit."""
    await session.execute(
        update(NodeInstance).where(NodeInstance.id == node_id).values(updated_at=utcnow(), **values)
    )
    await outbox_service.close(session, key=_provision_key(node_id))
    await session.commit()


async def resume_provisioning(*, runtime: HubRuntime, node_id: uuid.UUID) -> str | None:
    """Finish a spawn whose process died before its provisioner did; None while one is under way.

    The first payload's token was never recorded in plaintext, so the node gets a new one (the
    old one dead at once) after whatever the first attempt left of the node is destroyed.
    """
    async with _provisioning(runtime, node_id, wait=False) as free:
        if not free:
            return None
        async with runtime.sessionmaker() as session:
            node = await session.get(NodeInstance, node_id)
            peer = await session.scalar(
                select(FederationPeer).where(FederationPeer.node_instance_id == node_id)
            )
            if node is None or node.state != "pending":
                return "nothing to resume"
            if peer is None or peer.status != "proposed":
                return f"left as it is: the child is {peer.status if peer else 'gone'}"
            template = await templates_service.get_or_raise(session, template_id=node.template_id or "")
            await session.execute(
                update(AcceptanceToken)
                .where(AcceptanceToken.peer_id == peer.id, AcceptanceToken.superseded_at.is_(None))
                .values(superseded_at=utcnow())
            )
            ttl = runtime.settings.federation.default_token_ttl_seconds
            token, expires_at = await _issue_token(session, peer_id=peer.id, ttl=ttl)
            payload = build_payload(runtime=runtime, peer=peer, node=node, token=token, expires_at=expires_at)
            node.payload_digest = provisioning_service.payload_digest(payload)
            await audit_service.record(
                session, actor="system", action="child.provision.resume", target=str(peer.id)
            )
            await session.commit()
            spec = provisioning_service.node_spec(runtime.settings, node)
            try:
                provisioner = provisioning_service.get_provisioner(node.provider, runtime.settings)
                await provisioner.destroy(node=spec)
                result = await provisioner.provision(
                    node=spec, template=templates_service.spec(template), payload=payload
                )
            except (ProvisionError, OSError) as e:
                message = (
                    e.message if isinstance(e, ProvisionError) else f"cannot write the node's files: {e}"
                )
                await _provision_failed(session, node=node, peer=peer, message=message)
                return f"failed: {message}"
            await _record_node(
                session, node.id, state=result.state, provider_ref=result.provider_ref, details=result.details
            )
            await _record_response(session, peer.id, _provisioned_response(node, result))
            return result.state


async def rotate_token(
    session: AsyncSession, *, runtime: HubRuntime, peer_id: str, request: RotateTokenRequest, actor: str
) -> SpawnResult:
    """A new token, the old one dead at once, the payload re-staged: while `proposed`, or while
    `accepted` and never enrolled (the accept's answer was lost: the child starts over)."""
    peer = await peers_service.get_child_or_raise(session, peer_id=peer_id)
    status = await session.scalar(
        select(FederationPeer.status).where(FederationPeer.id == peer.id).with_for_update()
    )
    if status not in ("proposed", "accepted") or (status == "accepted" and peer.enrolled_at is not None):
        raise Conflict(
            f"Child {peer.id} is {status}: tokens can only be rotated while proposed, or accepted "
            "and never enrolled",
            code="NOT_PROPOSED",
        )
    if status == "accepted":
        await _restart_handshake(session, runtime=runtime, peer=peer)
    await session.execute(
        update(AcceptanceToken)
        .where(AcceptanceToken.peer_id == peer.id, AcceptanceToken.superseded_at.is_(None))
        .values(superseded_at=utcnow())
    )
    ttl = request.token_ttl_seconds or runtime.settings.federation.default_token_ttl_seconds
    token, expires_at = await _issue_token(session, peer_id=peer.id, ttl=ttl)
    node = await session.get(NodeInstance, peer.node_instance_id) if peer.node_instance_id else None
    payload = build_payload(runtime=runtime, peer=peer, node=node, token=token, expires_at=expires_at)
    await audit_service.record(
        session, actor=actor, action="child.rotate_token", target=str(peer.id), details={"from": status}
    )
    await session.commit()
    if status == "accepted":
        await _after_restart(session, runtime=runtime, peer=peer)
    # A guest that booted and stopped (or failed after booting) is started again with the new token;
    # a node whose provisioning failed, or that was destroyed, has nothing to restart.
    if node is not None and node.state != "destroyed" and not (node.state == "failed" and not node.details):
        spec = provisioning_service.node_spec(runtime.settings, node)
        provisioner = provisioning_service.get_provisioner(node.provider, runtime.settings)
        result = await provisioner.reinject(node=spec, payload=payload)
        await _record_node(
            session,
            node.id,
            state=result.state,
            provider_ref=result.provider_ref,
            details=result.details,
            error=None,  # booted again: what stopped the last boot is history (its console is gone)
            payload_digest=provisioning_service.payload_digest(payload),
        )
    return SpawnResult(peer=peer, token=token, payload=payload)


async def _restart_handshake(session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer) -> None:
    """accepted → proposed for a child that never enrolled: what the lost answer carried goes.

    Its certificate no longer authenticates; a managed_child's held grant (the child never got
    its bearer) is revoked and a new one prepared; a cluster_member's credential may go again.
    """
    now = utcnow()
    metadata = dict(peer.metadata_ or {})
    if peer.spawn_mode == "managed_child":
        await session.execute(
            update(FederationGrant)
            .where(FederationGrant.peer_id == peer.id, FederationGrant.revoked_at.is_(None))
            .values(revoked_at=now, revoke_reason="token rotated before the child enrolled", purge_after=now)
        )
        prepared = await accept_service.prepare_held_grant(runtime)
        await accept_service.claim_held_grant(session, prepared=prepared)
        metadata["spawn"] = {**metadata.get("spawn", {}), **prepared}
    if isinstance(metadata.get("cluster_pg"), dict):
        metadata["cluster_pg"] = {
            k: v for k, v in metadata["cluster_pg"].items() if k not in ("delivered_at", "delivered_via")
        }
    await session.execute(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id)
        .values(
            status="proposed",
            accepted_at=None,
            client_cert_fingerprint=None,
            client_cert_serial=None,
            signed_at=None,
            metadata_=metadata,
            updated_at=now,
        )
    )
    await session.refresh(peer)


async def _after_restart(session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer) -> None:
    """After the commit: old bearers gone, a member's password replaced (the
    lost answer may have carried it; if that fails the operator can reissue it)."""
    await grants_service.forget_bearers(session, secrets=runtime.secrets, peer_id=peer.id)
    await session.commit()
    if peer.spawn_mode != "cluster_member":
        return
    from hub.replication.exceptions import SetupFailed
    from hub.replication.service import PgReplicaSetupService

    try:
        await PgReplicaSetupService(runtime).rotate_credential(peer_id=peer.id)
    except SetupFailed as e:
        log.warning("replication password of %s not rotated: %s", peer.id, e.reason)


async def revoke(
    session: AsyncSession, *, runtime: HubRuntime, peer_id: str, reason: str | None, actor: str
) -> FederationPeer:
    """`peer.revoke!` of a child: credentials dead, grants revoked on both sides (the child is
    told), and for cluster_member the slot, role and secret go too."""
    peer = await peers_service.get_child_or_raise(session, peer_id=peer_id)
    return await peers_service.revoke_peer(session, runtime=runtime, peer=peer, reason=reason, actor=actor)


async def _node_of(session: AsyncSession, peer: FederationPeer) -> NodeInstance | None:
    return await session.get(NodeInstance, peer.node_instance_id) if peer.node_instance_id else None


async def refresh_node(session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer) -> None:
    """Record what the child's node is doing now (booting → running → stopped/failed, boot time)."""
    node = await _node_of(session, peer)
    if node is None:
        return
    changes = await provisioning_service.observe(runtime.settings, node)
    if changes:
        await _record_node(session, node.id, **changes)
        await session.refresh(node)


async def node_console(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, lines: int
) -> NodeConsole:
    await refresh_node(session, runtime=runtime, peer=peer)
    node = await _node_of(session, peer)
    if node is None:
        return NodeConsole(node_instance_id=None, provider=None, state=None, boot_seconds=None, lines=[])
    boot = (node.details or {}).get("boot_seconds")
    return NodeConsole(
        node_instance_id=str(node.id),
        provider=node.provider,
        state=node.state,
        boot_seconds=float(boot) if isinstance(boot, int | float) else None,
        lines=provisioning_service.console_lines(runtime.settings, node, lines=lines),
    )


async def destroy_node(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, actor: str
) -> None:
    """Power the node off and remove it; the node row stays, `destroyed`, for the record."""
    node = await _node_of(session, peer)
    if node is None:
        raise Conflict(f"Child {peer.id} has no node to destroy", code="NO_NODE")
    if node.state == "destroyed":
        raise Conflict(f"The node of child {peer.id} is already destroyed", code="NODE_DESTROYED")
    spec = provisioning_service.node_spec(runtime.settings, node)
    provisioner = provisioning_service.get_provisioner(node.provider, runtime.settings)
    await provisioner.destroy(node=spec)
    await audit_service.record(session, actor=actor, action="child.node_destroy", target=str(peer.id))
    await _record_node(session, node.id, state="destroyed")
